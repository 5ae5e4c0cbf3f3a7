"""CivT: the student of Co-advise / CiT (Ren et al., "Co-advise: Cross Inductive Bias Distillation",
CVPR 2022; reference code OliverRensu/co-advise ``models.py``).

Mechanism (as the reference):

* two patch stems replace the linear patch embedding: a convolution stem (conv7x7/s2 64 ch + BN/ReLU,
  2 x [conv3x3 + BN/ReLU], then a stride-8 8x8 conv projection to ``embed_dim``) and an involution stem
  (RedNet-26's stem: conv3x3/s2 32 ch, involution 3x3, conv3x3 64 ch, each + BN/ReLU, then the same 8x8
  projection); both give the same 14x14 grid at 224 px (total stride 16);
* tokens = ``[cls, conv, inv, conv_patches + inv_patches] + pos_embed`` where ``conv`` / ``inv`` are the
  means of the conv-stem / involution-stem patch tokens and ``cls`` is the learned class token;
* three linear heads on the final normed cls / conv / inv tokens: ``head`` / ``head_conv`` / ``head_inv``;
  training distils the conv head from a CNN teacher and the inv head from an involution teacher,
  inference averages the three heads.

vitkd conventions: ``prefix_token_names = ['cls', 'conv', 'inv']``; ``forward_heads(feats)`` returns
``{'cls', 'conv', 'inv'}`` logits; ``forward_head`` ALWAYS returns their mean (train and eval; the
reference returns a tuple in training, here trainers call ``forward_heads``). ``patch_embed`` is a
:class:`CoAdviseEmbed` with timm's ``grid_size`` / ``dynamic_feat_size``; its forward returns the pair
``(conv_tokens, inv_tokens)`` ([B, N, D] each) which ``_pos_embed`` turns into the token sequence, so timm's
``forward_features`` / ``forward_intermediates`` are reused unchanged.

Registered: ``civt_digits_tiny`` / ``civt_digits_small`` (16 px, stems at stride 1 with a 4x4 projection:
16 patch tokens, same transformer dims as vit_digits_tiny / small), ``civt_fmnist_small`` (28 px, 1 channel,
stems' first conv at stride 2 with a 2x2 projection: 49 patch tokens, vit_fmnist_small dims) and
``civt_tiny_patch16_224`` (DeiT-Ti transformer with the reference stems).
"""
from __future__ import annotations

from functools import partial
from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import _assert, to_2tuple
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer

from ._common import digits_cfg, fmnist_cfg, get_device_dtype, imagenet_cfg
from .digits import DIGITS_VIT_ARGS
from .fmnist import FMNIST_VIT_ARGS
from .involution import Involution2d

__all__ = ['ConvStem', 'InvolutionStem', 'CoAdviseEmbed', 'CoAdviseViT']


