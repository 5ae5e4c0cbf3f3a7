"""The engine, split by job: :mod:`.build` (what a run needs), :mod:`.loop` (training and evaluation),
:mod:`.optim` (optimizer and schedule), :mod:`.checkpoint` (training state, resume policy) and
:mod:`.dist` (ranks and reductions). It knows no distillation method by name."""
from .build import Run, build_run, build_student, resolve_device, versions
from .checkpoint import RESUME_MAY_CHANGE, load_checkpoint
from .loop import NonFiniteLoss, evaluate, train
from .optim import WarmupCosine, param_groups

__all__ = ["train", "evaluate", "load_checkpoint", "Run", "build_run", "build_student", "resolve_device",
           "WarmupCosine", "param_groups", "versions", "NonFiniteLoss", "RESUME_MAY_CHANGE"]
