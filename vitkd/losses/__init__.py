"""Loss terms: pure functions in :mod:`vitkd.losses.functional`, registered modules per family."""
from .base import LOSSES, STUDENT_AS_TARGET, Batch, LossTerm, ModelInfo, build_term, register_loss  # noqa: F401
from . import label  # noqa: F401  (registers the terms)
from . import logit, patch, feature, minivit, hetero, self_distill  # noqa: F401,E401  (register the distillation terms)
