"""Registered distillation terms through the Distiller: values, identities, connectors, build-time checks."""
import copy

import pytest
import timm
import torch

import vitkd.archs  # noqa: F401  (registers civt_digits_tiny in timm)
from vitkd.config import ConfigError
from vitkd.connectors import (HeadMixer, Identity, make_connector, map_to_tokens, resize_tokens,
                              tokens_to_map)
from vitkd.distiller import Distiller
from factories import IMG, batch, vit  # noqa: F401
from vitkd.losses import LOSSES, Batch, build_term
from vitkd.losses import functional as KF
from vitkd.taps import TapRequest, Tapped





def deit(embed_dim=32, depth=2, num_heads=2):
    return timm.create_model("deit_tiny_distilled_patch16_224", img_size=16, patch_size=4, embed_dim=embed_dim,
                             depth=depth, num_heads=num_heads, num_classes=10)


def cnn():
    return timm.create_model("resnet10t", num_classes=10)


def distiller(student, teachers, specs):
    if not isinstance(teachers, dict):
        teachers = {"t": teachers}
    terms = [build_term(spec, i, list(teachers)) for i, spec in enumerate(specs)]
    return Distiller(student, teachers, terms, IMG)




def tap(model, request, x):
    with Tapped(model, request) as t, torch.no_grad():
        return t(x)


WIDE = dict(embed_dim=48, depth=3, num_heads=3)

