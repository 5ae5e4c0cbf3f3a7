"""vitkd.archs: registered models, MiniViT weight multiplexing, involution / RedNet, CivT (CPU, small inputs)."""
import copy
import io
import math

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

import vitkd.archs as archs
from vitkd.archs import minivit_convert
from vitkd.archs.involution import Involution2d
from vitkd.archs.minivit import LocalConvTransform, MiniAttention, MiniBlock

torch.set_num_threads(1)   # the test machine's 2 cores are shared; one thread is the most robust

VIT_224 = {'minivit_deit_tiny_patch16_224', 'minivit_deit_small_patch16_224', 'minivit_deit_base_patch16_224',
           'civt_tiny_patch16_224'}
CNN_224 = {'rednet26'}
B = 2
FMNIST_STUDENTS = ('vit_fmnist_tiny', 'vit_fmnist_small', 'vit_fmnist_base')
FMNIST_MODELS = (*FMNIST_STUDENTS, 'vit_fmnist_large', 'deit_fmnist_small_distilled', 'minivit_fmnist_small',
                 'civt_fmnist_small', 'resnet_fmnist_s', 'resnet_fmnist_m', 'resnet_fmnist_l', 'rednet_fmnist')


def _is_vit(m):
    return hasattr(m, 'blocks') and hasattr(m, 'num_prefix_tokens')


def _make(name, seed=0, **kwargs):
    """The registered model at a small input: 224 px ViT-likes are built for 32 px and 4 blocks (their
    full-size parameter counts are checked on the meta device below), 224 px CNNs are fed 64 px."""
    if name in VIT_224:
        kwargs.setdefault('img_size', 32)
        kwargs.setdefault('depth', 4)
    torch.manual_seed(seed)
    m = timm.create_model(name, pretrained=False, **kwargs).eval()
    if name in VIT_224:
        size = kwargs['img_size']
    elif name in CNN_224:
        size = 64
    else:
        size = m.pretrained_cfg['input_size'][-1]
    return m, size


def _x(size, seed=1, chans=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, chans, size, size, generator=g)


# ------------------------------------------------------------------------------------------ registry
def test_registered_names():
    names = archs.MODEL_NAMES
    assert len(names) == len(set(names)) >= 15
    for n in names:
        assert timm.is_model(n), n
    for n in ('vit_digits_tiny', 'vit_digits_small', 'vit_digits_base', 'vit_digits_large',
              'deit_digits_tiny_distilled', 'resnet_digits_s', 'resnet_digits_m', 'rednet_digits',
              'minivit_deit_tiny_patch16_224', 'minivit_deit_small_patch16_224', 'minivit_deit_base_patch16_224',
              'minivit_digits_small', 'civt_digits_tiny', 'civt_tiny_patch16_224', *FMNIST_MODELS):
        assert n in names


