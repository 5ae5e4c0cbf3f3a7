"""The ``peer`` teacher source: a model trained jointly with the student, in the same step, by its own terms.

``distill.teachers.<name>: {peer: {model: NAME, args: {...}}}`` builds the timm model ``NAME`` from scratch (its
initialisation seeded by the run seed and the teacher's name, without touching the run's RNG streams, so the student
is built exactly as in the run without the peer). It reads the student's images as they are (same input pipeline,
so its accuracy is measured on the same splits). Its forward keeps the graph: terms that name it as their learner
(``student: <name>``) train it, and the distiller detaches its output wherever another model reads it as a target.
Being ``trainable``, it joins the optimizer, the checkpoint, the DDP-wrapped part, the evaluation (top-1 beside the
student's) and the run folder (``teachers/<name>.safetensors``), and its cost counts a backward.
"""
from __future__ import annotations

import json
import zlib
from typing import Any, Dict

import timm
from torch import Tensor, nn

from ... import models as model_lib
from ...config import ConfigError, TeacherCfg
from ...data import sample_seed, seeded
from ...taps import TapOutput, TapRequest, Tapped, describe
from ...teachers import TeacherSource
from .common import only_origin, section

__all__ = ["PeerTeacher", "peer_seed"]

PEER_KEYS = ("model", "args")


def peer_seed(run_seed: int, name: str) -> int:
    """The seed of peer ``name``'s initialisation in a run seeded ``run_seed``."""
    return sample_seed(run_seed, 0x9EE2, zlib.crc32(name.encode()))


class PeerTeacher(TeacherSource):
    """A timm model trained with the student (see the module docstring)."""

    trainable = True

    def __init__(self, model: nn.Module, model_name: str, args: Dict[str, Any], student_spec=None):
        super().__init__()
        self.model = model
        self.model_name, self.args = model_name, dict(args)
        self.data_spec = student_spec   # the student's images, as they are
        object.__setattr__(self, "_tapped", None)   # held, not a submodule: the model's parameters appear once

    @classmethod
    def from_config(cls, name: str, cfg: TeacherCfg, num_classes: int, run=None, student_spec=None) -> "PeerTeacher":
        """The registered origin ``peer`` (:func:`vitkd.teachers.register_origin`)."""
        where = f"distill.teachers.{name}.peer"
        only_origin(name, cfg, "peer", "trained from scratch with the student")
        spec = section(name, cfg, "peer", PEER_KEYS)
        model_name, args = spec.get("model"), spec.get("args") or {}
        if not isinstance(model_name, str) or not model_name:
            raise ConfigError(f"{where}.model: missing (the timm model the peer trains, e.g. resnet10t)")
        if not timm.is_model(model_name):
            raise ConfigError(f"{where}.model: unknown timm model '{model_name}'")
        if not isinstance(args, dict):
            raise ConfigError(f"{where}.args: expected a mapping, got {args!r}")
        with seeded(peer_seed(run.seed if run is not None else 0, name)):
            model = model_lib.create(model_name, num_classes, args, where=where)
        return cls(model, model_name, args, student_spec)

    def describe(self, img_size):
        return describe(self.model, img_size)

    def set_request(self, request: TapRequest) -> None:
        if self._tapped is not None:
            self._tapped.close()
        object.__setattr__(self, "_tapped", Tapped(self.model, request))

    def forward(self, images: Tensor, batch=None) -> TapOutput:
        return self._tapped(images)   # with its graph: the peer learns from its own terms

    def forward_macs(self, input_size) -> float:
        from ...profile.macs import count_macs
        return float(count_macs(self.model, tuple(input_size), batch_size=1, cross_check=False).total_macs)

    def exported(self):
        return self.model, {"model": self.model_name, "args": json.dumps(self.args, sort_keys=True)}

    def close(self) -> None:
        if self._tapped is not None:
            self._tapped.close()
