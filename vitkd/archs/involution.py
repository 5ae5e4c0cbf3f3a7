"""Involution and RedNet (Li et al., "Involution: Inverting the Inherence of Convolution for Visual
Recognition", CVPR 2021; reference code d-li14/involution, mmcls ``rednet.py``).

Involution (as the reference): the kernel is generated per output pixel from the input itself,
``kernel = span(reduce(x))`` with ``reduce`` a 1x1 conv (C -> C/4, BN, ReLU) and ``span`` a 1x1 conv
(C/4 -> K*K*G, bias), shared by the ``group_channels`` (16) channels of each of the G groups; the output is
``sum_k kernel[g, k] * unfold(x)[g, c, k]``. With stride s the kernel is generated from an s x s
average-pooled input and ``unfold`` uses stride s.

RedNet: ResNet bottlenecks whose 3x3 conv is a 7x7 involution; the stem is conv3x3/s2 (C/2) + BN + ReLU,
involution 3x3 + BN + ReLU, conv3x3 (C) + BN + ReLU, then a 3x3/s2 max-pool; last BN of each residual
branch zero-initialised. Registered:

* ``rednet_digits``: digits teacher (16 px), stride-1 stem without max-pool, stem 32 ch, bottleneck widths
  16/32/64/128 (outputs 64/128/256/512), blocks (1, 1, 2, 1): stage maps at strides 1/1/2/4/8.
* ``rednet_fmnist``: Fashion-MNIST (28 px, one channel): the same blocks behind a stride-2 stem.
* ``rednet26``: the reference RedNet-26 (blocks (1, 2, 4, 1), ImageNet stem), ~9.2M params.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, create_classifier
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

from ._common import digits_cfg, fmnist_cfg, get_device_dtype, imagenet_cfg

__all__ = ['Involution2d', 'RedBottleneck', 'RedNet']


class Involution2d(nn.Module):
    """RedNet involution. ``channels`` must be a multiple of ``group_channels`` (groups = C / group_channels)."""

    def __init__(self, channels: int, kernel_size: int = 7, stride: int = 1, group_channels: int = 16,
                 reduction_ratio: int = 4, dilation: int = 1, norm_layer=nn.BatchNorm2d, act_layer=nn.ReLU):
        super().__init__()
        if channels % group_channels:
            raise ValueError(f'Involution2d: channels {channels} not a multiple of group_channels {group_channels}')
        self.channels = channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.dilation = dilation
        self.group_channels = group_channels
        self.groups = channels // group_channels
        mid = max(1, channels // reduction_ratio)
        # ceil_mode: the kernel map has unfold's output size also on odd maps (7 px -> 4 at stride 2)
        self.pool = nn.AvgPool2d(stride, stride, ceil_mode=True) if stride > 1 else nn.Identity()
        self.reduce = nn.Sequential(
            nn.Conv2d(channels, mid, 1, bias=False),
            norm_layer(mid),
            act_layer(inplace=True),
        )
        self.span = nn.Conv2d(mid, kernel_size * kernel_size * self.groups, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        K, G = self.kernel_size, self.groups
        kernel = self.span(self.reduce(self.pool(x)))           # [B, G*K*K, h, w]
        h, w = kernel.shape[-2:]
        kernel = kernel.view(B, G, K * K, h, w)
        patches = F.unfold(x, K, dilation=self.dilation, padding=self.dilation * (K - 1) // 2, stride=self.stride)
        patches = patches.view(B, G, self.group_channels, K * K, h, w)
        # the per-pixel kernel applied as a contraction over the K*K window: MAC counters see it (an
        # elementwise multiply + sum would be skipped as elementwise), and it runs ~3x faster on CPU
        return torch.einsum('bgckhw,bgkhw->bgchw', patches, kernel).reshape(B, C, h, w)

    def extra_repr(self) -> str:
        return f'{self.channels}, kernel_size={self.kernel_size}, stride={self.stride}, groups={self.groups}'


class RedBottleneck(nn.Module):
    """1x1 conv -> BN/ReLU -> KxK involution (stride) -> BN/ReLU -> 1x1 conv -> BN (+ shortcut) -> ReLU."""
    expansion = 4

    def __init__(self, in_chs: int, mid_chs: int, out_chs: int, stride: int = 1, kernel_size: int = 7,
                 group_channels: int = 16, drop_path: float = 0.):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, mid_chs, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_chs)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = Involution2d(mid_chs, kernel_size, stride, group_channels=group_channels)
        self.bn2 = nn.BatchNorm2d(mid_chs)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(mid_chs, out_chs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.act3 = nn.ReLU(inplace=True)
        if stride != 1 or in_chs != out_chs:
            self.downsample = nn.Sequential(nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out_chs))
        else:
            self.downsample = None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.bn3(self.conv3(x))
        return self.act3(self.drop_path(x) + shortcut)


class RedNet(nn.Module):
    """RedNet with timm's classifier conventions (``forward_features`` / ``forward_head`` /
    ``forward_intermediates`` / ``feature_info`` / ``reset_classifier``)."""

    def __init__(
            self,
            layers: Sequence[int] = (1, 2, 4, 1),
            num_classes: int = 1000,
            in_chans: int = 3,
            stem_width: int = 64,
            base_width: int = 64,
            stem_stride: int = 2,
            stem_pool: bool = True,
            kernel_size: int = 7,
            stem_kernel_size: int = 3,
            group_channels: int = 16,
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            zero_init_last: bool = True,
            device=None,
            dtype=None,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        half = stem_width // 2
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, half, 3, stride=stem_stride, padding=1, bias=False),
            nn.BatchNorm2d(half), nn.ReLU(inplace=True),
            Involution2d(half, stem_kernel_size, 1, group_channels=min(group_channels, half)),
            nn.BatchNorm2d(half), nn.ReLU(inplace=True),
            nn.Conv2d(half, stem_width, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(stem_width), nn.ReLU(inplace=True),
        )
        self.stem_pool = nn.MaxPool2d(3, 2, 1) if stem_pool else nn.Identity()
        self.feature_info = [dict(num_chs=stem_width, reduction=stem_stride, module='stem')]
        reduction = stem_stride * (2 if stem_pool else 1)
        in_chs = stem_width
        total = sum(layers)
        dpr = [drop_path_rate * i / max(1, total - 1) for i in range(total)]
        bi = 0
        self.layer_names = []
        for si, n in enumerate(layers):
            mid = base_width * 2 ** si
            out = mid * RedBottleneck.expansion
            stride = 1 if si == 0 else 2
            reduction *= stride
            blocks = []
            for j in range(n):
                blocks.append(RedBottleneck(in_chs, mid, out, stride if j == 0 else 1, kernel_size,
                                            group_channels, dpr[bi]))
                in_chs = out
                bi += 1
            name = f'layer{si + 1}'
            self.add_module(name, nn.Sequential(*blocks))
            self.layer_names.append(name)
            self.feature_info.append(dict(num_chs=out, reduction=reduction, module=name))
        self.num_features = self.head_hidden_size = in_chs
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool)
        self.init_weights(zero_init_last)
        if device is not None or dtype is not None:
            self.to(device=device, dtype=dtype)

    @torch.jit.ignore
    def init_weights(self, zero_init_last: bool = True) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_last:
            for m in self.modules():
                if isinstance(m, RedBottleneck):
                    m.zero_init_last()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False):
        return dict(stem=r'^stem', blocks=r'^layer(\d+)' if coarse else r'^layer(\d+)\.(\d+)')

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        dd = get_device_dtype(self)
        self.num_classes = num_classes
        if global_pool is None:
            global_pool = self.global_pool.pool_type
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool, **dd)
        self.global_pool.train(self.training)
        self.fc.train(self.training)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """timm semantics: feature 0 is the stem output, 1..4 the stages."""
        assert output_fmt == 'NCHW', 'Output format must be NCHW.'
        take_indices, max_index = feature_take_indices(len(self.layer_names) + 1, indices)
        intermediates = []
        x = self.stem(x)
        if 0 in take_indices:
            intermediates.append(x)
        x = self.stem_pool(x)
        names = self.layer_names[:max_index] if stop_early else self.layer_names
        for i, n in enumerate(names, start=1):
            x = getattr(self, n)(x)
            if i in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_pool(self.stem(x))
        for n in self.layer_names:
            x = getattr(self, n)(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = F.dropout(x, p=float(self.drop_rate), training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _create_rednet(variant: str, pretrained: bool = False, **kwargs) -> RedNet:
    return build_model_with_cfg(RedNet, variant, pretrained, **kwargs)


default_cfgs = generate_default_cfgs({
    'rednet_digits': digits_cfg(reduction=8, first_conv='stem.0', classifier='fc', fixed_input_size=False),
    'rednet_fmnist': fmnist_cfg(reduction=16, padded=True, first_conv='stem.0', classifier='fc', fixed_input_size=False),
    'rednet26': imagenet_cfg(reduction=32, first_conv='stem.0', classifier='fc', fixed_input_size=False),
})


@register_model
def rednet_digits(pretrained: bool = False, **kwargs) -> RedNet:
    """Involution teacher for digits (16 px): stride-1 stem, no max-pool, widths 16/32/64/128 x4."""
    args = dict(layers=(1, 1, 2, 1), stem_width=32, base_width=16, stem_stride=1, stem_pool=False)
    return _create_rednet('rednet_digits', pretrained, **dict(args, **kwargs))


@register_model
def rednet_fmnist(pretrained: bool = False, **kwargs) -> RedNet:
    """Involution teacher for Fashion-MNIST (28 px, one channel): rednet_digits' blocks behind a stride-2 stem (maps
    at 14/14/7/4/2 px; at stride 1 involution's unfold made it 8x slower than resnet_fmnist_s on CPU)."""
    args = dict(layers=(1, 1, 2, 1), stem_width=32, base_width=16, stem_stride=2, stem_pool=False)
    return _create_rednet('rednet_fmnist', pretrained, **dict(args, **kwargs))


@register_model
def rednet26(pretrained: bool = False, **kwargs) -> RedNet:
    """RedNet-26 (reference arch: Bottleneck x (1, 2, 4, 1), 7x7 involutions, ImageNet stem)."""
    args = dict(layers=(1, 2, 4, 1), stem_width=64, base_width=64)
    return _create_rednet('rednet26', pretrained, **dict(args, **kwargs))
