"""vitkd: a knowledge-distillation zoo for Vision Transformers on any timm backbone.

``import vitkd`` registers vitkd's own architectures in timm (``timm.create_model('minivit_digits_small')``
works right after it).
"""
from ._version import __version__  # noqa: F401

from . import archs  # noqa: F401,E402  (registers vitkd's models in timm)
from .taps import TapError, TapOutput, TapRequest, Tapped  # noqa: F401,E402
