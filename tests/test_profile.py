"""Tests for vitkd.profile (MACs: one multiply-add = 1)."""
import math

import pytest
import timm
import torch
import torch.nn as nn

from vitkd.profile import (
    SDPA_FLOP_FORMULAS,
    MacReport,
    attention_flop_mapping,
    count_macs,
    count_params,
    format_report,
    measure_throughput,
    profile_model,
    sdpa_backward_macs,
    sdpa_macs,
    training_cost_per_image,
)


def _set_fused_attn(model: nn.Module, flag: bool) -> int:
    n = 0
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = flag
            n += 1
    return n


# --------------------------------------------------------------------------- #
# hand-counted small models
# --------------------------------------------------------------------------- #
def test_linear_hand_count():
    lin = nn.Linear(7, 5)
    rep = count_macs(lin, (4, 7))  # batch 1 prepended -> [1, 4, 7]
    assert isinstance(rep, MacReport)
    assert rep.total_macs == 4 * 7 * 5
    assert rep.params == 7 * 5 + 5
    assert rep.norm_macs == 0
    assert rep.agree and rep.flopcounter_macs == 4 * 7 * 5
    # example input with its own batch dim
    rep = count_macs(lin, torch.randn(3, 4, 7))
    assert rep.total_macs == 3 * 4 * 7 * 5
    assert rep.batch_size == 3 and rep.macs_per_image == 4 * 7 * 5