def _cbr(cin: int, cout: int, k: int, s: int) -> list:
    return [nn.Conv2d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class ConvStem(nn.Module):
    """conv kxk/s (width) + 2 x conv3x3, each BN/ReLU; then a (proj x proj)/proj conv to embed_dim."""

    def __init__(self, in_chans: int, embed_dim: int, width: int = 64, first_kernel: int = 7,
                 first_stride: int = 2, proj: int = 8):
        super().__init__()
        self.conv = nn.Sequential(*_cbr(in_chans, width, first_kernel, first_stride),
                                  *_cbr(width, width, 3, 1), *_cbr(width, width, 3, 1))
        self.proj = nn.Conv2d(width, embed_dim, proj, proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.conv(x))


class InvolutionStem(nn.Module):
    """RedNet stem: conv3x3/s (width/2), involution 3x3, conv3x3 (width), each BN/ReLU; then the projection."""

    def __init__(self, in_chans: int, embed_dim: int, width: int = 64, first_stride: int = 2, proj: int = 8,
                 group_channels: int = 16):
        super().__init__()
        half = width // 2
        self.conv = nn.Sequential(
            *_cbr(in_chans, half, 3, first_stride),
            Involution2d(half, 3, 1, group_channels=min(group_channels, half)),
            nn.BatchNorm2d(half), nn.ReLU(inplace=True),
            *_cbr(half, width, 3, 1),
        )
        self.proj = nn.Conv2d(width, embed_dim, proj, proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.conv(x))


class CoAdviseEmbed(nn.Module):
    """The two CiT stems behind timm's PatchEmbed interface. ``forward`` returns ``(conv, inv)`` tokens."""

    def __init__(self, img_size: Union[int, Tuple[int, int]] = 224, patch_size: int = 16, in_chans: int = 3,
                 embed_dim: int = 768, stem_width: int = 64, stem_stride: int = 2, first_kernel: int = 7,
                 strict_img_size: bool = True, output_fmt: Optional[str] = None, dynamic_img_pad: bool = False,
                 bias: bool = True, device=None, dtype=None, **kwargs):
        super().__init__()
        assert output_fmt in (None, 'NLC'), 'CoAdviseEmbed: dynamic_img_size (NHWC output) is not supported'
        assert not dynamic_img_pad, 'CoAdviseEmbed: dynamic_img_pad is not supported'
        assert patch_size % stem_stride == 0, 'patch_size must be a multiple of stem_stride'
        self.img_size = to_2tuple(img_size)
        self.patch_size = to_2tuple(patch_size)
        self.grid_size = tuple(s // p for s, p in zip(self.img_size, self.patch_size))
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.strict_img_size = strict_img_size
        self.flatten = True
        self.output_fmt = 'NLC'
        proj = patch_size // stem_stride
        self.conv = ConvStem(in_chans, embed_dim, stem_width, first_kernel, stem_stride, proj)
        self.inv = InvolutionStem(in_chans, embed_dim, stem_width, stem_stride, proj)
        if device is not None or dtype is not None:
            self.to(device=device, dtype=dtype)

    def feat_ratio(self, as_scalar: bool = True):
        return max(self.patch_size) if as_scalar else self.patch_size

    def dynamic_feat_size(self, img_size: Tuple[int, int]) -> Tuple[int, int]:
        return img_size[0] // self.patch_size[0], img_size[1] // self.patch_size[1]

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.strict_img_size:
            _, _, H, W = x.shape
            _assert(H == self.img_size[0], f"Input height ({H}) doesn't match model ({self.img_size[0]}).")
            _assert(W == self.img_size[1], f"Input width ({W}) doesn't match model ({self.img_size[1]}).")
        x_conv = self.conv(x).flatten(2).transpose(1, 2)
        x_inv = self.inv(x).flatten(2).transpose(1, 2)
        return x_conv, x_inv


class CoAdviseViT(VisionTransformer):
    """ViT with cls + conv + inv prefix tokens and one head per token (CiT student)."""

    def __init__(self, *args, stem_width: int = 64, stem_stride: int = 2, first_kernel: int = 7, **kwargs):
        weight_init = kwargs.pop('weight_init', '')
        assert kwargs.get('reg_tokens', 0) == 0, 'CoAdviseViT: register tokens are not supported'
        assert kwargs.get('global_pool', 'token') == 'token', 'CoAdviseViT pools its three prefix tokens'
        assert not kwargs.get('dynamic_img_size', False), 'CoAdviseViT: dynamic_img_size is not supported'
        kwargs['embed_layer'] = partial(CoAdviseEmbed, stem_width=stem_width, stem_stride=stem_stride,
                                        first_kernel=first_kernel)
        super().__init__(*args, weight_init='skip', **kwargs)
        dd = {'device': kwargs.get('device', None), 'dtype': kwargs.get('dtype', None)}
        self.prefix_token_names = ['cls', 'conv', 'inv']
        self.num_prefix_tokens = 3
        embed_len = self.patch_embed.num_patches + (0 if self.no_embed_class else self.num_prefix_tokens)
        self.pos_embed = nn.Parameter(torch.empty(1, embed_len, self.embed_dim, **dd))
        self.head_conv = nn.Linear(self.embed_dim, self.num_classes, **dd) if self.num_classes > 0 else nn.Identity()
        self.head_inv = nn.Linear(self.embed_dim, self.num_classes, **dd) if self.num_classes > 0 else nn.Identity()
        self.weight_init_mode = 'reset' if weight_init == 'skip' else weight_init
        if weight_init != 'skip':
            self.init_weights(needs_reset=False)

    def init_weights(self, mode: str = '', needs_reset: bool = True) -> None:
        super().init_weights(mode=mode, needs_reset=needs_reset)
        # reference: kaiming-normal convs in both stems (BN at 1/0 by construction)
        for m in self.patch_embed.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False):
        return dict(stem=r'^cls_token|pos_embed|patch_embed', blocks=[(r'^blocks\.(\d+)', None), (r'^norm', (99999,))])

    @torch.jit.ignore
    def get_classifier(self):
        return self.head, self.head_conv, self.head_inv

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        assert global_pool in (None, '', 'token'), 'CoAdviseViT pools its three prefix tokens'
        dd = get_device_dtype(self)
        self.num_classes = num_classes
        for name in ('head', 'head_conv', 'head_inv'):
            head = nn.Linear(self.embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()
            head.train(self.training)
            setattr(self, name, head)

    def set_input_size(self, img_size=None, patch_size=None):
        raise NotImplementedError('CoAdviseViT: build a new model with img_size=... instead')

    def _pos_embed(self, x: Tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x_conv, x_inv = x
        B = x_conv.shape[0]
        prefix = torch.cat([self.cls_token.expand(B, -1, -1),
                            x_conv.mean(1, keepdim=True), x_inv.mean(1, keepdim=True)], dim=1)
        patches = x_conv + x_inv
        if self.no_embed_class:
            x = torch.cat([prefix, patches + self.pos_embed], dim=1)
        else:
            x = torch.cat([prefix, patches], dim=1) + self.pos_embed
        return self.pos_drop(x)

    def forward_heads(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Logits of each head from the final normed tokens [B, 3 + N, D]."""
        t = self.head_drop(self.fc_norm(x[:, :self.num_prefix_tokens]))
        return {'cls': self.head(t[:, 0]), 'conv': self.head_conv(t[:, 1]), 'inv': self.head_inv(t[:, 2])}

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if pre_logits:
            return self.head_drop(self.fc_norm(x[:, :self.num_prefix_tokens])).mean(1)
        heads = self.forward_heads(x)
        return (heads['cls'] + heads['conv'] + heads['inv']) / 3


def _create_civt(variant: str, pretrained: bool = False, **kwargs) -> CoAdviseViT:
    out_indices = kwargs.pop('out_indices', 3)
    return build_model_with_cfg(CoAdviseViT, variant, pretrained,
                                feature_cfg=dict(out_indices=out_indices, feature_cls='getter'), **kwargs)


_CIVT_HEADS = ('head', 'head_conv', 'head_inv')
_CIVT_STEMS = ('patch_embed.conv.conv.0', 'patch_embed.inv.conv.0')
default_cfgs = generate_default_cfgs({
    'civt_digits_tiny': digits_cfg(reduction=DIGITS_VIT_ARGS['tiny']['patch_size'], first_conv=_CIVT_STEMS,
                                   classifier=_CIVT_HEADS),
    'civt_digits_small': digits_cfg(reduction=DIGITS_VIT_ARGS['small']['patch_size'], first_conv=_CIVT_STEMS,
                                    classifier=_CIVT_HEADS),
    'civt_fmnist_small': fmnist_cfg(reduction=FMNIST_VIT_ARGS['small']['patch_size'], first_conv=_CIVT_STEMS,
                                    classifier=_CIVT_HEADS),
    'civt_tiny_patch16_224': imagenet_cfg(reduction=16, first_conv=_CIVT_STEMS, classifier=_CIVT_HEADS),
})

_DIGITS_STEM = dict(stem_width=32, stem_stride=1, first_kernel=3)
# 28 px: the stems' first 3x3 conv at stride 2 (14x14 maps, as the reference's stride-2 stems), a 2x2 projection
_FMNIST_STEM = dict(stem_width=32, stem_stride=2, first_kernel=3)


@register_model
def civt_digits_tiny(pretrained: bool = False, **kwargs) -> CoAdviseViT:
    """CivT for digits: vit_digits_tiny transformer (32, 4 blocks, 2 heads), 32-ch stems, 4x4 projection."""
    args = dict(DIGITS_VIT_ARGS['tiny'], **_DIGITS_STEM)
    return _create_civt('civt_digits_tiny', pretrained, **dict(args, **kwargs))


@register_model
def civt_digits_small(pretrained: bool = False, **kwargs) -> CoAdviseViT:
    """CivT for digits: vit_digits_small transformer (64, 6 blocks, 4 heads), 32-ch stems, 4x4 projection."""
    args = dict(DIGITS_VIT_ARGS['small'], **_DIGITS_STEM)
    return _create_civt('civt_digits_small', pretrained, **dict(args, **kwargs))


@register_model
def civt_fmnist_small(pretrained: bool = False, **kwargs) -> CoAdviseViT:
    """CivT for Fashion-MNIST: vit_fmnist_small transformer (48, 4 blocks, 3 heads, MLP x2), 32-ch stems with a
    stride-2 first conv and a 2x2 projection (7x7 patch tokens at 28 px, 1 channel)."""
    args = dict(FMNIST_VIT_ARGS['small'], **_FMNIST_STEM)
    return _create_civt('civt_fmnist_small', pretrained, **dict(args, **kwargs))


@register_model
def civt_tiny_patch16_224(pretrained: bool = False, **kwargs) -> CoAdviseViT:
    """CiT-Ti: DeiT-Ti transformer (192, 12 blocks, 3 heads) with the reference conv / involution stems."""
    args = dict(patch_size=16, embed_dim=192, depth=12, num_heads=3)
    return _create_civt('civt_tiny_patch16_224', pretrained, **dict(args, **kwargs))
