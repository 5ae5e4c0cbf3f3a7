"""vitkd: a knowledge-distillation zoo for Vision Transformers on any timm backbone.

``import vitkd`` registers vitkd's own architectures in timm (``timm.create_model('minivit_digits_small')``
works right after it).

This is the composition root: the low modules own registries, the modules that implement an entry register it
when imported, and this file imports them, so every registry is complete whatever module a user imports first.
Nothing in the package imports this file.
"""
from ._version import __version__  # noqa: F401

from . import archs  # noqa: F401,E402  (registers vitkd's models in timm)
from .taps import TapError, TapOutput, TapRequest, Tapped  # noqa: F401,E402
from . import m2m  # noqa: F401,E402  (the distiller builder of m2m stages: vitkd.distiller.BUILDERS)
from . import stored_logits, zoo  # noqa: F401,E402  (teacher origins 'logits' and 'zoo': vitkd.teachers.ORIGINS)
from . import methods  # noqa: F401,E402  (every method's registrations: vitkd.methods)
