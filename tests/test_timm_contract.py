"""timm's model contract for every architecture vitkd registers, as timm's own tests/test_models.py states
it (test_model_default_cfgs[_non_std], test_model_backward, test_model_forward_intermediates[_features],
test_model_forward_features, test_model_forward_fx, test_model_backward_fx). TorchScript is out of scope.

The models are enumerated from timm's registry (every entrypoint defined under ``vitkd.archs``), so a new
architecture is checked as soon as it is registered; ``test_registry_is_complete`` makes sure the
enumeration misses none of the ``@register_model`` functions in vitkd/archs/*.py.

Which of timm's two cfg tests applies is decided by the model, not its name: a model whose
``forward_features`` returns a token sequence [B, N, C] gets timm's "non-standard" (ViT) checks, one that
returns a map [B, C, H, W] the standard (CNN) ones. Models are exercised small: fixed-size 224 px models
are built for 32 px with 3 blocks, other models get at most 64 px; only the cfg's pool_size is checked
at the full default size, on the meta device (shapes only).
"""
import ast
import copy
import functools
import math
from pathlib import Path

import pytest
import timm
import torch
from timm.models import FeatureInfo, get_graph_node_names, get_notrace_functions, get_notrace_modules, model_entrypoint
from torchvision.models.feature_extraction import create_feature_extractor

import vitkd.archs  # registers the architectures (``import vitkd`` alone may not)

torch.set_num_threads(1)   # the test machine's cores are shared

ARCHS_PKG = vitkd.archs.__name__
ARCHS_DIR = Path(vitkd.archs.__file__).parent
SMALL_FIXED = 32     # img_size for fixed-size models whose default input is larger
SMALL_DEPTH = 3      # depth for those (3 feature levels; MiniViT share=2: a full and a short group)
MAX_FLEX = 64        # input side for models that take any size


def _registered_models():
    """Every timm model whose entrypoint function lives in vitkd.archs."""
    return sorted(n for n in timm.list_models() if model_entrypoint(n).__module__.startswith(ARCHS_PKG + '.'))


def _register_model_defs():
    """Names of the functions decorated with ``@register_model`` in vitkd/archs/*.py, read from source."""
    names = set()
    for path in sorted(ARCHS_DIR.glob('*.py')):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and any(
                    getattr(d, 'id', getattr(d, 'attr', None)) == 'register_model' for d in node.decorator_list):
                names.add(node.name)
    return names


MODELS = _registered_models()

# The five data-pipeline values of every model as they were before the cfgs were completed: they must
# never change (the data pipelines read them; every recorded accuracy depends on them). A new model
# must be added here.
_DIGITS = dict(input_size=(3, 16, 16), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation='bilinear',
               crop_pct=1.0)
_IMAGENET = dict(input_size=(3, 224, 224), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                 interpolation='bicubic', crop_pct=0.875)
_FMNIST = dict(input_size=(1, 28, 28), mean=(0.2860,), std=(0.3530,), interpolation='bilinear', crop_pct=1.0)
DATA_CFG = {
    'vit_digits_tiny': _DIGITS, 'vit_digits_small': _DIGITS, 'vit_digits_base': _DIGITS, 'vit_digits_small_gpsa': _DIGITS,
    'vit_digits_large': _DIGITS, 'deit_digits_tiny_distilled': _DIGITS, 'deit_digits_small_distilled': _DIGITS,
    'resnet_digits_s': _DIGITS, 'resnet_digits_m': _DIGITS,
    'minivit_deit_tiny_patch16_224': _IMAGENET, 'minivit_deit_small_patch16_224': _IMAGENET,
    'minivit_deit_base_patch16_224': _IMAGENET, 'minivit_digits_small': _DIGITS, 'minivit_digits_base': _DIGITS,
    'rednet_digits': _DIGITS, 'rednet26': _IMAGENET,
    'civt_digits_tiny': _DIGITS, 'civt_digits_small': _DIGITS, 'civt_tiny_patch16_224': _IMAGENET,
    'vit_fmnist_tiny': _FMNIST, 'vit_fmnist_small': _FMNIST, 'vit_fmnist_base': _FMNIST, 'vit_fmnist_large': _FMNIST,
    'deit_fmnist_small_distilled': _FMNIST, 'minivit_fmnist_small': _FMNIST, 'civt_fmnist_small': _FMNIST,
    'resnet_fmnist_s': _FMNIST, 'resnet_fmnist_m': _FMNIST, 'resnet_fmnist_l': _FMNIST, 'rednet_fmnist': _FMNIST,
}


def _cfg(name):
    return timm.models.get_pretrained_cfg(name).to_dict()


def _small(name):
    """(create_model kwargs, input side) keeping the model and its input small."""
    cfg = _cfg(name)
    side = max(cfg['input_size'][1:])
    if cfg['fixed_input_size']:
        if side > SMALL_FIXED:
            return dict(img_size=SMALL_FIXED, depth=SMALL_DEPTH), SMALL_FIXED
        return {}, side
    return {}, min(side, MAX_FLEX)


