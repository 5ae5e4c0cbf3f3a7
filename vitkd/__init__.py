"""vitkd: a knowledge-distillation zoo for Vision Transformers on any timm backbone."""
__version__ = "0.1.0"

from .taps import TapError, TapOutput, TapRequest, Tapped  # noqa: F401