def test_conv_grouped_strided_hand_count():
    conv = nn.Conv2d(8, 16, kernel_size=3, stride=2, padding=1, groups=4)
    rep = count_macs(conv, (8, 15, 15))
    h_out = (15 + 2 * 1 - 3) // 2 + 1  # 8
    expected = h_out * h_out * 16 * (8 // 4) * 3 * 3
    assert rep.total_macs == expected
    assert rep.agree and rep.flopcounter_macs == expected


def _tiny_vit_hand_macs(img=32, patch=8, dim=64, depth=2, heads=2, classes=10, mlp_ratio=4, in_chans=3):
    n_patch = (img // patch) ** 2
    n = n_patch + 1  # + class token
    hd = dim // heads
    hidden = dim * mlp_ratio
    patch_embed = n_patch * dim * in_chans * patch * patch
    qkv = n * dim * 3 * dim
    attn_qk = heads * n * n * hd
    attn_av = heads * n * n * hd
    proj = n * dim * dim
    mlp = n * dim * hidden + n * hidden * dim
    head = dim * classes  # class-token pooling
    per_block = qkv + attn_qk + attn_av + proj + mlp
    return {
        "total": patch_embed + depth * per_block + head,
        "attention": depth * (attn_qk + attn_av),
        "conv": patch_embed,
        "norm": (2 * depth + 1) * n * dim * 5,  # fvcore: 5 per element for affine LN
    }


def _tiny_vit():
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
        embed_dim=64, depth=2, num_heads=2, num_classes=10,
    )


def test_tiny_vit_hand_count_fused_and_unfused():
    torch.manual_seed(0)
    model = _tiny_vit()
    hand = _tiny_vit_hand_macs()

    assert _set_fused_attn(model, True) == 2
    fused = count_macs(model, (3, 32, 32))
    assert fused.total_macs == hand["total"]
    assert fused.by_op["scaled_dot_product_attention"] == hand["attention"]
    assert fused.by_op["conv"] == hand["conv"]
    assert fused.agree and fused.rel_diff == 0
    assert fused.norm_macs == hand["norm"]

    _set_fused_attn(model, False)
    unfused = count_macs(model, (3, 32, 32))
    assert unfused.total_macs == fused.total_macs == hand["total"]
    assert unfused.by_op["matmul"] == hand["attention"]
    assert "scaled_dot_product_attention" not in unfused.by_op
    assert unfused.agree and unfused.flopcounter_macs == fused.flopcounter_macs


def _attention_macs(by_op):
    names = {str(p) for p in attention_flop_mapping()}
    return sum(v for k, v in by_op.items() if k in names)


def test_flopcounter_counts_fused_attention_with_hand_formula():
    # the cross-check must include attention whatever torch's own flop table covers: the
    # attention MACs seen by the FlopCounter path equal the hand count, and so does its total
    torch.manual_seed(0)
    model = _tiny_vit()
    hand = _tiny_vit_hand_macs()
    assert _set_fused_attn(model, True) == 2
    rep = count_macs(model, (3, 32, 32))
    assert _attention_macs(rep.flopcounter_by_op) == hand["attention"]
    assert rep.flopcounter_macs == hand["total"] == rep.fvcore_matmul_macs


def test_attention_mapping_covers_every_sdpa_kernel():
    aten = torch.ops.aten
    mapping = attention_flop_mapping()
    assert mapping and all(isinstance(p, torch._ops.OpOverloadPacket) for p in mapping)
    assert set(mapping) == {getattr(aten, n) for n in SDPA_FLOP_FORMULAS if hasattr(aten, n)}
    # every scaled-dot-product kernel of the installed torch has a formula (a new variant fails here)
    installed = {n.split("::")[1].split(".")[0] for n in torch._C._dispatch_get_all_op_names()
                 if n.startswith("aten::") and "scaled_dot_" in n}
    assert installed and installed <= set(SDPA_FLOP_FORMULAS), installed - set(SDPA_FLOP_FORMULAS)


def test_attention_formulas_match_hand_count_and_torch_convention():
    from torch.utils.flop_counter import flop_registry
    q, k, v = torch.Size([2, 3, 5, 8]), torch.Size([2, 3, 7, 8]), torch.Size([2, 3, 7, 6])
    grad_out = torch.Size([2, 3, 5, 6])
    fwd = 2 * 3 * 5 * 7 * (8 + 6)                   # QK^T + attn @ V
    bwd = 2 * 3 * 5 * 7 * (3 * 8 + 2 * 6)           # recompute QK^T, dO V^T, P^T dO, dS K, dS^T Q
    assert sdpa_macs(q, k, v) == fwd and sdpa_backward_macs(q, k, v) == bwd
    for packet, formula in attention_flop_mapping().items():
        backward = str(packet).endswith("_backward")
        args = (grad_out, q, k, v) if backward else (q, k, v)
        assert formula(*args, out_shape=None) == 2 * (bwd if backward else fwd), packet
        if packet in flop_registry:                 # same convention as torch's own formula
            assert formula(*args, out_shape=None) == flop_registry[packet](*args), packet


def test_flopcounter_counts_attention_backward():
    from torch.utils.flop_counter import FlopCounterMode
    q, k, v = (torch.randn(2, 3, 5, 8, requires_grad=True) for _ in range(3))
    with FlopCounterMode(display=False, custom_mapping=attention_flop_mapping()) as fc:
        torch.nn.functional.scaled_dot_product_attention(q, k, v).sum().backward()
    flops = {str(p): n for p, n in fc.get_flop_counts()["Global"].items()}
    product = 2 * 3 * 5 * 5 * 8                      # one [5x8]@[8x5] or [5x5]@[5x8] per (batch, head)
    assert sum(n for p, n in flops.items() if not p.endswith("_backward")) == 2 * 2 * product
    assert sum(n for p, n in flops.items() if p.endswith("_backward")) == 2 * 5 * product


def test_norm_reported_separately_for_vit():
    rep = count_macs(_tiny_vit(), (3, 32, 32))
    assert rep.norm_macs > 0
    assert set(rep.norm_by_op) == {"layer_norm"}
    assert not any("norm" in k for k in rep.by_op)
    assert rep.total_macs == sum(rep.by_op.values())


def test_count_params():
    m = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    m[0].weight.requires_grad_(False)
    pc = count_params(m)
    assert pc == {"total": 4 * 3 + 3 + 3 * 2 + 2, "trainable": 3 + 3 * 2 + 2, "non_trainable": 12}


def test_mode_restored_after_count():
    model = _tiny_vit().train()
    count_macs(model, (3, 32, 32))
    assert model.training


# --------------------------------------------------------------------------- #
# published figures at 224 px (MACs)
# --------------------------------------------------------------------------- #
PUBLISHED_GMACS = {
    "deit_tiny_patch16_224": 1.258,
    "deit_small_patch16_224": 4.608,
    "vit_base_patch16_224": 17.58,
    "resnet50": 4.09,
    "regnety_160": 15.9,
}
# what a counter that skips fused attention reports: must be avoided
UNDERCOUNT_GMACS = {
    "deit_tiny_patch16_224": 1.08,
    "deit_small_patch16_224": 4.25,
    "vit_base_patch16_224": 16.87,
}


@pytest.mark.parametrize("name", list(PUBLISHED_GMACS))
def test_published_figures(name):
    r = profile_model(name, throughput=False)
    g = r["macs"] / 1e9
    assert r["input_size"] == (3, 224, 224)
    assert g == pytest.approx(PUBLISHED_GMACS[name], rel=0.01), g
    assert r["agree"], r["rel_diff"]
    assert abs(r["rel_diff"]) < 0.01
    assert r["norm_macs"] > 0
    if name in UNDERCOUNT_GMACS:
        assert r["by_op"]["scaled_dot_product_attention"] > 0
        assert g > UNDERCOUNT_GMACS[name] * 1.03


def test_fused_equals_unfused_deit_tiny():
    m = timm.create_model("deit_tiny_patch16_224", pretrained=False)
    fused = count_macs(m)
    assert _set_fused_attn(m, False) == 12
    unfused = count_macs(m)
    assert fused.total_macs == unfused.total_macs
    assert fused.agree and unfused.agree


def test_profile_model_img_size_vit_and_cnn():
    v = profile_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=64, depth=2,
                      num_heads=2, num_classes=10, throughput=False)
    assert v["input_size"] == (3, 32, 32)
    assert v["macs"] == _tiny_vit_hand_macs()["total"]
    c = profile_model("resnet18", img_size=64, num_classes=10, throughput=False)
    assert c["input_size"] == (3, 64, 64)
    full = profile_model("resnet18", num_classes=10, throughput=False)
    # fully-convolutional: MACs scale ~ with pixel count
    assert c["macs"] < full["macs"] / 8