@functools.lru_cache(maxsize=None)
def _built(name, kwargs_items):
    small, side = _small(name)
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **dict(small, **dict(kwargs_items))), side


@functools.lru_cache(maxsize=None)
def _timm_vit_traces() -> bool:
    ref = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=1, num_classes=3)
    try:
        get_graph_node_names(ref)
    except TypeError:
        return False
    return True


def _create(name, **kwargs):
    """A fresh copy of the small model (each configuration is built once per session: building and
    initialising the 224 px ViTs is most of their cost)."""
    model, side = _built(name, tuple(sorted(kwargs.items())))
    return copy.deepcopy(model), side


def _x(name, side, batch=1, seed=1):
    """An input for the model: its cfg's channels (1 for the Fashion-MNIST models), ``side`` px square."""
    chans = _cfg(name)['input_size'][0]
    return torch.randn(batch, chans, side, side, generator=torch.Generator().manual_seed(seed))


def _channel_dim(t):
    """timm's rule: token sequences [B, N, C] carry channels last, maps [B, C, H, W] at dim 1."""
    return -1 if t.ndim == 3 else 1


# ------------------------------------------------------------------------------------------ registry
def test_registry_is_complete():
    defined = _register_model_defs()
    assert len(MODELS) >= len(defined) >= 18
    assert set(MODELS) == defined
    assert set(MODELS) == set(vitkd.archs.MODEL_NAMES)


# ------------------------------------------------------------------------------------------ cfgs
@pytest.mark.parametrize('name', MODELS)
def test_pretrained_cfg_complete(name):
    cfg = _cfg(name)
    for key in ('input_size', 'pool_size', 'crop_pct', 'interpolation', 'mean', 'std', 'first_conv',
                'classifier', 'num_classes', 'fixed_input_size'):
        assert cfg.get(key) is not None, f'{name}: pretrained cfg lacks {key}'
    assert len(cfg['input_size']) == 3 and len(cfg['mean']) == len(cfg['std']) == cfg['input_size'][0]
    assert len(cfg['pool_size']) == 2 and all(isinstance(p, int) and p > 0 for p in cfg['pool_size'])
    assert 0 < cfg['crop_pct'] <= 1 and isinstance(cfg['fixed_input_size'], bool) and cfg['num_classes'] > 0
    assert cfg['url'] == '' and cfg['architecture'] == name
    assert name in DATA_CFG, f'{name}: record its input_size/mean/std/interpolation/crop_pct in DATA_CFG'
    assert {k: cfg[k] for k in DATA_CFG[name]} == DATA_CFG[name], f'{name}: a data-pipeline cfg value changed'


@pytest.mark.parametrize('name', MODELS)
def test_pool_size_and_layer_names_full_size(name):
    """At the cfg's own input size (shapes only, on the meta device): the final feature map is pool_size
    (for token models: the patch grid their intermediates are reshaped to), first_conv / classifier name
    parameters."""
    cfg = _cfg(name)
    with torch.device('meta'):
        model = timm.create_model(name, pretrained=False).eval()
        x = torch.empty(1, *cfg['input_size'])
        feats = model.forward_features(x)
        if feats.ndim == 4:
            spatial = feats.shape[-2:]
        else:
            spatial = model.forward_intermediates(x, indices=1, intermediates_only=True)[-1].shape[-2:]
    assert tuple(spatial) == tuple(cfg['pool_size'])
    keys = model.state_dict().keys()
    for group in ('first_conv', 'classifier'):
        names = cfg[group] if isinstance(cfg[group], (tuple, list)) else (cfg[group],)
        for layer in names:
            assert layer + '.weight' in keys, f'{name}: {group} {layer} is not a parameterised layer'


# ------------------------------------------------------------------------------------------ heads
@pytest.mark.parametrize('name', MODELS)
def test_forward_features_and_head(name):
    model, side = _create(name)
    model.eval()
    x = _x(name, side)
    assert model.num_classes >= 0 and model.num_features > 0 and model.head_hidden_size > 0
    with torch.no_grad():
        y = model(x)
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        torch.testing.assert_close(model.forward_head(feats), y)
    assert y.shape == (1, model.num_classes) and torch.isfinite(y).all()
    assert feats.shape[_channel_dim(feats)] == model.num_features
    assert pre.shape == (1, model.head_hidden_size)

    # gradient checkpointing, where supported, changes nothing
    try:
        model.set_grad_checkpointing()
    except Exception:
        pass
    else:
        with torch.no_grad():
            torch.testing.assert_close(model(x), y, rtol=1e-4, atol=1e-5)
        model.set_grad_checkpointing(False)

    # without a classifier the model returns its pooled pre-logits features
    model.reset_classifier(0)
    assert model.num_classes == 0
    with torch.no_grad():
        pooled = model(x)
    assert pooled.shape == pre.shape
    torch.testing.assert_close(pooled, pre)

    if feats.ndim == 4:
        # and without pooling, the unpooled feature map (classifier reset, or built that way)
        model.reset_classifier(0, '')
        with torch.no_grad():
            assert model(x).shape == feats.shape
        bare, _ = _create(name, num_classes=0, global_pool='')
        with torch.no_grad():
            assert bare.eval()(x).shape == feats.shape
    else:
        bare, _ = _create(name, num_classes=0)
        with torch.no_grad():
            out = bare.eval()(x)
        assert out.shape == (1, bare.num_features)


