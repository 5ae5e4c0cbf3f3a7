"""Taps against independent references: plain forwards, forward hooks on blocks, and attention
recomputed from each block's own qkv weights."""
import pytest
import timm
import torch
import torch.nn.functional as F

from vitkd.taps import TapError, TapRequest, Tapped

SMALL = dict(embed_dim=48, depth=4, num_heads=3, mlp_ratio=2.0)


def vit(name="vit_tiny_patch16_224", **kw):
    torch.manual_seed(0)
    args = dict(img_size=32, patch_size=8, num_classes=7, **SMALL)
    args.update(kw)
    return timm.create_model(name, pretrained=False, **args).eval()


def hooked_block_outputs(model, x, blocks):
    """Reference: forward hooks on model.blocks[i] during a plain forward."""
    got = {}
    hs = [model.blocks[i].register_forward_hook(lambda m, a, o, i=i: got.__setitem__(i, o)) for i in blocks]
    with torch.no_grad():
        logits = model(x)
    for h in hs:
        h.remove()
    return logits, got


def reference_attention(block, x_in):
    """softmax(q k^T * scale) recomputed from the block's own qkv weights (and q/k norms)."""
    attn = block.attn
    y = block.norm1(x_in)
    B, N, C = y.shape
    qkv = F.linear(y, attn.qkv.weight, attn.qkv.bias).reshape(B, N, 3, attn.num_heads, attn.head_dim)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(q), attn.k_norm(k)
    return (q @ k.transpose(-2, -1) * attn.head_dim ** -0.5).softmax(-1), (q, k, v)


def block_inputs(model, x, blocks):
    got = {}
    hs = [model.blocks[i].register_forward_pre_hook(lambda m, a, i=i: got.__setitem__(i, a[0])) for i in blocks]
    with torch.no_grad():
        model(x)
    for h in hs:
        h.remove()
    return got


@pytest.mark.parametrize("name,kw,prefix", [
    ("vit_tiny_patch16_224", {}, ["cls"]),
    ("deit_tiny_distilled_patch16_224", {}, ["cls", "dist"]),
    ("vit_tiny_patch16_224", {"reg_tokens": 4}, ["cls", "reg0", "reg1", "reg2", "reg3"]),
    ("vit_tiny_patch16_224", {"class_token": False, "global_pool": "avg"}, []),
])
def test_logits_tokens_prefix_match_references(name, kw, prefix):
    m = vit(name, **kw)
    x = torch.randn(2, 3, 32, 32)
    ref_logits, ref_blocks = hooked_block_outputs(m, x, [1, 3])
    with torch.no_grad(), Tapped(m, TapRequest(tokens={1, -1}, heads=True)) as t:
        out = t(x)
    torch.testing.assert_close(out.logits, ref_logits, atol=1e-5, rtol=0)
    npre = len(prefix)
    assert list(out.prefix[1]) == prefix
    for blk in (1, 3):
        torch.testing.assert_close(out.patches[blk], ref_blocks[blk][:, npre:], atol=1e-6, rtol=0)
        for j, n in enumerate(prefix):
            torch.testing.assert_close(out.prefix[blk][n], ref_blocks[blk][:, j], atol=1e-6, rtol=0)
    # negative index answers the same block; grid is [B, D, H, W] on the 4x4 patch grid
    assert out.patches[-1] is out.patches[3]
    assert out.grid_size == (4, 4)
    g = out.grid(-1)
    assert g.shape == (2, 48, 4, 4)
    torch.testing.assert_close(g[:, :, 1, 2], out.patches[3][:, 1 * 4 + 2])


def test_distilled_heads_read_separately():
    m = vit("deit_tiny_distilled_patch16_224")
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        feats = m.forward_features(x)
        ref_cls, ref_dist = m.head(feats[:, 0]), m.head_dist(feats[:, 1])
        plain = m(x)
        with Tapped(m, TapRequest(heads=True)) as t:
            out = t(x)
    torch.testing.assert_close(out.heads["cls"], ref_cls, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.heads["dist"], ref_dist, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.logits, plain, atol=1e-5, rtol=0)
    assert not torch.allclose(out.heads["cls"], out.heads["dist"])  # untied heads differ


@pytest.mark.parametrize("kw", [{}, {"reg_tokens": 2}, {"qk_norm": True}])
def test_attention_and_qkv_match_recomputation(kw):
    m = vit(**kw)
    x = torch.randn(2, 3, 32, 32)
    ins = block_inputs(m, x, [0, 2])
    with torch.no_grad(), Tapped(m, TapRequest(attn={0, -2}, qkv={2})) as t:
        out = t(x)
        # only the requested blocks are switched off the fused path, while tapped
        assert [b.attn.fused_attn for b in m.blocks] == [False, True, False, True]
    assert all(b.attn.fused_attn for b in m.blocks)  # restored on close
    N = 1 + m.num_reg_tokens + 16
    for blk in (0, 2):
        a = out.attn[blk]
        assert a.shape == (2, 3, N, N)
        torch.testing.assert_close(a.sum(-1), torch.ones(2, 3, N), atol=1e-5, rtol=0)
        ref, _ = reference_attention(m.blocks[blk], ins[blk])
        torch.testing.assert_close(a, ref, atol=1e-5, rtol=1e-4)
    assert set(out.attn) == {0, 2} and set(out.qkv) == {2}
    _, (q, k, v) = reference_attention(m.blocks[2], ins[2])
    for got, want in zip(out.qkv[2], (q, k, v)):
        assert got.shape == (2, 3, N, 16)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_unrequested_blocks_keep_fused_path_and_run_no_capture():
    m = vit()
    calls = []
    orig = F.scaled_dot_product_attention
    x = torch.randn(1, 3, 32, 32)
    with Tapped(m, TapRequest(attn={1})) as t:
        # count fused calls through a forward hook on each attention module's output (no patching)
        hs = [b.attn.register_forward_hook(lambda mod, a, o, i=i: calls.append((i, mod.fused_attn)))
              for i, b in enumerate(m.blocks)]
        with torch.no_grad():
            out = t(x)
        for h in hs:
            h.remove()
        assert len(t._handles) == 3  # enter/leave on block 1 + one capture hook
    assert calls == [(0, True), (1, False), (2, True), (3, True)]
    assert list(out.attn) == [1] and not out.qkv and not out.patches
    assert F.scaled_dot_product_attention is orig


