"""Small students and teachers for the embedded digits dataset (sklearn 8x8 digits upsampled to 16 px).

All ViTs use patch 4: 16 px -> 4x4 = 16 patch tokens, 32 px (``img_size=32``) -> 8x8 = 64 tokens.

Students (timm ``VisionTransformer``, cls token, token pooling):
    vit_digits_tiny    dim 32,  depth 4, heads 2
    vit_digits_small   dim 64,  depth 6, heads 4
    vit_digits_base    dim 128, depth 6, heads 4
Distilled students (timm ``VisionTransformerDistilled``, cls + dist tokens, two heads):
    deit_digits_tiny_distilled, deit_digits_small_distilled (same dims as the students above)
Teachers:
    vit_digits_large   dim 192, depth 6, heads 6 (ViT teacher)
    resnet_digits_s / resnet_digits_m  timm ``ResNet`` (BasicBlock) with a 3x3 stride-1 stem and no stem
        max-pool, so the stages run at strides 1/2/4/8 on the 16 px input (16x16 .. 2x2 maps).
The involution teacher ``rednet_digits`` lives in :mod:`vitkd.archs.involution`.
"""
from __future__ import annotations


import torch.nn as nn
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.deit import VisionTransformerDistilled
from timm.models.resnet import BasicBlock, ResNet
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

from ._common import digits_cfg

__all__ = ['DigitsResNet', 'DIGITS_VIT_ARGS', 'create_digits_vit', 'create_vit']

# dims shared with the MiniViT / CivT digits variants
DIGITS_VIT_ARGS = {
    'tiny': dict(patch_size=4, embed_dim=32, depth=4, num_heads=2, mlp_ratio=4.),
    'small': dict(patch_size=4, embed_dim=64, depth=6, num_heads=4, mlp_ratio=4.),
    'base': dict(patch_size=4, embed_dim=128, depth=6, num_heads=4, mlp_ratio=4.),
    'large': dict(patch_size=4, embed_dim=192, depth=6, num_heads=6, mlp_ratio=4.),
}


def create_vit(variant: str, args: dict, pretrained: bool = False, distilled: bool = False, **kwargs):
    """A registered timm ``VisionTransformer`` (``VisionTransformerDistilled`` if ``distilled``) built from a
    row of a dims table (``args``; ``kwargs`` win), as the digits and Fashion-MNIST families build theirs."""
    model_cls = VisionTransformerDistilled if distilled else VisionTransformer
    out_indices = kwargs.pop('out_indices', 3)
    return build_model_with_cfg(
        model_cls, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **dict(args, **kwargs),
    )


def create_digits_vit(variant: str, size: str, pretrained: bool = False, distilled: bool = False, **kwargs):
    return create_vit(variant, DIGITS_VIT_ARGS[size], pretrained, distilled, **kwargs)


class DigitsResNet(ResNet):
    """timm ResNet with a small-image stem: one 3x3 stride-1 conv (+BN+ReLU), no max-pool (the digits and
    Fashion-MNIST CNNs; at 28 px the stages run at 28/14/7/4).

    Everything else (stages, head, ``forward_intermediates``, ``feature_info`` module names) is timm's;
    only the stem conv is swapped and the reductions in ``feature_info`` are divided by 4.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        old = self.conv1
        self.conv1 = nn.Conv2d(old.in_channels, old.out_channels, kernel_size=3, stride=1, padding=1, bias=False,
                               device=old.weight.device, dtype=old.weight.dtype)
        nn.init.kaiming_normal_(self.conv1.weight, mode='fan_out', nonlinearity='relu')
        self.maxpool = nn.Identity()
        for info in self.feature_info:
            info['reduction'] = max(1, info['reduction'] // 4)


def _create_digits_resnet(variant: str, pretrained: bool = False, **kwargs) -> DigitsResNet:
    return build_model_with_cfg(DigitsResNet, variant, pretrained, **kwargs)


_VIT_STRIDE = DIGITS_VIT_ARGS['tiny']['patch_size']   # all digits ViTs use the same patch size
_RESNET_STRIDE = 8   # 3x3 stride-1 stem, no max-pool, stages at strides 1/2/4/8
default_cfgs = generate_default_cfgs({
    'vit_digits_tiny': digits_cfg(reduction=_VIT_STRIDE),
    'vit_digits_small': digits_cfg(reduction=_VIT_STRIDE),
    'vit_digits_base': digits_cfg(reduction=_VIT_STRIDE),
    'vit_digits_large': digits_cfg(reduction=_VIT_STRIDE),
    'deit_digits_tiny_distilled': digits_cfg(reduction=_VIT_STRIDE, classifier=('head', 'head_dist')),
    'deit_digits_small_distilled': digits_cfg(reduction=_VIT_STRIDE, classifier=('head', 'head_dist')),
    'resnet_digits_s': digits_cfg(reduction=_RESNET_STRIDE, first_conv='conv1', classifier='fc',
                                  fixed_input_size=False),
    'resnet_digits_m': digits_cfg(reduction=_RESNET_STRIDE, first_conv='conv1', classifier='fc',
                                  fixed_input_size=False),
})


@register_model
def vit_digits_tiny(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT student for digits: dim 32, depth 4, 2 heads, patch 4 (16 tokens at 16 px)."""
    return create_digits_vit('vit_digits_tiny', 'tiny', pretrained, **kwargs)


@register_model
def vit_digits_small(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT student for digits: dim 64, depth 6, 4 heads, patch 4."""
    return create_digits_vit('vit_digits_small', 'small', pretrained, **kwargs)


@register_model
def vit_digits_base(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT student for digits: dim 128, depth 6, 4 heads, patch 4."""
    return create_digits_vit('vit_digits_base', 'base', pretrained, **kwargs)


@register_model
def vit_digits_large(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT teacher for digits: dim 192, depth 6, 6 heads, patch 4."""
    return create_digits_vit('vit_digits_large', 'large', pretrained, **kwargs)


@register_model
def deit_digits_tiny_distilled(pretrained: bool = False, **kwargs) -> VisionTransformerDistilled:
    """DeiT (cls + dist token, two heads) with vit_digits_tiny dims."""
    return create_digits_vit('deit_digits_tiny_distilled', 'tiny', pretrained, distilled=True, **kwargs)


@register_model
def deit_digits_small_distilled(pretrained: bool = False, **kwargs) -> VisionTransformerDistilled:
    """DeiT (cls + dist token, two heads) with vit_digits_small dims."""
    return create_digits_vit('deit_digits_small_distilled', 'small', pretrained, distilled=True, **kwargs)


@register_model
def resnet_digits_s(pretrained: bool = False, **kwargs) -> DigitsResNet:
    """CNN teacher for digits: BasicBlock x (1,1,1,1), channels 16/32/64/128, 3x3 stride-1 stem (64 ch)."""
    args = dict(block=BasicBlock, layers=(1, 1, 1, 1), channels=(16, 32, 64, 128))
    return _create_digits_resnet('resnet_digits_s', pretrained, **dict(args, **kwargs))


@register_model
def resnet_digits_m(pretrained: bool = False, **kwargs) -> DigitsResNet:
    """CNN teacher for digits: BasicBlock x (2,2,2,2), channels 32/64/128/256, 3x3 stride-1 stem (64 ch)."""
    args = dict(block=BasicBlock, layers=(2, 2, 2, 2), channels=(32, 64, 128, 256))
    return _create_digits_resnet('resnet_digits_m', pretrained, **dict(args, **kwargs))