# --------------------------------------------------------------------------- #
# throughput, training cost, formatting
# --------------------------------------------------------------------------- #
def test_throughput_positive():
    model = _tiny_vit().train()
    tp = measure_throughput(model, (3, 32, 32), batch_size=2, warmup=1, iters=2)
    assert tp["img_per_s"] > 0 and math.isfinite(tp["img_per_s"])
    assert tp["iters"] == 2 and tp["batch_size"] == 2
    assert model.training  # mode restored
    r = profile_model(model, img_size=32, batch_size=2, warmup=0, iters=1)
    assert r["img_per_s"] > 0


def test_training_cost_per_image():
    student = _tiny_vit()
    s_fwd = count_macs(student, (3, 32, 32)).total_macs
    teacher = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 32 * 32, 10))
    t_fwd = count_macs(teacher, (3, 32, 32)).total_macs
    res = training_cost_per_image(student, {"cnn": teacher, "fixed": 1000}, connectors_macs=50,
                                  input_size=(3, 32, 32))
    assert res["student_forward_macs"] == s_fwd
    assert res["student_backward_macs"] == 2 * s_fwd
    assert res["teachers_forward_macs"] == {"cnn": t_fwd, "fixed": 1000}
    assert res["connectors_macs"] == 150  # trained: fwd + 2x bwd
    assert res["total_macs_per_image"] == 3 * s_fwd + t_fwd + 1000 + 150
    res2 = training_cost_per_image(student, {}, connectors_macs=50, input_size=(3, 32, 32),
                                   connectors_trained=False)
    assert res2["total_macs_per_image"] == 3 * s_fwd + 50
    txt = format_report(res)
    assert "teacher cnn" in txt and "total per image" in txt


def test_format_report():
    r = {"name": "deit_tiny_patch16_224", "input_size": (3, 224, 224), "params": 5_717_416,
         "macs": 1_253_683_200, "norm_macs": 4_728_000, "agree": True, "rel_diff": 0.0,
         "img_per_s": 123.4}
    txt = format_report(r)
    assert "1.254" in txt and "5.72" in txt and "123.4" in txt and "3x224x224" in txt
    txt2 = format_report([r, dict(r, name="other", img_per_s=None)])
    assert "other" in txt2 and len(txt2.splitlines()) == 4
    rep = count_macs(nn.Linear(7, 5), (4, 7))   # 4 rows x 35 MACs: small figures keep 3 significant digits
    assert "1.4e-07" in format_report(rep)


def test_profile_cli(capsys):
    import json as _json
    from vitkd.cli import main
    assert main(["profile", "vit_digits_tiny", "--json", "--no-throughput"]) == 0
    rep = _json.loads(capsys.readouterr().out)
    assert rep["input_size"] == [3, 16, 16] and rep["agree"] and 0.5e6 < rep["macs"] < 2e6
    assert main(["profile", "vit_digits_tinny"]) == 2
    assert "did you mean 'vit_digits_tiny'" in capsys.readouterr().err


def test_profile_cli_training_cost_of_a_config(tmp_path, capsys):
    import json as _json
    import timm
    import yaml
    from safetensors.torch import save_file
    from vitkd.cli import main
    w = tmp_path / "t.safetensors"
    save_file(timm.create_model("resnet_digits_s", num_classes=10).state_dict(), str(w))
    cfg = {"model": {"name": "vit_digits_tiny"}, "data": {"name": "digits"},
           "distill": {"teachers": {"cnn": {"model": "resnet_digits_s", "checkpoint": str(w)}},
                       "terms": [{"type": "ce"}, {"type": "kd"},
                                 {"type": "fitnet", "student_layers": [-1], "teacher_layers": [4]}]}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["profile", str(tmp_path / "c.yaml"), "--json"]) == 0
    cost = _json.loads(capsys.readouterr().out)
    s, t = cost["student_forward_macs"], cost["teachers_forward_macs"]["cnn"]
    assert t > s > 0 and cost["connectors_forward_macs"] > 0   # the fitnet connector is counted
    assert abs(cost["total_macs_per_image"] - (3 * s + t + 3 * cost["connectors_forward_macs"])) < 1