@pytest.mark.parametrize('name', archs.MODEL_NAMES)
def test_registered_model(name):
    m, size = _make(name)
    cfg = m.pretrained_cfg
    for k in ('input_size', 'mean', 'std', 'first_conv', 'classifier', 'num_classes', 'interpolation', 'crop_pct'):
        assert k in cfg and cfg[k] is not None, (name, k)
    assert cfg['url'] == '' and cfg['architecture'] == name
    ncls = cfg['num_classes']
    assert m.num_classes == ncls
    x = _x(size, chans=cfg['input_size'][0])
    with torch.no_grad():
        y = m(x)
        feats = m.forward_features(x)
        y2 = m.forward_head(feats)
        pre = m.forward_head(feats, pre_logits=True)
    assert y.shape == (B, ncls) and torch.isfinite(y).all()
    torch.testing.assert_close(y, y2)
    assert pre.shape == (B, m.num_features)

    if _is_vit(m):
        gh, gw = m.patch_embed.dynamic_feat_size((size, size))
        n_tok = m.num_prefix_tokens + gh * gw
        assert feats.shape == (B, n_tok, m.embed_dim)
        depth = len(m.blocks)
        final, inter = m.forward_intermediates(x, return_prefix_tokens=True)
        torch.testing.assert_close(final, feats)
        assert len(inter) == depth
        for sp, pf in inter:
            assert sp.shape == (B, m.embed_dim, gh, gw)
            assert pf.shape == (B, m.num_prefix_tokens, m.embed_dim)
        inter = m.forward_intermediates(x, indices=[0, depth - 1], output_fmt='NLC', intermediates_only=True)
        assert [t.shape for t in inter] == [(B, gh * gw, m.embed_dim)] * 2
        # the last block's tokens, normed, are the features
        _, last = m.forward_intermediates(x, indices=1, norm=True, return_prefix_tokens=True)
        sp, pf = last[0]
        torch.testing.assert_close(torch.cat([pf, sp.flatten(2).transpose(1, 2)], 1), feats)
        from vitkd.archs import PrefixPassGPSA
        for blk in m.blocks:
            a = blk.attn
            if isinstance(a, PrefixPassGPSA):   # timm's ConViT GPSA: no attention taps (TapError), token taps only
                continue
            for attr in ('fused_attn', 'num_heads', 'head_dim', 'scale', 'qkv', 'q_norm', 'k_norm', 'attn_drop'):
                assert hasattr(a, attr), (name, attr)
            assert isinstance(a.qkv, nn.Linear) and a.qkv.out_features == 3 * a.num_heads * a.head_dim
        # attention instances are per block (even where weights are shared)
        assert len({id(b.attn) for b in m.blocks}) == depth
        mhsa = [b for b in m.blocks if not isinstance(b.attn, PrefixPassGPSA)]
        assert len({id(b.attn.attn_drop) for b in mhsa}) == len(mhsa)
        assert len({id(b.attn.q_norm) for b in mhsa}) == len(mhsa)
    else:
        assert feats.ndim == 4 and feats.shape[:2] == (B, m.num_features)
        info = m.feature_info
        final, inter = m.forward_intermediates(x)
        torch.testing.assert_close(final, feats)
        assert len(inter) == len(info)
        for t, fi in zip(inter, info):
            m.get_submodule(fi['module'])
            assert t.shape[1] == fi['num_chs']
            assert t.shape[-1] == math.ceil(size / fi['reduction']), (name, fi, t.shape)

    # state dict round trip into a fresh, differently seeded instance
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    m2, _ = _make(name, seed=123)
    m2.load_state_dict(torch.load(buf, weights_only=True), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(m2(x), y, rtol=0, atol=0)

    m.reset_classifier(5)
    with torch.no_grad():
        assert m(x).shape == (B, 5)
    m.reset_classifier(0)
    with torch.no_grad():
        assert m(x).shape == (B, m.num_features)


@pytest.mark.parametrize('name', ['vit_digits_small', 'deit_digits_tiny_distilled', 'minivit_digits_small',
                                  'civt_digits_tiny', 'resnet_digits_s', 'rednet_digits', 'vit_fmnist_small',
                                  'civt_fmnist_small', 'resnet_fmnist_s'])
def test_kwargs_pass_through_32px(name):
    m = timm.create_model(name, num_classes=3, img_size=32) if name.split('_')[0] in ('vit', 'deit', 'minivit', 'civt') \
        else timm.create_model(name, num_classes=3)
    m.eval()
    with torch.no_grad():
        assert m(_x(32, chans=m.pretrained_cfg['input_size'][0])).shape == (B, 3)
    if _is_vit(m):
        assert m.patch_embed.grid_size == (8, 8)


# ------------------------------------------------------------------------------------------ Fashion-MNIST
def test_fmnist_family_is_registered():
    assert sorted(n for n in archs.MODEL_NAMES if 'fmnist' in n) == sorted(FMNIST_MODELS)


@pytest.mark.parametrize('name', FMNIST_MODELS)
def test_fmnist_model_takes_one_grey_channel(name):
    m = timm.create_model(name).eval()
    cfg = m.pretrained_cfg
    assert cfg['input_size'] == (1, 28, 28) and cfg['mean'] == (0.2860,) and cfg['std'] == (0.3530,)
    assert cfg['num_classes'] == 10 and cfg['crop_pct'] == 1.0 and cfg['interpolation'] == 'bilinear'
    assert cfg['url'] == ''
    first = cfg['first_conv'] if isinstance(cfg['first_conv'], (tuple, list)) else (cfg['first_conv'],)
    for layer in first:
        assert m.get_submodule(layer).in_channels == 1, (name, layer)   # in_chans=1 from the cfg
    x = torch.randn(B, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = m(x)
    assert y.shape == (B, 10) and torch.isfinite(y).all()
    with pytest.raises(RuntimeError):
        m(torch.randn(B, 3, 28, 28))


def _macs(name):
    from vitkd.profile import count_macs
    m = timm.create_model(name).eval()
    return count_macs(m, m.pretrained_cfg['input_size'], batch_size=1).total_macs


def test_fmnist_student_macs_bands():
    """The three students span ~1 to 12 M MACs per image with the project's counter (attention counted):
    tiny 1-2 M, small 3-5 M, base 10-12.5 M; the DeiT / MiniViT share the small student's dims and cost."""
    tiny, small, base = (_macs(n) for n in FMNIST_STUDENTS)
    assert tiny < small < base
    assert 1e6 <= tiny <= 2e6
    assert 3e6 <= small <= 5e6
    assert 10e6 <= base <= 12.5e6
    for name in ('deit_fmnist_small_distilled', 'minivit_fmnist_small'):
        assert small < _macs(name) < 1.2 * small, name    # + a dist token / MiniViT's depthwise transforms
    a = archs.FMNIST_VIT_ARGS['small']
    for name in ('deit_fmnist_small_distilled', 'minivit_fmnist_small', 'civt_fmnist_small'):
        m = timm.create_model(name, device='meta')
        assert (m.embed_dim, len(m.blocks), m.blocks[0].attn.num_heads, m.patch_embed.grid_size) == \
            (a['embed_dim'], a['depth'], a['num_heads'], (7, 7)), name
        assert m.blocks[0].mlp.fc1.out_features == int(a['embed_dim'] * a['mlp_ratio']), name


@pytest.mark.parametrize('name', ['resnet_fmnist_s', 'resnet_fmnist_m', 'resnet_fmnist_l'])
def test_fmnist_resnet_stages_at_28_14_7_4(name):
    m = timm.create_model(name).eval()
    assert isinstance(m, archs.DigitsResNet) and isinstance(m.maxpool, nn.Identity)
    assert m.conv1.stride == (1, 1) and m.conv1.kernel_size == (3, 3)
    assert [f['reduction'] for f in m.feature_info] == [1, 1, 2, 4, 8]
    with torch.no_grad():
        _, inter = m.forward_intermediates(torch.randn(1, 1, 28, 28))
    assert [tuple(t.shape[-2:]) for t in inter] == [(28, 28), (28, 28), (14, 14), (7, 7), (4, 4)]
    assert m.pretrained_cfg['pool_size'] == (4, 4)


def test_fmnist_resnet_capacities_grow():
    params = [_count(timm.create_model(f'resnet_fmnist_{s}', device='meta')) for s in 'sml']
    assert params[0] < params[1] < params[2]


def test_fmnist_student_trains():
    m = timm.create_model('vit_fmnist_small')
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    x, t = _x(28, chans=1), torch.tensor([1, 7])
    losses = []
    for _ in range(5):
        loss = F.cross_entropy(m(x), t)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_digits_student_is_small_and_trains():
    m = timm.create_model('vit_digits_small')
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    x, t = _x(16), torch.tensor([1, 7])
    loss0 = None
    for _ in range(5):
        loss = F.cross_entropy(m(x), t)
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss0 = loss0 if loss0 is not None else loss.item()
    assert loss.item() < loss0


# ------------------------------------------------------------------------------------------ MiniViT
def vit_param_count(dim, depth, heads, patch, img, classes=1000, in_chans=3, mlp_ratio=4, share=1,
                    attn_transform=False, mlp_transform=False, kernel=7, prefix=1):
    """Analytic parameter count of a timm ViT (qkv bias, cls token, learned pos embed, final norm, linear
    head) whose qkv/proj/fc1/fc2 are shared by groups of ``share`` consecutive blocks, plus MiniViT's
    per-block transforms: 2 head mixes (heads x heads, no bias) and LN + depthwise kxk conv with bias."""
    n = (img // patch) ** 2
    hid = int(dim * mlp_ratio)
    embed = in_chans * patch * patch * dim + dim + prefix * dim + (n + prefix) * dim
    shared = (dim * 3 * dim + 3 * dim) + (dim * dim + dim) + (dim * hid + hid) + (hid * dim + dim)
    per_block = 2 * 2 * dim
    if attn_transform:
        per_block += 2 * heads * heads
    if mlp_transform:
        per_block += 2 * dim + dim * kernel * kernel + dim
    head = 2 * dim + dim * classes + classes
    return embed + math.ceil(depth / share) * shared + depth * per_block + head


def _count(m):
    return sum(p.numel() for p in m.parameters())


DEIT = {'tiny': (192, 3), 'small': (384, 6), 'base': (768, 12)}


@pytest.mark.parametrize('size', ['tiny', 'small', 'base'])
def test_minivit_deit_param_counts(size):
    dim, heads = DEIT[size]
    dense = _count(timm.create_model(f'deit_{size}_patch16_224', device='meta'))
    assert dense == vit_param_count(dim, 12, heads, 16, 224)
    # shared weights alone: DeiT-Ti/S/B 5.7M/22.1M/86.6M -> ~3.05M/11.4M/44.1M (MiniViT: 3M/11M/44M)
    shared_only = vit_param_count(dim, 12, heads, 16, 224, share=2)
    expected = {'tiny': 3.05e6, 'small': 11.4e6, 'base': 44.1e6}[size]
    assert abs(shared_only - expected) / expected < 0.01
    m = timm.create_model(f'minivit_deit_{size}_patch16_224', device='meta')
    analytic = vit_param_count(dim, 12, heads, 16, 224, share=2, attn_transform=True, mlp_transform=True, kernel=7)
    assert abs(_count(m) - analytic) / analytic < 0.01
    assert _count(m) == analytic
    bare = timm.create_model(f'minivit_deit_{size}_patch16_224', device='meta', attn_transform=False,
                             mlp_transform=False)
    assert _count(bare) == shared_only


@pytest.mark.parametrize('name,size', [('minivit_digits_small', 'small'), ('minivit_digits_base', 'base')])
def test_minivit_digits_param_counts(name, size):
    a = archs.DIGITS_VIT_ARGS[size]
    analytic = vit_param_count(a['embed_dim'], a['depth'], a['num_heads'], 4, 16, classes=10, share=2,
                               attn_transform=True, mlp_transform=True, kernel=3)
    assert _count(timm.create_model(name)) == analytic


def _small_vit(depth=4, seed=0, **kw):
    torch.manual_seed(seed)
    args = dict(img_size=16, patch_size=4, embed_dim=32, depth=depth, num_heads=4, num_classes=10)
    args.update(kw)
    return timm.models.vision_transformer.VisionTransformer(**args).eval()


def test_minivit_sharing_structure():
    src = _small_vit(depth=5)
    m = minivit_convert(src, share=2)
    assert m.minivit_groups == [[0, 1], [2, 3], [4]]
    assert src.blocks[0].attn.qkv is not m.blocks[0].attn.qkv      # deep copy by default
    for g in m.minivit_groups:
        first = m.blocks[g[0]]
        for i in g:
            b = m.blocks[i]
            assert isinstance(b, MiniBlock) and isinstance(b.attn, MiniAttention)
            for get in (lambda b: b.attn.qkv, lambda b: b.attn.proj, lambda b: b.mlp.fc1, lambda b: b.mlp.fc2):
                assert get(b) is get(first)
                assert get(b).weight.data_ptr() == get(first).weight.data_ptr()
            if i != g[0]:
                assert b.attn is not first.attn and b.mlp is not first.mlp
                assert b.norm1 is not first.norm1 and b.norm2 is not first.norm2
                assert b.attn.head_mix_pre is not first.attn.head_mix_pre
                assert b.mlp_transform is not first.mlp_transform
    assert m.blocks[0].attn.qkv is not m.blocks[2].attn.qkv
    shared = archs.shared_linears(m)
    assert len(shared) == 2 * 4     # groups of two: qkv, proj, fc1, fc2
    # the state dict keeps every name (shared tensors appear under each block's key)
    sd = m.state_dict()
    assert sd['blocks.1.attn.qkv.weight'].data_ptr() == sd['blocks.0.attn.qkv.weight'].data_ptr()
    assert m.blocks[0].attn.fused_attn is False     # head transforms need the explicit path
    with pytest.raises(TypeError):
        minivit_convert(m)                          # already multiplexed


def test_minivit_shared_init_first_and_mean():
    src = _small_vit(depth=4)
    first = minivit_convert(src, share=2, shared_init='first')
    mean = minivit_convert(src, share=2, shared_init='mean')
    torch.testing.assert_close(first.blocks[1].mlp.fc1.weight, src.blocks[0].mlp.fc1.weight)
    torch.testing.assert_close(mean.blocks[1].attn.qkv.weight,
                               (src.blocks[0].attn.qkv.weight + src.blocks[1].attn.qkv.weight) / 2)
    torch.testing.assert_close(mean.blocks[3].attn.proj.bias,
                               (src.blocks[2].attn.proj.bias + src.blocks[3].attn.proj.bias) / 2)
    # per-block norms come from the block itself
    torch.testing.assert_close(first.blocks[1].norm1.weight, src.blocks[1].norm1.weight)


def _perturb_(model, seed=5):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


def test_minivit_share1_identity_small_vit():
    src = _small_vit(depth=3)
    _perturb_(src)     # non-trivial LN / biases
    x = _x(16)
    with torch.no_grad():
        ref = src(x)
        for init in ('first', 'mean'):
            m = minivit_convert(src, share=1, transforms=True, shared_init=init)
            torch.testing.assert_close(m(x), ref, rtol=0, atol=1e-5)
        distilled = timm.create_model('deit_digits_tiny_distilled').eval()
        torch.testing.assert_close(minivit_convert(distilled, share=1)(x), distilled(x), rtol=0, atol=1e-5)


def test_minivit_share1_identity_deit_tiny():
    torch.manual_seed(0)
    src = timm.create_model('deit_tiny_patch16_224', pretrained=False).eval()
    m = minivit_convert(src, share=1)
    x = _x(224)[:1]
    with torch.no_grad():
        torch.testing.assert_close(m(x), src(x), rtol=0, atol=1e-5)


def test_minivit_fused_equals_explicit_without_transforms():
    m = minivit_convert(_small_vit(), share=2, transforms=False)
    assert all(b.attn.fused_attn for b in m.blocks) and all(b.attn.head_mix_pre is None for b in m.blocks)
    assert all(isinstance(b.mlp_transform, nn.Identity) for b in m.blocks)
    x = _x(16)
    with torch.no_grad():
        fused = m(x)
        for b in m.blocks:
            b.attn.fused_attn = False
        torch.testing.assert_close(m(x), fused, rtol=0, atol=1e-5)


def test_minivit_gradients_accumulate_over_blocks():
    m = minivit_convert(_small_vit(depth=4), share=2)
    _perturb_(m)     # transforms away from identity so every path carries gradient
    m.train()
    clone = copy.deepcopy(m)     # deepcopy keeps the sharing; untie it block by block
    for b in clone.blocks:
        b.attn.qkv = copy.deepcopy(b.attn.qkv)
        b.attn.proj = copy.deepcopy(b.attn.proj)
        b.mlp.fc1 = copy.deepcopy(b.mlp.fc1)
        b.mlp.fc2 = copy.deepcopy(b.mlp.fc2)
    assert archs.shared_linears(clone) == []
    assert _count(clone) > _count(m)
    x, t = _x(16), torch.tensor([3, 4])
    F.cross_entropy(m(x), t).backward()
    F.cross_entropy(clone(x), t).backward()
    for g in m.minivit_groups:
        for get in (lambda b: b.attn.qkv.weight, lambda b: b.attn.proj.bias, lambda b: b.mlp.fc1.weight,
                    lambda b: b.mlp.fc2.weight):
            shared_grad = get(m.blocks[g[0]]).grad
            parts = [get(clone.blocks[i]).grad for i in g]
            assert all(p.abs().sum() > 0 for p in parts)
            torch.testing.assert_close(shared_grad, sum(parts), rtol=1e-4, atol=1e-6)
    # per-block transforms get their own gradients
    assert m.blocks[1].attn.head_mix_pre.weight.grad.abs().sum() > 0
    assert m.blocks[1].mlp_transform.conv.weight.grad.abs().sum() > 0


def test_minivit_attention_placement():
    """attn_drop sees the post-mix probabilities exactly once per block; q/k norms see [B, h, N, d]."""
    m = minivit_convert(_small_vit(depth=2), share=2)
    _perturb_(m)
    calls, qs = {}, {}
    hooks = []
    for i, b in enumerate(m.blocks):
        hooks.append(b.attn.attn_drop.register_forward_pre_hook(
            lambda mod, args, i=i: calls.setdefault(i, []).append(args[0].detach())))
        hooks.append(b.attn.q_norm.register_forward_hook(lambda mod, a, out, i=i: qs.setdefault(i, out)))
    x = _x(16)
    with torch.no_grad():
        m(x)
    for h in hooks:
        h.remove()
    n = 1 + 16
    for i, b in enumerate(m.blocks):
        assert len(calls[i]) == 1
        probs = calls[i][0]
        assert probs.shape == (B, 4, n, n) and qs[i].shape == (B, 4, n, 8)
        # recompute: logits -> pre-mix -> softmax -> post-mix
        a = b.attn
        with torch.no_grad():
            h = b.norm1(_tokens_before_block(m, x, i))
            q, k, _ = a.qkv(h).reshape(B, n, 3, 4, 8).permute(2, 0, 3, 1, 4)
            logits = torch.einsum('gh,bhnm->bgnm', a.head_mix_pre.weight, (q * a.scale) @ k.transpose(-2, -1))
            expect = torch.einsum('gh,bhnm->bgnm', a.head_mix_post.weight, logits.softmax(-1))
        torch.testing.assert_close(probs, expect, rtol=1e-4, atol=1e-5)


def _tokens_before_block(m, x, i):
    t = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))
    for b in m.blocks[:i]:
        t = b(t)
    return t


def test_minivit_local_conv_transform_keeps_prefix():
    t = LocalConvTransform(8, num_prefix_tokens=2, grid_size=(3, 3), kernel_size=3, init='reference')
    x = torch.randn(B, 2 + 9, 8)
    y = t(x)
    torch.testing.assert_close(y[:, :2], x[:, :2])
    assert not torch.allclose(y[:, 2:], x[:, 2:])
    ident = LocalConvTransform(8, 2, (3, 3), 3)
    torch.testing.assert_close(ident(x), x)


def test_minivit_reference_init_and_taps():
    from vitkd.taps import Tapped, TapRequest
    m = timm.create_model('minivit_digits_small', transform_init='reference').eval()
    x = _x(16)
    with torch.no_grad():
        y = m(x)
    assert torch.isfinite(y).all()
    with Tapped(m, TapRequest(tokens={-1}, attn={0, 1, 5}, qkv={0, 1}, heads=True)) as tapped:
        with torch.no_grad():
            out = tapped(x)
    torch.testing.assert_close(out.logits, y)
    assert out.attn[1].shape == (B, 4, 17, 17) and out.attn[0].shape == (B, 4, 17, 17)
    assert not torch.allclose(out.attn[0], out.attn[1])      # same shared qkv, different blocks
    q0, k0, v0 = out.qkv[0]
    assert q0.shape == k0.shape == v0.shape == (B, 4, 17, 16)
    assert not torch.allclose(out.qkv[0][2], out.qkv[1][2])
    assert all(b.attn.fused_attn is False for b in m.blocks)


# ------------------------------------------------------------------------------------------ involution
def _naive_involution(x, kernel, K, G, stride, pad):
    Bn, C, H, W = x.shape
    gc = C // G
    xp = F.pad(x, (pad, pad, pad, pad))
    h, w = kernel.shape[-2:]
    out = torch.zeros(Bn, C, h, w)
    kernel = kernel.view(Bn, G, K, K, h, w)
    for i in range(h):
        for j in range(w):
            win = xp[:, :, i * stride:i * stride + K, j * stride:j * stride + K]     # [B, C, K, K]
            win = win.reshape(Bn, G, gc, K, K)
            out[:, :, i, j] = (win * kernel[:, :, None, :, :, i, j]).sum((-1, -2)).reshape(Bn, C)
    return out


@pytest.mark.parametrize('stride', [1, 2])
def test_involution_matches_naive(stride):
    torch.manual_seed(0)
    inv = Involution2d(32, kernel_size=3, stride=stride, group_channels=16).eval()
    x = torch.randn(B, 32, 6, 6)
    with torch.no_grad():
        y = inv(x)
        kernel = inv.span(inv.reduce(inv.pool(x)))
    assert y.shape == (B, 32, 6 // stride, 6 // stride)
    torch.testing.assert_close(y, _naive_involution(x, kernel, 3, 2, stride, 1), rtol=1e-4, atol=1e-5)


def test_rednet26_matches_reference_size():
    # RedNet-26 as published: 9.23M parameters
    m = timm.create_model('rednet26', device='meta')
    assert abs(_count(m) - 9.23e6) / 9.23e6 < 0.005


# ------------------------------------------------------------------------------------------ CivT
@pytest.mark.parametrize('name', ['civt_digits_tiny', 'civt_fmnist_small', 'civt_tiny_patch16_224'])
def test_civt_heads(name):
    m, size = _make(name)
    assert m.prefix_token_names == ['cls', 'conv', 'inv'] and m.num_prefix_tokens == 3
    x = _x(size, chans=m.pretrained_cfg['input_size'][0])
    with torch.no_grad():
        feats = m.forward_features(x)
        heads = m.forward_heads(feats)
        assert list(heads) == ['cls', 'conv', 'inv']
        mean = (heads['cls'] + heads['conv'] + heads['inv']) / 3
        torch.testing.assert_close(m.forward_head(feats), mean)
        torch.testing.assert_close(m(x), mean)
        assert not torch.allclose(heads['cls'], heads['conv'])
        # the conv / inv tokens are the means of each stem's patch tokens
        xc, xi = m.patch_embed(x)
        tok = m._pos_embed((xc, xi))
        torch.testing.assert_close(tok[:, 1], xc.mean(1) + m.pos_embed[0, 1])
        torch.testing.assert_close(tok[:, 3:], xc + xi + m.pos_embed[:, 3:])
    m.train()
    out = m.forward_head(m.forward_features(x))
    assert out.shape == (B, m.num_classes)     # training also averages; trainers use forward_heads
    sum(v.sum() for v in m.forward_heads(m.forward_features(x)).values()).backward()
    assert m.patch_embed.conv.conv[0].weight.grad.abs().sum() > 0
    assert m.patch_embed.inv.conv[3].span.weight.grad.abs().sum() > 0
    assert m.head_inv.weight.grad.abs().sum() > 0


def test_civt_taps():
    from vitkd.taps import Tapped, TapRequest
    m = timm.create_model('civt_digits_tiny').eval()
    with Tapped(m, TapRequest(tokens={-1}, attn={0}, heads=True)) as tapped:
        with torch.no_grad():
            out = tapped(_x(16))
    assert set(out.heads) == {'cls', 'conv', 'inv'}
    assert set(out.prefix[-1]) == {'cls', 'conv', 'inv'}
    assert out.patches[-1].shape == (B, 16, 32) and out.grid(-1).shape == (B, 32, 4, 4)
    assert out.attn[0].shape == (B, 2, 19, 19)


def test_fmnist_rednet_maps_at_14_7_4_2_and_odd_maps_keep_unfolds_size():
    """The involution's kernel map (average-pooled input) has the unfold's size on odd maps too (7 px -> 4)."""
    m = timm.create_model('rednet_fmnist').eval()
    with torch.no_grad():
        _, inter = m.forward_intermediates(torch.randn(2, 1, 28, 28))
        assert [tuple(t.shape[-2:]) for t in inter] == [(14, 14), (14, 14), (7, 7), (4, 4), (2, 2)]
        assert m(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert m.pretrained_cfg['pool_size'] == (2, 2) and m.pretrained_cfg['input_size'] == (1, 28, 28)
