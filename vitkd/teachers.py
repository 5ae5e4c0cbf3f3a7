"""Teacher sources: how the distiller reads a teacher.

A teacher source answers, for one batch, what the loss terms ask of that teacher (a :class:`TapOutput`).
The distiller knows sources only through this interface:

* ``describe() -> ModelInfo``: the shapes terms check and build connectors from (at build time);
* ``set_request(request)``: the union of what the terms read from this teacher (called once);
* ``forward(images, batch) -> TapOutput``: one batch, no gradient;
* ``data_spec``: the input the teacher expects; ``close()``.

Implementations: :class:`LiveTeacher`, a frozen timm model run tapped, with its own input adaptation
(normalisation, fixed input size) and optional bf16 autocast. Stored logits and zoo entries plug in
behind the same interface (:class:`vitkd.logits.replay.StoredTeacher`: ``distill.teachers.<name>: {logits: PATH}``).
"""
from __future__ import annotations

import contextlib
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import models as model_lib
from .config import ConfigError, TeacherCfg
from .data import DataSpec
from .taps import TapOutput, TapRequest, Tapped, describe

__all__ = ["TeacherSource", "LiveTeacher", "build_teacher_source", "load_teacher_model"]


class TeacherSource(nn.Module):
    """Base of every teacher source (see the module docstring)."""

    data_spec: Optional[DataSpec] = None

    def describe(self, img_size: Tuple[int, int]):  # pragma: no cover - interface
        raise NotImplementedError

    def set_request(self, request: TapRequest) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def forward(self, images: Tensor, batch=None) -> TapOutput:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        pass

    def forward_macs(self, input_size) -> float:  # pragma: no cover - interface
        """MACs per image this source spends on one batch of student inputs of ``input_size`` (C, H, W)."""
        raise NotImplementedError

    def check_request(self, term: str, request: TapRequest) -> None:
        """Refuse (ConfigError, one line naming ``term``) what this source cannot give; a live model gives all."""

    def train(self, mode: bool = True):
        return super().train(False)   # teachers stay in eval mode (no dropout, frozen BN statistics)


class LiveTeacher(TeacherSource):
    """A frozen model run once per step, tapped with what the terms ask of it."""

    def __init__(self, model: nn.Module, student_spec: Optional[DataSpec] = None, bf16: bool = False):
        super().__init__()
        self.model = model_lib.freeze(model)
        self.data_spec = model_lib.data_spec(model)
        self.student_spec = student_spec
        self.bf16 = bool(bf16)
        self._tapped: Optional[Tapped] = None

    def describe(self, img_size):
        return describe(self.model, img_size)

    def set_request(self, request: TapRequest) -> None:
        if self._tapped is not None:
            self._tapped.close()
        self._tapped = Tapped(self.model, request)

    def adapt_input(self, x: Tensor) -> Tensor:
        """Honour the teacher's own input normalisation and, for fixed-size ViTs, its input size."""
        s, t = self.student_spec, self.data_spec
        if s is not None and t is not None and (s.mean != t.mean or s.std != t.std):
            sm, ss = x.new_tensor(s.mean).view(1, -1, 1, 1), x.new_tensor(s.std).view(1, -1, 1, 1)
            tm, ts = x.new_tensor(t.mean).view(1, -1, 1, 1), x.new_tensor(t.std).view(1, -1, 1, 1)
            x = (x * ss + sm - tm) / ts
        pe = getattr(self.model, "patch_embed", None)
        fixed, strict = getattr(pe, "img_size", None), getattr(pe, "strict_img_size", False)
        if fixed is not None and strict and tuple(x.shape[-2:]) != tuple(fixed):
            x = F.interpolate(x, size=tuple(fixed), mode="bicubic", align_corners=False)
        return x

    def forward_macs(self, input_size) -> float:
        """The frozen model's forward MACs at the input it really gets (after :meth:`adapt_input`)."""
        from .profile import count_macs
        x = self.adapt_input(torch.zeros(1, *input_size))
        return float(count_macs(self.model, tuple(x.shape[1:]), batch_size=1, cross_check=False).total_macs)

    @torch.no_grad()
    def forward(self, images: Tensor, batch=None) -> TapOutput:
        ctx = torch.autocast(images.device.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        with ctx:
            return self._tapped(self.adapt_input(images))

    def close(self) -> None:
        if self._tapped is not None:
            self._tapped.close()


def load_teacher_model(name: str, cfg: TeacherCfg, num_classes: int) -> nn.Module:
    """The frozen timm model of a live teacher (a run folder's student, a weights file or a zoo entry)."""
    where = f"distill.teachers.{name}"
    if cfg.zoo is not None:
        return model_lib.freeze(_zoo_teacher(where, cfg))
    model, args, ncls = cfg.model, dict(cfg.args), num_classes
    if cfg.checkpoint is not None:
        spec = model_lib.run_model_spec(cfg.checkpoint)
        if spec is not None:
            model = model or spec[0]
            args = {**spec[1], **args}
            ncls = spec[2] or ncls
    if model is None:
        raise ConfigError(f"{where}.model: missing (and the checkpoint is not a vitkd run folder to read it from)")
    if cfg.checkpoint is None:
        raise ConfigError(f"{where}.checkpoint: a teacher needs trained weights (run folder or weights file)")
    return model_lib.freeze(model_lib.create(model, ncls, args, cfg.checkpoint, where=where))


def _zoo_teacher(where: str, cfg: TeacherCfg) -> nn.Module:
    """A zoo entry's model (downloaded and verified into the cache, loaded through timm's ``local-dir:``)."""
    if cfg.checkpoint is not None or cfg.model is not None or cfg.args:
        raise ConfigError(f"{where}.zoo: give either zoo or model/args/checkpoint, not both")
    from .zoo import create_model
    try:
        return create_model(cfg.zoo)
    except ConfigError as e:   # a ZooError, or a name that cannot be a zoo entry
        raise ConfigError(f"{where}.zoo: {e}") from None


def build_teacher_source(name: str, cfg: TeacherCfg, num_classes: int,
                         student_spec: Optional[DataSpec] = None, run=None) -> TeacherSource:
    """A live teacher, or a stored one (``logits:``, checked against the run config ``run``)."""
    if cfg.logits is not None:
        from .logits.replay import StoredTeacher
        return StoredTeacher.from_config(name, cfg, num_classes, run, student_spec)
    return LiveTeacher(load_teacher_model(name, cfg, num_classes), student_spec, cfg.bf16)
