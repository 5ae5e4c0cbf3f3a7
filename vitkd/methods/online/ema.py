"""The ``ema`` teacher source: the engine's EMA of the student, read like a live teacher (self distillation).

``distill.teachers.<name>: {ema: {warmup: FRACTION}}`` (or ``{warmup_epochs: N}``) reads the model EMA the engine
already keeps (``train.ema_decay``, timm's ModelEmaV3; checkpointed and evaluated there): no second EMA. The engine
hands it over once it has built it (:meth:`EmaTeacher.bind`); until then (a dry build, a profile) the source holds an
untrained model of the student's architecture, with the same shapes. It runs under no_grad and is tapped like any
live teacher, so every term can read it. Before the warm-up (a fraction of training, default 0) the source is not
active: it is not run, and the terms that read it are off (:meth:`vitkd.teachers.TeacherSource.active`).
"""
from __future__ import annotations

from typing import Optional

from torch import nn

from ... import models as model_lib
from ...config import ConfigError, TeacherCfg
from ...data import seeded
from ...taps import Tapped
from ...teachers import LiveTeacher
from .common import only_origin, section

__all__ = ["EmaTeacher"]

EMA_KEYS = ("warmup", "warmup_epochs")


def _number(value, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    return float(value)


class EmaTeacher(LiveTeacher):
    """The engine's EMA of the student as a teacher (see the module docstring)."""

    def __init__(self, placeholder: nn.Module, student_spec=None, warmup: float = 0.0):
        super().__init__(placeholder, student_spec)
        self.warmup = float(warmup)
        self.bound = False

    @classmethod
    def from_config(cls, name: str, cfg: TeacherCfg, num_classes: int, run=None, student_spec=None) -> "EmaTeacher":
        """The registered origin ``ema`` (:func:`vitkd.teachers.register_origin`): refuses a run without an EMA."""
        where = f"distill.teachers.{name}.ema"
        only_origin(name, cfg, "ema", "the engine's EMA of the student")
        spec = section(name, cfg, "ema", EMA_KEYS)
        if run is None or run.train.ema_decay is None:
            raise ConfigError(f"{where}: reads the engine's EMA of the student: set train.ema_decay (e.g. 0.999)")
        if "warmup" in spec and "warmup_epochs" in spec:
            raise ConfigError(f"{where}: give warmup (a fraction of training) or warmup_epochs, not both")
        warmup = _number(spec.get("warmup", 0.0), f"{where}.warmup")
        if "warmup_epochs" in spec:
            epochs = _number(spec["warmup_epochs"], f"{where}.warmup_epochs")
            if not 0 <= epochs < run.train.epochs:
                raise ConfigError(f"{where}.warmup_epochs: must be in [0, train.epochs = {run.train.epochs}), "
                                  f"got {spec['warmup_epochs']}")
            warmup = epochs / run.train.epochs
        if not 0 <= warmup < 1:
            raise ConfigError(f"{where}.warmup: a fraction of training in [0, 1), got {spec['warmup']}")
        with seeded(0):   # shapes only: the engine's EMA replaces it (the run's RNG streams are untouched)
            placeholder = model_lib.create(run.model.name, num_classes, run.model.args, where="model")
        return cls(placeholder, student_spec, warmup)

    def active(self, progress: float) -> bool:
        return progress >= self.warmup

    def bind(self, ema: Optional[nn.Module] = None, **engine) -> None:
        """Read the engine's EMA model from now on (held, not owned: it is saved and updated by the engine)."""
        if ema is None:
            raise ConfigError("train.ema_decay: an ema teacher reads the engine's EMA of the student; set it")
        request = self._tapped.request
        self._tapped.close()
        del self._tapped, self.model   # the placeholder goes
        model_lib.freeze(ema)   # it is never trained by a gradient (the engine's update runs without one)
        object.__setattr__(self, "model", ema)
        object.__setattr__(self, "_tapped", Tapped(ema, request))
        self.bound = True
