"""vitkd's own architectures, registered in timm on import (``timm.create_model(name)`` afterwards).

* :mod:`.digits`     small ViT / DeiT-distilled students, ViT and ResNet teachers for the digits dataset
* :mod:`.fmnist`     the same families sized for Fashion-MNIST (28 px, one grey channel)
* :mod:`.minivit`    MiniViT weight multiplexing (``minivit_convert``) and registered Mini-DeiTs
* :mod:`.involution` involution, RedNet (``rednet_digits`` teacher, ``rednet26``)
* :mod:`.civt`       Co-advise / CiT student with cls + conv + inv tokens and three heads
* :mod:`.gpsa`       a ViT whose first blocks use timm's ConViT GPSA (DearKD's early locality prior)
"""
from . import digits, fmnist, minivit, involution, civt, gpsa  # noqa: F401  (order: civt/minivit import digits, fmnist)
from .civt import CoAdviseViT
from .digits import DIGITS_VIT_ARGS, DigitsResNet
from .fmnist import FMNIST_RESNET_ARGS, FMNIST_VIT_ARGS
from .gpsa import GPSAVisionTransformer, PrefixPassGPSA
from .involution import Involution2d, RedNet
from .minivit import MiniAttention, MiniBlock, MiniVisionTransformer, minivit_convert, minivit_groups, shared_linears

__all__ = ['MODEL_NAMES', 'CoAdviseViT', 'DIGITS_VIT_ARGS', 'DigitsResNet', 'FMNIST_RESNET_ARGS', 'FMNIST_VIT_ARGS',
           'GPSAVisionTransformer', 'PrefixPassGPSA', 'Involution2d', 'RedNet',
           'MiniAttention', 'MiniBlock', 'MiniVisionTransformer', 'minivit_convert', 'minivit_groups',
           'shared_linears']

# every model name this package registers in timm (register_model appends to each module's __all__)
MODEL_NAMES = [n for m in (digits, fmnist, minivit, involution, civt, gpsa) for n in m.__all__ if n.islower()
               and callable(getattr(m, n, None)) and n in m.default_cfgs]