CASES = {
    "kd": (vit, cnn, [{"type": "kd", "T": 2.0}]),
    "deit_hard": (deit, cnn, [{"type": "ce", "head": "cls"}, {"type": "deit"}]),
    "deit_soft": (deit, cnn, [{"type": "deit", "mode": "soft", "T": 3.0, "reduction": "deit"}]),
    "dkd": (vit, cnn, [{"type": "dkd", "schedule": {"kind": "linear", "start": 0.0, "to": 0.1}}]),
    "dist": (vit, cnn, [{"type": "dist"}]),
    "manifold": (vit, lambda: vit(**WIDE), [{"type": "manifold", "pairs": [[0, 0], [1, 2]], "k": 20}]),
    "fitnet_cnn": (vit, cnn, [{"type": "fitnet", "student_layers": [0, 1], "teacher_layers": [4, 8]}]),
    "fitnet_vit": (deit, lambda: vit(**WIDE), [{"type": "fitnet", "student_layers": -1, "teacher_layers": -1}]),
    "fitnet_cnn_student": (cnn, lambda: vit(**WIDE), [{"type": "fitnet", "student_layers": 8, "teacher_layers": 1,
                                                      "resize": "teacher"}]),
    "vitkd": (vit, lambda: vit(**WIDE), [{"type": "vitkd"}]),
    "attn_kl": (deit, lambda: vit(**WIDE), [{"type": "attn_kl", "student_blocks": [0, 1], "teacher_blocks": [0, 2],
                                             "tokens": "patches", "match": "mix"}]),
    "cwd": (vit, cnn, [{"type": "cwd", "student_layers": -1, "teacher_layers": 8, "resize": "teacher"}]),
    "minivit_attn": (vit, lambda: vit(**WIDE), [{"type": "minivit_attn", "pairs": [[1, 2]], "relation_heads": 2}]),
    "minivit_hidden": (deit, lambda: vit(**WIDE), [{"type": "minivit_hidden", "pairs": [[1, 2]],
                                                     "tokens": "patches", "mode": "cosine"}]),
    "cnn_align": (vit, cnn, [{"type": "cnn_align", "student_blocks": [0, 1], "teacher_stages": [4, 8]}]),
    "ofa": (deit, cnn, [{"type": "ofa", "student_layers": [0], "pool": "cls", "projector": "mlp", "head": "cls",
                         "eps": 1.5}]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_term_through_distiller_is_finite_scalar(name):
    torch.manual_seed(0)
    sf, tf, specs = CASES[name]
    d = distiller(sf(), tf(), specs).train()
    total, parts = d(batch())
    assert total.dim() == 0 and torch.isfinite(total)
    assert set(parts) == {s["type"] for s in specs}
    total.backward()
    assert any(p.grad is not None for p in d.student.parameters())
    d.close()


def test_every_registered_term_is_covered():
    # cit: below; m2mkd reads an m2m stage's two paths (tests/test_m2m.py checks it against its formula); byot reads
    # the student alone (tests/test_byot.py)
    covered = {s["type"] for _, _, specs in CASES.values() for s in specs} | {"cit", "m2mkd", "byot"}
    assert covered == set(LOSSES)


def test_cit_reads_several_teachers():
    torch.manual_seed(0)
    s = timm.create_model("civt_digits_tiny", num_classes=10)
    t1, t2 = cnn(), vit(**WIDE)
    d = distiller(s, {"cnn": t1, "inv": t2}, [{"type": "ce", "head": "cls"},
                                               {"type": "cit", "heads": {"conv": "cnn", "inv": "inv"}}])
    b = batch()
    d.eval()   # compare with an eval-mode reference forward
    _, parts = d(b)
    so = tap(s, TapRequest(heads=True), b.images)
    ref = KF.kd(so.heads["conv"], t1(b.images), 1.0) + KF.kd(so.heads["inv"], t2(b.images), 1.0)
    torch.testing.assert_close(parts["cit"], ref, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- student == teacher
def _twin(factory):
    torch.manual_seed(0)
    s = factory()
    return s, copy.deepcopy(s)


@pytest.mark.parametrize("spec", [
    {"type": "kd", "T": 4.0},
    {"type": "dkd"},
    {"type": "dist"},
    {"type": "deit", "mode": "soft", "teacher_head": "dist"},
    {"type": "attn_kl", "student_blocks": [0, 1], "teacher_blocks": [0, 1], "match": "heads"},
    {"type": "attn_kl", "student_blocks": -1, "teacher_blocks": -1},
    {"type": "fitnet", "student_layers": [0, 1], "teacher_layers": [0, 1], "connector": "none"},
    {"type": "cwd", "student_layers": 1, "teacher_layers": 1},
    {"type": "manifold", "pairs": [[0, 0], [1, 1]], "k": 16},
])
def test_kl_and_distance_terms_vanish_for_identical_models(spec):
    s, t = _twin(deit)
    d = distiller(s, t, [spec]).train()
    total, _ = d(batch())
    # DIST's Pearson has eps=1e-8 in its denominator: an untrained model's class columns barely vary
    # across the batch, so the identity is only approximate there
    assert abs(total.item()) < (1e-2 if spec["type"] == "dist" else 1e-5)


@pytest.mark.parametrize("spec", [
    {"type": "minivit_attn", "pairs": [[0, 0], [1, 1]]},
    {"type": "minivit_hidden", "pairs": [[1, 1]], "relation_heads": 2},
])
def test_relation_ce_terms_have_zero_gradient_for_identical_models(spec):
    s, t = _twin(vit)
    d = distiller(s, t, [spec]).train()
    total, _ = d(batch())
    assert total.item() > 0   # soft CE: the relation entropy, not 0
    total.backward()
    g = max(p.grad.abs().max().item() for p in s.parameters() if p.grad is not None)
    assert g < 1e-5


# --------------------------------------------------------------------------- against functional.py
def test_logit_terms_match_functional():
    torch.manual_seed(0)
    s, t = deit(), cnn()
    b = batch()
    specs = [{"type": "kd", "T": 3.0, "head": "dist"}, {"type": "deit", "mode": "soft", "T": 2.0},
             {"type": "deit", "name": "deit_hard"}, {"type": "dkd", "beta": 2.0},
             {"type": "dist", "T": 2.0}, {"type": "ofa", "student_layers": 0, "final": 1.0, "eps": 1.2}]
    d = distiller(s, t, specs).eval()
    _, parts = d(b)
    so, to = tap(s, TapRequest(heads=True, tokens={0}), b.images), tap(t, TapRequest(), b.images)
    torch.testing.assert_close(parts["kd"], KF.kd(so.heads["dist"], to.logits, 3.0))
    torch.testing.assert_close(parts["deit"], KF.deit_soft(so.heads["dist"], to.logits, 2.0))
    torch.testing.assert_close(parts["deit_hard"], KF.deit_hard(so.heads["dist"], to.logits))
    torch.testing.assert_close(parts["dkd"], KF.dkd(so.logits, to.logits, b.target, beta=2.0))
    torch.testing.assert_close(parts["dist"], KF.dist(so.logits, to.logits, T=2.0))
    ofa = d.terms[5]
    exit_logits = ofa.exits[0].proj(so.patches[0].mean(1))
    ref = KF.ofa_loss(exit_logits, to.logits, b.target, 1.2) + KF.ofa_loss(so.logits, to.logits, b.target, 1.2)
    torch.testing.assert_close(parts["ofa"], ref)


def test_identity_connector_losses_match_functional():
    torch.manual_seed(0)
    s, tv, tc = vit(embed_dim=64), vit(embed_dim=64, depth=3, num_heads=4), cnn()   # resnet10t stride 4: 64 ch, 4x4
    b = batch()
    d = distiller(s, {"vit": tv, "cnn": tc}, [
        {"type": "fitnet", "student_layers": [0, 1], "teacher_layers": [1, 2], "connector": "none", "teacher": "vit"},
        {"type": "cwd", "student_layers": 1, "teacher_layers": 2, "connector": "identity", "teacher": "vit",
         "tau": 2.0},
        {"type": "cnn_align", "student_blocks": 0, "teacher_stages": 4, "connector": "none", "teacher": "cnn"},
        {"type": "manifold", "pairs": [[1, 2]], "random": 0.0, "teacher": "vit"},
        {"type": "attn_kl", "student_blocks": 1, "teacher_blocks": 2, "teacher": "vit"},
        {"type": "minivit_hidden", "pairs": [[0, 1]], "teacher": "vit"},
        {"type": "minivit_attn", "pairs": [[1, 2]], "qkv_pairs": ["qk", "vv"], "teacher": "vit"},
    ]).eval()
    _, parts = d(b)
    so = tap(s, TapRequest(tokens={0, 1}, attn={1}, qkv={1}), b.images)
    vo = tap(tv, TapRequest(tokens={1, 2}, attn={2}, qkv={2}), b.images)
    co = tap(tc, TapRequest(stages={4}), b.images)
    fit = (KF.hint_mse(so.grid(0), vo.grid(1)) + KF.hint_mse(so.grid(1), vo.grid(2))) / 2
    torch.testing.assert_close(parts["fitnet"], fit)
    torch.testing.assert_close(parts["cwd"], KF.cwd(so.grid(1), vo.grid(2), 2.0))
    torch.testing.assert_close(parts["cnn_align"], KF.hint_mse(so.grid(0), co.stages[4]))
    man = 4.0 * KF.manifold_intra(so.patches[1], vo.patches[2]) + 0.1 * KF.manifold_inter(so.patches[1], vo.patches[2])
    torch.testing.assert_close(parts["manifold"], man)
    torch.testing.assert_close(parts["attn_kl"], KF.attention_kl(so.attn[1], vo.attn[2]))
    hs = torch.cat([so.prefix[0]["cls"][:, None], so.patches[0]], 1)
    ht = torch.cat([vo.prefix[1]["cls"][:, None], vo.patches[1]], 1)
    torch.testing.assert_close(parts["minivit_hidden"], KF.minivit_hidden_relation(hs, ht))
    torch.testing.assert_close(parts["minivit_attn"], KF.minivit_attn_relation(so.qkv[1], vo.qkv[2],
                                                                                pairs=["qk", "vv"]))
    assert all(isinstance(al.proj, Identity) for t in d.terms[:3] for al in t.aligners)


def test_vitkd_mimic_and_generation_weights():
    torch.manual_seed(0)
    s, t = vit(), vit(embed_dim=48, depth=3, num_heads=3)
    term_spec = {"type": "vitkd", "alpha": 1.0, "beta": 0.0}
    d = distiller(s, t, [term_spec]).eval()
    b = batch()
    _, parts = d(b)
    term = d.terms[0]
    so, to = tap(s, TapRequest(tokens={0, 1}), b.images), tap(t, TapRequest(tokens={0, 1, 2}), b.images)
    xs = torch.stack([term.align_shallow[i](so.patches[i]) for i in range(2)], 1)
    xt = torch.stack([to.patches[0], to.patches[1]], 1)
    torch.testing.assert_close(parts["vitkd"], KF.vitkd_mimic(xs, xt))
    # generation only: masked positions only, scaled by beta / mask_ratio
    term.alpha, term.beta = 0.0, 1.0
    _, parts = d(b)
    assert parts["vitkd"].item() > 0
    assert term.mask_token.shape == (1, 1, 48)


def test_vitkd_deep_target_is_the_final_normed_tokens_by_hand():
    """As in cls_KD: both the generator's input and its target are forward_features' patch tokens,
    i.e. after the final LayerNorm; deep='block' takes the blocks' raw output instead."""
    torch.manual_seed(0)
    s, t = vit(), vit(embed_dim=48, depth=3, num_heads=3)
    d = distiller(s, t, [{"type": "vitkd", "alpha": 0.0, "beta": 1.0, "mask_ratio": 0.5}]).eval()
    term, b = d.terms[0], batch()
    torch.manual_seed(7)
    _, parts = d(b)
    with torch.no_grad():
        fs, ft = s.forward_features(b.images), t.forward_features(b.images)     # final norm applied
        hs, ht = fs[:, s.num_prefix_tokens:], ft[:, t.num_prefix_tokens:]       # independent reference split
        x = term.align_deep(hs)
        B, N, D = x.shape
        torch.manual_seed(7)
        mask = torch.rand(B, N, 1) > 0.5
        x = torch.where(mask, term.mask_token.expand(B, N, D), x)
        gen = term.generator(x.transpose(1, 2).reshape(B, D, 4, 4)).flatten(2).transpose(1, 2)
        by_hand = (((gen - ht) * mask) ** 2).sum() / B / 0.5
    torch.testing.assert_close(parts["vitkd"], by_hand)
    # the final norm changes the target: the pre-norm variant differs
    raw = t.blocks[-1](t.blocks[-2](t.blocks[0](t._pos_embed(t.patch_embed(b.images)))))[:, t.num_prefix_tokens:]
    assert (t.norm(raw) - raw).abs().max() > 1e-2
    torch.testing.assert_close(ht, t.norm(raw), rtol=1e-5, atol=1e-5)
    d2 = distiller(s, t, [{"type": "vitkd", "alpha": 0.0, "beta": 1.0, "deep": "block"}]).eval()
    assert -1 in d2.requests["t"].tokens and not d2.requests["t"].features
    assert d.requests["t"].features and -1 not in d.requests["t"].tokens


# --------------------------------------------------------------------------- connectors
def test_connectors_layouts_and_factory():
    x = torch.randn(2, 6, 5)   # 2x3 grid, 5 channels
    m = tokens_to_map(x, (2, 3))
    assert m.shape == (2, 5, 2, 3)
    back, grid = map_to_tokens(m)
    assert grid == (2, 3) and torch.equal(back, x)
    assert resize_tokens(x, (2, 3), (4, 6)).shape == (2, 24, 5)
    with pytest.raises(ValueError, match="grid 3x3"):
        tokens_to_map(x, (3, 3))
    lin = make_connector("auto", 5, 7)
    conv = make_connector("auto", 5, 7, layout="map")
    assert lin(x).shape == (2, 6, 7) and conv(m).shape == (2, 7, 2, 3)
    # linear on tokens == 1x1 conv on the map with the same weights
    conv.conv.weight.data.copy_(lin.proj.weight.data[:, :, None, None])
    conv.conv.bias.data.copy_(lin.proj.bias.data)
    torch.testing.assert_close(tokens_to_map(lin(x), (2, 3)), conv(m))
    assert isinstance(make_connector("auto", 5, 5), Identity)
    with pytest.raises(ValueError, match="widths differ"):
        make_connector("none", 5, 7)
    mix = HeadMixer(2, 3)
    a = torch.rand(1, 2, 4, 4).softmax(-1)
    torch.testing.assert_close(mix(a).sum(-1), torch.ones(1, 3, 4))


# --------------------------------------------------------------------------- build-time validation
def _config_error(student, teachers, specs) -> str:
    with pytest.raises(ConfigError) as e:
        distiller(student, teachers, specs)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_block_the_model_lacks():
    msg = _config_error(vit(), cnn(), [{"type": "fitnet", "student_layers": 5, "teacher_layers": 8}])
    assert "fitnet" in msg and "no block 5" in msg
    msg = _config_error(vit(), cnn(), [{"type": "fitnet", "student_layers": 1, "teacher_layers": 3}])
    assert "fitnet" in msg and "stride 3" in msg and "4, 8" in msg
    msg = _config_error(vit(), vit(), [{"type": "manifold", "pairs": [[0, -3]]}])
    assert "manifold" in msg and "no block -3" in msg


def test_missing_and_unknown_arguments():
    msg = _config_error(vit(), cnn(), [{"type": "fitnet", "student_layers": 1}])
    assert "fitnet" in msg and "missing argument 'teacher_layers'" in msg
    msg = _config_error(vit(), cnn(), [{"type": "kd", "temperature": 2}])
    assert "(kd)" in msg and "unknown argument 'temperature'" in msg
    msg = _config_error(vit(), cnn(), [{"type": "kd", "teacher_hed": "cls"}])
    assert "did you mean 'teacher_head'" in msg
    msg = _config_error(vit(), cnn(), [{"type": "deit", "mode": "medium"}])
    assert "(deit)" in msg and "mode" in msg


def test_mismatched_widths_without_connector():
    msg = _config_error(vit(), vit(**WIDE), [{"type": "fitnet", "student_layers": 1, "teacher_layers": 1,
                                             "connector": "none"}])
    assert "fitnet" in msg and "32 vs 48" in msg
    msg = _config_error(vit(), vit(**WIDE), [{"type": "vitkd", "connector": "none"}])
    assert "vitkd" in msg and "32" in msg and "48" in msg
    msg = _config_error(vit(), vit(**WIDE), [{"type": "attn_kl", "student_blocks": 0, "teacher_blocks": 0,
                                             "match": "heads"}])
    assert "attn_kl" in msg and "head counts" in msg


def test_token_count_mismatch_is_explained():
    msg = _config_error(deit(), vit(), [{"type": "attn_kl", "student_blocks": 0, "teacher_blocks": 0}])
    assert "attn_kl" in msg and "18 tokens" in msg and "tokens: patches" in msg


def test_unknown_teacher_and_wrong_heads():
    teachers = {"a": cnn(), "b": cnn()}
    msg = _config_error(vit(), teachers, [{"type": "kd", "teacher": "c"}, {"type": "kd", "teacher": "b",
                                                                           "name": "kd_b"}])
    assert "(kd)" in msg and "'c' is not a configured teacher" in msg and "a, b" in msg
    msg = _config_error(vit(), teachers, [{"type": "kd"}])   # two teachers: must name one
    assert "(kd)" in msg and "teacher" in msg
    msg = _config_error(vit(), cnn(), [{"type": "deit"}])
    assert "deit" in msg and "no head 'dist'" in msg
    msg = _config_error(deit(), {"a": cnn()}, [{"type": "cit", "heads": {"cls": "a", "dist": "z"}}])
    assert "cit" in msg and "'z' is not a configured teacher" in msg
    msg = _config_error(vit(), cnn(), [{"type": "manifold", "pairs": [[0, 0]]}])
    assert "manifold" in msg and "CNN" in msg
    msg = _config_error(vit(), vit(), [{"type": "cnn_align", "student_blocks": 0, "teacher_stages": 4}])
    assert "cnn_align" in msg and "needs a CNN teacher" in msg
