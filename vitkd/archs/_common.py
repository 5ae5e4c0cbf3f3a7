"""Shared helpers for vitkd's registered architectures: default pretrained cfgs (no weight urls) and the
factory-kwargs helper the layers use."""
from __future__ import annotations

from typing import Any, Dict, Tuple

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

__all__ = ["DIGITS_MEAN", "DIGITS_STD", "DIGITS_NUM_CLASSES", "digits_cfg", "FMNIST_MEAN", "FMNIST_STD",
           "FMNIST_NUM_CLASSES", "fmnist_cfg", "imagenet_cfg", "get_device_dtype"]

def get_device_dtype(module, device=None, dtype=None):
    """Factory kwargs (device, dtype) from a module's first parameter; explicit values win."""
    parameter = next(module.parameters(), None)
    if parameter is not None:
        device = parameter.device if device is None else device
        dtype = parameter.dtype if dtype is None else dtype
    return {'device': device, 'dtype': dtype}


DIGITS_MEAN = (0.5, 0.5, 0.5)
DIGITS_STD = (0.5, 0.5, 0.5)
DIGITS_NUM_CLASSES = 10


# Fashion-MNIST's pixel statistics (the 60,000 training images scaled to [0, 1]), one grey channel
FMNIST_MEAN = (0.2860,)
FMNIST_STD = (0.3530,)
FMNIST_NUM_CLASSES = 10


def _pool_size(input_size: Tuple[int, int, int], reduction: int, padded: bool = False) -> Tuple[int, int]:
    """Final feature map at ``input_size``: ``side // reduction`` for an unpadded patch embedding (a ViT),
    ``ceil(side / reduction)`` for padded stride-2 convolutions (a CNN where the side is not a multiple)."""
    if padded:
        return -(-input_size[1] // reduction), -(-input_size[2] // reduction)
    return input_size[1] // reduction, input_size[2] // reduction


def digits_cfg(*, reduction: int, first_conv: Any = 'patch_embed.proj', classifier: Any = 'head',
               fixed_input_size: bool = True, **kwargs) -> Dict[str, Any]:
    """Default cfg for the embedded digits dataset: sklearn 8x8 digits upsampled to 16 px, 3 channels
    (grey repeated), mean/std 0.5, 10 classes. No weights are ever downloaded (url empty).

    ``reduction`` is the model's total stride (patch size of a ViT, output stride of a CNN): ``pool_size``
    is the spatial size of the final feature map at ``input_size``, i.e. the patch grid of a ViT, as in
    timm's cfg contract (checked against the model in tests/test_timm_contract.py)."""
    input_size = (3, 16, 16)
    return {
        'url': '',
        'num_classes': DIGITS_NUM_CLASSES,
        'input_size': input_size,
        'pool_size': _pool_size(input_size, reduction),
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


def fmnist_cfg(*, reduction: int, first_conv: Any = 'patch_embed.proj', classifier: Any = 'head',
               fixed_input_size: bool = True, padded: bool = False, **kwargs) -> Dict[str, Any]:
    """Default cfg for Fashion-MNIST at its native size: 28x28, ONE grey channel (so timm builds the model
    with ``in_chans=1``), Fashion-MNIST's mean/std, 10 classes, no resize (crop_pct 1). No weights are ever
    downloaded (url empty).

    ``reduction`` as in :func:`digits_cfg`; ``padded=True`` for a CNN whose padded stride-2 convs round up
    (28 -> 14 -> 7 -> 4: reduction 8 gives a 4x4 map, not 28 // 8 = 3)."""
    input_size = (1, 28, 28)
    return {
        'url': '',
        'num_classes': FMNIST_NUM_CLASSES,
        'input_size': input_size,
        'pool_size': _pool_size(input_size, reduction, padded),
        'crop_pct': 1.0,
        'interpolation': 'bilinear',
        'fixed_input_size': fixed_input_size,
        'mean': FMNIST_MEAN,
        'std': FMNIST_STD,
        'first_conv': first_conv,
        'classifier': classifier,
        'license': 'apache-2.0',
        **kwargs,
    }


def imagenet_cfg(*, reduction: int, first_conv: Any = 'patch_embed.proj', classifier: Any = 'head',
                 fixed_input_size: bool = True, **kwargs) -> Dict[str, Any]:
    """Default cfg for the 224 px ImageNet-sized variants (DeiT-style normalisation); ``reduction`` as in
    :func:`digits_cfg`."""
    input_size = (3, 224, 224)
    return {
        'url': '',
        'num_classes': 1000,
        'input_size': input_size,
        'pool_size': _pool_size(input_size, reduction),
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