def test_close_removes_every_hook():
    m = vit()
    def n_hooks():
        return sum(len(mod._forward_hooks) + len(mod._forward_pre_hooks) for mod in m.modules())
    before = n_hooks()
    t = Tapped(m, TapRequest(tokens={0}, attn={0, 1}, qkv={1, 2}))
    assert n_hooks() > before
    t.close()
    assert n_hooks() == before
    assert all(b.attn.fused_attn for b in m.blocks)
    with pytest.raises(RuntimeError):
        t(torch.randn(1, 3, 32, 32))


def test_dynamic_img_size_non_square():
    torch.manual_seed(0)
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, dynamic_img_size=True, num_classes=5,
                          embed_dim=48, depth=2, num_heads=3).eval()
    x = torch.randn(1, 3, 224, 160)
    ref_logits, ref_blocks = hooked_block_outputs(m, x, [1])
    with torch.no_grad(), Tapped(m, TapRequest(tokens={-1}, attn={0})) as t:
        out = t(x)
    torch.testing.assert_close(out.logits, ref_logits, atol=1e-5, rtol=0)
    assert out.grid_size == (14, 10)
    assert out.patches[1].shape == (1, 140, 48)
    assert out.grid(1).shape == (1, 48, 14, 10)
    torch.testing.assert_close(out.grid(1)[0, :, 3, 7], ref_blocks[1][0, 1 + 3 * 10 + 7])
    assert out.attn[0].shape == (1, 3, 141, 141)


@pytest.mark.parametrize("name,strides", [
    ("resnet18", {4: 64, 8: 128, 16: 256, 32: 512}),
    ("regnetx_002", {8: 56, 32: 368}),
    ("convnext_atto", {4: 40, 32: 320}),
])
def test_cnn_stages_by_stride(name, strides):
    torch.manual_seed(0)
    m = timm.create_model(name, pretrained=False, num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = m(x)
        with Tapped(m, TapRequest(stages=set(strides))) as t:
            out = t(x)
    torch.testing.assert_close(out.logits, ref, atol=1e-5, rtol=0)
    for s, c in strides.items():
        assert out.stages[s].shape == (2, c, 64 // s, 64 // s)


def test_cnn_stage_equals_named_module_output():
    torch.manual_seed(0)
    m = timm.create_model("resnet18", pretrained=False, num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    got = {}
    h = m.layer3.register_forward_hook(lambda mod, a, o: got.setdefault("l3", o))
    with torch.no_grad(), Tapped(m, TapRequest(stages={16})) as t:
        out = t(x)
    h.remove()
    torch.testing.assert_close(out.stages[16], got["l3"])


def test_errors_name_model_and_range():
    m = vit()
    with pytest.raises(TapError, match=r"vit_tiny_patch16_224.*block 4 out of range.*0\.\.3"):
        Tapped(m, TapRequest(tokens={4}))
    with pytest.raises(TapError, match="block -5 out of range"):
        Tapped(m, TapRequest(attn={-5}))
    r = timm.create_model("resnet18", pretrained=False)
    with pytest.raises(TapError, match=r"resnet18.*stride \[64\].*valid strides are \[2, 4, 8, 16, 32\]"):
        Tapped(r, TapRequest(stages={64}))
    with pytest.raises(TapError, match="resnet18.*ViT-like"):
        Tapped(r, TapRequest(tokens={0}))
    with pytest.raises(TapError, match="stage taps asked of a ViT"):
        Tapped(m, TapRequest(stages={8}))
    # a failed construction leaves no hook and no flag behind
    assert all(b.attn.fused_attn for b in m.blocks)
    assert not any(mod._forward_hooks or mod._forward_pre_hooks for mod in m.modules())


def test_untappable_attention_named():
    m = vit()

    class OddAttention(torch.nn.Module):
        def forward(self, x):
            return x
    m.blocks[1].attn = OddAttention()
    with pytest.raises(TapError, match="OddAttention"):
        Tapped(m, TapRequest(attn={1}))


def test_gradients_flow_through_tapped_tokens():
    m = vit().train()
    x = torch.randn(2, 3, 32, 32)
    with Tapped(m, TapRequest(tokens={1}, attn={0})) as t:
        out = t(x)
        (out.patches[1].pow(2).mean() + out.attn[0].mean()).backward()
    assert m.blocks[0].attn.qkv.weight.grad is not None
    assert m.blocks[3].mlp.fc1.weight.grad is None  # the block after the tap gets nothing from it


def test_request_merge():
    a = TapRequest(tokens={1}, heads=True)
    b = TapRequest(tokens=[2, 1], attn=0, stages={8})
    u = TapRequest.union([a, b])
    assert u.tokens == {1, 2} and u.attn == {0} and u.stages == {8} and u.heads
    assert not TapRequest() and u
