"""The engine, split by job: :mod:`.build` (what a run needs; the dry build), :mod:`.loop` (training),
:mod:`.optim` (optimizer and schedule) and :mod:`.checkpoint` (training state, resume policy). Devices and ranks are
:mod:`vitkd.dist`'s, evaluation :mod:`vitkd.evaluate`'s. It knows no distillation method by name."""
from .._version import versions
from ..dist import resolve_device
from ..evaluate import evaluate
from .build import Run, build_run, build_student
from .checkpoint import RESUME_MAY_CHANGE, load_checkpoint
from .loop import NonFiniteLoss, train
from .optim import WarmupCosine, param_groups

__all__ = ["train", "evaluate", "load_checkpoint", "Run", "build_run", "build_student", "resolve_device",
           "WarmupCosine", "param_groups", "versions", "NonFiniteLoss", "RESUME_MAY_CHANGE"]
