"""Shared helpers for vitkd's registered architectures: default pretrained cfgs (no weight urls)."""
from __future__ import annotations

from typing import Any, Dict

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

__all__ = ["DIGITS_MEAN", "DIGITS_STD", "DIGITS_NUM_CLASSES", "digits_cfg", "imagenet_cfg"]

DIGITS_MEAN = (0.5, 0.5, 0.5)
DIGITS_STD = (0.5, 0.5, 0.5)
DIGITS_NUM_CLASSES = 10


def digits_cfg(first_conv: Any = 'patch_embed.proj', classifier: Any = 'head', fixed_input_size: bool = True,
               **kwargs) -> Dict[str, Any]:
    """Default cfg for the embedded digits dataset: sklearn 8x8 digits upsampled to 16 px, 3 channels
    (grey repeated), mean/std 0.5, 10 classes. No weights are ever downloaded (url empty)."""
    return {
        'url': '',
        'num_classes': DIGITS_NUM_CLASSES,
        'input_size': (3, 16, 16),
        'pool_size': None,
        'crop_pct': 1.0,
        'interpolation': 'bilinear',
        'fixed_input_size': fixed_input_size,
        'mean': DIGITS_MEAN,
        'std': DIGITS_STD,
        'first_conv': first_conv,
        'classifier': classifier,
        'license': 'apache-2.0',
        **kwargs,
    }


def imagenet_cfg(first_conv: Any = 'patch_embed.proj', classifier: Any = 'head', fixed_input_size: bool = True,
                 **kwargs) -> Dict[str, Any]:
    """Default cfg for the 224 px ImageNet-sized variants (DeiT-style normalisation)."""
    return {
        'url': '',
        'num_classes': 1000,
        'input_size': (3, 224, 224),
        'pool_size': None,
        'crop_pct': 0.875,
        'interpolation': 'bicubic',
        'fixed_input_size': fixed_input_size,
        'mean': IMAGENET_DEFAULT_MEAN,
        'std': IMAGENET_DEFAULT_STD,
        'first_conv': first_conv,
        'classifier': classifier,
        'license': 'apache-2.0',
        **kwargs,
    }