@pytest.mark.parametrize('name', MODELS)
def test_backward(name):
    model, side = _create(name, num_classes=42)
    model.train()
    out = model(_x(name, side, batch=2))
    out.mean().backward()
    assert out.shape == (2, 42) and not torch.isnan(out).any()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f'{name}: no gradient for {missing}'


# ------------------------------------------------------------------------------------------ features
def _check_feature_maps(outputs, info: FeatureInfo, side):
    assert len(outputs) == len(info.channels())
    for c, r, o in zip(info.channels(), info.reduction(), outputs):
        assert o.shape[0] == 1 and not torch.isnan(o).any()
        if o.ndim == 4:
            assert o.shape[1] == c
            assert o.shape[2] <= math.ceil(side / r) + 1 and o.shape[3] <= math.ceil(side / r) + 1
        else:
            assert o.shape[-1] == c


@pytest.mark.parametrize('name', MODELS)
def test_forward_intermediates(name):
    model, side = _create(name)
    model.eval()
    info = FeatureInfo(model.feature_info, len(model.feature_info))
    assert len(info.channels()) >= 3
    x = _x(name, side)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x, output_fmt='NCHW')
        assert all(t.ndim == 4 for t in inter)
        _check_feature_maps(inter, info, side)
        torch.testing.assert_close(final, model.forward_features(x))


@pytest.mark.parametrize('feature_cls', [None, 'getter'])
@pytest.mark.parametrize('name', MODELS)
def test_features_only(name, feature_cls):
    kwargs = dict(features_only=True) if feature_cls is None else dict(features_only=True, feature_cls=feature_cls)
    model, side = _create(name, **kwargs)
    model.eval()
    assert len(model.feature_info.channels()) >= 3   # timm's minimum of default feature levels
    with torch.no_grad():
        _check_feature_maps(model(_x(name, side)), model.feature_info, side)


# ------------------------------------------------------------------------------------------ torch.fx
@pytest.mark.parametrize('name', MODELS)
def test_fx_forward_backward(name):
    """Symbolic tracing with timm's no-trace modules / functions, as timm's FX tests: torchvision's feature
    extractor returning the model output, one graph per mode. Eval graph: the same output bit for bit (also
    when traced by plain ``torch.fx.symbolic_trace``); train graph: gradients reach every parameter.
    The contract is timm's: where timm's own ViT does not trace (torch 2.6 with timm >= 1.0.26 passes
    ``is_causal`` on as a Proxy), vitkd's models are not asked to."""
    if not _timm_vit_traces():
        pytest.skip("timm's own vit_tiny_patch16_224 does not trace with torch.fx in this environment")
    model, side = _create(name, num_classes=42)
    train_nodes, eval_nodes = get_graph_node_names(model)   # timm's wrapper: its tracer settings
    fx_model = create_feature_extractor(
        model, train_return_nodes=train_nodes[-1:], eval_return_nodes=eval_nodes[-1:],
        tracer_kwargs=dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions()))

    model.eval()
    fx_model.eval()
    x = _x(name, side)
    with torch.inference_mode():
        y = model(x)
        (fx_y,) = fx_model(x).values()
        assert torch.equal(fx_y, y)
        # no data-dependent Python control flow outside fx.wrap'ed leaves: plain torch.fx traces it too (a model
        # that holds a module timm itself registers as no-trace, e.g. ConViT's GPSA, is traced with it as a leaf)
        notrace = tuple(m for m in get_notrace_modules() if isinstance(m, type))
        if any(isinstance(m, notrace) for m in model.modules()):
            class Leaves(torch.fx.Tracer):
                def is_leaf_module(self, m, qualname):
                    return isinstance(m, notrace) or super().is_leaf_module(m, qualname)
            traced = torch.fx.GraphModule(model, Leaves().trace(model))
        else:
            traced = torch.fx.symbolic_trace(model)
        assert torch.equal(traced(x), y)

    fx_model.train()
    (out,) = fx_model(_x(name, side, batch=2)).values()
    out.mean().backward()
    assert out.shape == (2, 42) and not torch.isnan(out).any()
    missing = [n for n, p in fx_model.named_parameters() if p.grad is None]
    assert not missing, f'{name}: no gradient for {missing}'
    assert sum(p.numel() for p in fx_model.parameters()) == sum(p.numel() for p in model.parameters())
