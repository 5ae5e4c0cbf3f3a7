"""Students and teachers sized for Fashion-MNIST at its native size: 28x28, one grey channel (``in_chans=1``,
from the cfg's input_size), 10 classes, Fashion-MNIST's mean/std (:func:`._common.fmnist_cfg`).

All ViTs use patch 4: 28 px -> a 7x7 grid = 49 patch tokens (+ cls), head dim 16, MLP x2. MACs per image
(``vitkd profile NAME --no-throughput --json``: attention counted, norms excluded):

Students (timm ``VisionTransformer``, cls token, token pooling):
    vit_fmnist_tiny    dim 32, depth 3, heads 2   ~1.7 M MACs
    vit_fmnist_small   dim 48, depth 4, heads 3   ~4.7 M MACs  (the main student)
    vit_fmnist_base    dim 64, depth 6, heads 4   ~11.8 M MACs (the published patch-4 / dim-64 / depth-6 anchor)
The small student's dims are shared (:data:`FMNIST_VIT_ARGS`) with
    deit_fmnist_small_distilled  timm ``VisionTransformerDistilled`` (cls + dist tokens, two heads)
    minivit_fmnist_small         MiniViT, share=2 (:mod:`vitkd.archs.minivit`)
    civt_fmnist_small            CivT / Co-advise, conv + involution stems (:mod:`vitkd.archs.civt`)
Teachers:
    vit_fmnist_large   dim 192, depth 6, heads 6 (ViT teacher)
    resnet_fmnist_s / _m / _l   :class:`.digits.DigitsResNet` (timm ``ResNet``, BasicBlock, 3x3 stride-1 stem of
        64 channels, no stem max-pool): stages at strides 1/2/4/8, i.e. 28/14/7/4 px maps on the 28 px input.
"""
from __future__ import annotations

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.deit import VisionTransformerDistilled
from timm.models.resnet import BasicBlock
from timm.models.vision_transformer import VisionTransformer

from ._common import fmnist_cfg
from .digits import DigitsResNet, create_vit

__all__ = ['FMNIST_VIT_ARGS', 'FMNIST_RESNET_ARGS']

# dims shared with the MiniViT / CivT Fashion-MNIST variants
FMNIST_VIT_ARGS = {
    'tiny': dict(patch_size=4, embed_dim=32, depth=3, num_heads=2, mlp_ratio=2.),
    'small': dict(patch_size=4, embed_dim=48, depth=4, num_heads=3, mlp_ratio=2.),
    'base': dict(patch_size=4, embed_dim=64, depth=6, num_heads=4, mlp_ratio=2.),
    'large': dict(patch_size=4, embed_dim=192, depth=6, num_heads=6, mlp_ratio=2.),
}

# CNN teachers: BasicBlock ResNets of three capacities (all with DigitsResNet's 64-channel 3x3 stride-1 stem)
FMNIST_RESNET_ARGS = {
    's': dict(block=BasicBlock, layers=(1, 1, 1, 1), channels=(16, 32, 64, 128)),
    'm': dict(block=BasicBlock, layers=(1, 1, 1, 1), channels=(32, 64, 128, 256)),
    'l': dict(block=BasicBlock, layers=(2, 2, 2, 2), channels=(32, 64, 128, 256)),
}

FMNIST_VIT_STRIDE = FMNIST_VIT_ARGS['small']['patch_size']   # all Fashion-MNIST ViTs use the same patch size
_RESNET_STRIDE = 8   # 3x3 stride-1 stem, no max-pool, stages at strides 1/2/4/8 (padded: 28 -> 4x4 final map)


def _resnet_cfg():
    return fmnist_cfg(reduction=_RESNET_STRIDE, padded=True, first_conv='conv1', classifier='fc',
                      fixed_input_size=False)


default_cfgs = generate_default_cfgs({
    'vit_fmnist_tiny': fmnist_cfg(reduction=FMNIST_VIT_STRIDE),
    'vit_fmnist_small': fmnist_cfg(reduction=FMNIST_VIT_STRIDE),
    'vit_fmnist_base': fmnist_cfg(reduction=FMNIST_VIT_STRIDE),
    'vit_fmnist_large': fmnist_cfg(reduction=FMNIST_VIT_STRIDE),
    'deit_fmnist_small_distilled': fmnist_cfg(reduction=FMNIST_VIT_STRIDE, classifier=('head', 'head_dist')),
    'resnet_fmnist_s': _resnet_cfg(),
    'resnet_fmnist_m': _resnet_cfg(),
    'resnet_fmnist_l': _resnet_cfg(),
})


def _create_fmnist_resnet(variant: str, size: str, pretrained: bool = False, **kwargs) -> DigitsResNet:
    return build_model_with_cfg(DigitsResNet, variant, pretrained, **dict(FMNIST_RESNET_ARGS[size], **kwargs))


@register_model
def vit_fmnist_tiny(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT student for Fashion-MNIST: dim 32, depth 3, 2 heads, MLP x2, patch 4 (7x7 tokens at 28 px)."""
    return create_vit('vit_fmnist_tiny', FMNIST_VIT_ARGS['tiny'], pretrained, **kwargs)


@register_model
def vit_fmnist_small(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT student for Fashion-MNIST (the main one): dim 48, depth 4, 3 heads, MLP x2, patch 4."""
    return create_vit('vit_fmnist_small', FMNIST_VIT_ARGS['small'], pretrained, **kwargs)


@register_model
def vit_fmnist_base(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT student for Fashion-MNIST: dim 64, depth 6, 4 heads, MLP x2, patch 4."""
    return create_vit('vit_fmnist_base', FMNIST_VIT_ARGS['base'], pretrained, **kwargs)


@register_model
def vit_fmnist_large(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT teacher for Fashion-MNIST: dim 192, depth 6, 6 heads, MLP x2, patch 4."""
    return create_vit('vit_fmnist_large', FMNIST_VIT_ARGS['large'], pretrained, **kwargs)


@register_model
def deit_fmnist_small_distilled(pretrained: bool = False, **kwargs) -> VisionTransformerDistilled:
    """DeiT (cls + dist token, two heads) with vit_fmnist_small dims."""
    return create_vit('deit_fmnist_small_distilled', FMNIST_VIT_ARGS['small'], pretrained, distilled=True, **kwargs)


@register_model
def resnet_fmnist_s(pretrained: bool = False, **kwargs) -> DigitsResNet:
    """CNN teacher for Fashion-MNIST: BasicBlock x (1,1,1,1), channels 16/32/64/128, 3x3 stride-1 stem (64 ch)."""
    return _create_fmnist_resnet('resnet_fmnist_s', 's', pretrained, **kwargs)


@register_model
def resnet_fmnist_m(pretrained: bool = False, **kwargs) -> DigitsResNet:
    """CNN teacher for Fashion-MNIST: BasicBlock x (1,1,1,1), channels 32/64/128/256, 3x3 stride-1 stem (64 ch)."""
    return _create_fmnist_resnet('resnet_fmnist_m', 'm', pretrained, **kwargs)


@register_model
def resnet_fmnist_l(pretrained: bool = False, **kwargs) -> DigitsResNet:
    """CNN teacher for Fashion-MNIST: BasicBlock x (2,2,2,2), channels 32/64/128/256, 3x3 stride-1 stem (64 ch)."""
    return _create_fmnist_resnet('resnet_fmnist_l', 'l', pretrained, **kwargs)
