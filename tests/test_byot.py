"""BYOT (Be Your Own Teacher, Zhang et al. 2019) for ViTs: the ``byot`` term against a hand computation, who gets
its gradient, and a tiny digits run: the auxiliary heads train and sit in the checkpoint's connectors, never in the
exported weights, which load into the plain timm architecture (strict) and predict as the run's student.
The pure function against its formula: tests/test_losses_functional.py."""
import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import vitkd  # noqa: F401  (registers the terms and the digits archs)
from factories import IMG, batch, vit
from vitkd.config import ConfigError, parse_config
from vitkd.distiller import Distiller
from vitkd.engine import build_run, train
from vitkd.engine.checkpoint import load_checkpoint
from vitkd.losses import build_term
from vitkd.rundir import RunDir
from vitkd.taps import TapRequest, Tapped

ARGS = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 3, "num_heads": 2}


def distiller(student, specs):
    return Distiller(student, {}, [build_term(s, i, []) for i, s in enumerate(specs)], IMG)


@pytest.mark.parametrize("token", ["cls", "pooled"])
def test_byot_equals_the_hand_computation(token):
    torch.manual_seed(0)
    s = vit(depth=3)
    spec = {"type": "byot", "blocks": [0, -2], "T": 2.0, "ce": 0.6, "kl": 0.4, "feature": 0.05, "token": token,
            "label_smoothing": 0.0}
    d = distiller(s, [spec]).eval()
    b = batch(6)
    _, parts = d(b)
    with Tapped(s, TapRequest(tokens={0, 1}, features=True)) as t, torch.no_grad():
        out = t(b.images)
    term = d.terms[0]

    def tok(prefix, patches):
        return prefix["cls"] if token == "cls" else patches.mean(1)

    deep_z, deep_f = out.logits, tok(out.final_prefix, out.final_patches)
    want = 0.0
    for head, blk in zip(term.heads, (0, 1)):
        f = F.layer_norm(tok(out.prefix[blk], out.patches[blk]), (32,), head.norm.weight, head.norm.bias)
        z = f @ head.fc.weight.T + head.fc.bias
        ce = F.cross_entropy(z, b.target)
        p = F.softmax(deep_z / 2.0, -1)
        kl = 4.0 * (p * (p.log() - F.log_softmax(z / 2.0, -1))).sum(-1).mean()
        hint = ((f - deep_f) ** 2).sum() / (6 * 32)   # mean over the batch and the 32 feature elements
        want = want + 0.6 * ce + 0.4 * kl + 0.05 * hint
    torch.testing.assert_close(parts["byot"], want.detach(), rtol=1e-5, atol=1e-6)
    d.close()


def test_the_shallow_blocks_and_aux_heads_learn_the_deepest_classifier_teaches():
    """Alone, the term moves the aux heads and the blocks up to the deepest tapped one; the last block, the final
    norm and the head (the deepest classifier, detached) get nothing from it."""
    torch.manual_seed(0)
    s = vit(depth=3)
    d = distiller(s, [{"type": "byot", "blocks": [0]}]).train()
    total, _ = d(batch())
    total.backward()

    def moved(m):
        return any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in d.terms[0].heads.parameters())
    assert moved(s.blocks[0]) and moved(s.patch_embed)
    assert not moved(s.blocks[1]) and not moved(s.blocks[2]) and not moved(s.norm) and not moved(s.head)
    d.close()


@pytest.mark.parametrize("spec,match", [
    ({"blocks": [2]}, r"blocks: 2 is the last block"),
    ({"blocks": [-1]}, r"blocks: -1 is the last block"),
    ({"blocks": [5]}, r"has no block 5"),
    ({"blocks": [0, -3]}, r"names a block .* twice"),
    ({"blocks": [0], "token": "mean"}, r"token must be 'cls'"),
    ({"blocks": "0"}, r"blocks: expected an integer"),
    ({"blocks": [0], "T": 0}, r"T must be > 0"),
    ({"blocks": [0], "kl": -1}, r"kl must be a number >= 0"),
])
def test_bad_byot_settings_are_one_line(spec, match):
    with pytest.raises(ConfigError, match=match):
        distiller(vit(depth=3), [{"type": "byot", **spec}])


def test_byot_needs_a_vit_and_a_cls_token_for_token_cls():
    with pytest.raises(ConfigError, match=r"needs transformer blocks|is a CNN"):
        distiller(timm.create_model("resnet10t", num_classes=10), [{"type": "byot", "blocks": [0]}])
    gap = vit(depth=3, class_token=False, global_pool="avg")
    with pytest.raises(ConfigError, match=r"has no cls token .* use token: pooled"):
        distiller(gap, [{"type": "byot", "blocks": [0]}])
    distiller(gap, [{"type": "byot", "blocks": [0], "token": "pooled"}]).close()


def _run_config() -> dict:
    return {"seed": 3, "model": {"name": "vit_tiny_patch16_224", "args": dict(ARGS)},
            "data": {"name": "digits", "train_subset": 32, "batch_size": 16},
            "train": {"epochs": 2, "progress": False, "device": "cpu", "warmup_epochs": 0},
            "distill": {"terms": [{"type": "ce"}, {"type": "byot", "blocks": [0, 1]}]}}


def test_a_byot_run_trains_its_aux_heads_and_exports_the_plain_architecture(tmp_path):
    raw = _run_config()
    fresh = build_run(parse_config(copy.deepcopy(raw))).distiller.connector_state_dict()
    again = build_run(parse_config(copy.deepcopy(raw))).distiller.connector_state_dict()
    assert all(torch.equal(fresh[k], again[k]) for k in fresh)   # the run's own start, deterministic
    train(parse_config(copy.deepcopy(raw)), tmp_path / "run", log=lambda m: None)
    run = RunDir(tmp_path / "run")
    ck = load_checkpoint(run.path)
    conn = ck["connectors"]
    assert set(conn) == set(fresh) and {k.split(".heads.")[1].split(".")[0] for k in conn} == {"0", "1"}
    assert all(not torch.equal(conn[k], fresh[k]) for k in conn if k.endswith("fc.weight"))   # they trained
    weights = load_file(str(run.weights_path))
    assert not any("heads" in k or k.startswith("terms") for k in weights)
    plain = timm.create_model("vit_tiny_patch16_224", num_classes=10, **ARGS)
    plain.load_state_dict(weights, strict=True)   # exactly the timm architecture's keys and shapes
    assert set(weights) == set(plain.state_dict())
    student = build_run(parse_config(copy.deepcopy(raw))).student
    student.load_state_dict(ck["student"])
    x = batch(5).images
    plain.eval(), student.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(x), student(x), rtol=0, atol=0)
