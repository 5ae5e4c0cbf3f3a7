"""Teacher sources: how the distiller reads a teacher.

A teacher source answers, for one batch, what the loss terms ask of that teacher (a :class:`TapOutput`).
The distiller knows sources only through this interface:

* ``describe() -> ModelInfo``: the shapes terms check and build connectors from (at build time);
* ``set_request(request)``: the union of what the terms read from this teacher (called once);
* ``forward(images, batch) -> TapOutput``: one batch, no gradient;
* ``data_spec``: the input the teacher expects; ``close()``.

Generic hooks a source may override (the distiller and the engine call them for every source alike, naming none):

* ``trainable``: the source trains with the student (its parameters join the optimizer, the checkpoint, the
  DDP-wrapped part and its train/eval mode; its forward keeps the graph; its cost counts a backward);
  ``exported()``: its model and the metadata of its final weights, saved in the run folder;
* ``active(progress)``: whether terms may read it at this point of training (a warm-up: its readers are off before);
* ``bind(**engine)``: called once by the engine after it has built its training state (e.g. ``ema``: the
  engine's model EMA), for a source that reads part of it.

Implementations: :class:`LiveTeacher`, a frozen timm model run tapped, with its own input adaptation
(normalisation, fixed input size) and optional bf16 autocast. Where a teacher comes from is decided once
(:func:`teacher_origin`, as timm resolves a pretrained source once): a run folder or weights file, a run not trained
yet (dry builds), or an origin registered here by the package that owns it (:func:`register_origin`): a zoo entry
(``{zoo: NAME}``, :mod:`vitkd.zoo`) gives a live model, a store of logits (``{logits: PATH}``,
:class:`vitkd.methods.stored_logits.replay.StoredTeacher`) a source of its own.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import models as model_lib
from .config import ConfigError, TeacherCfg, has_key, key_value
from .data import DataSpec, class_count
from .taps import TapOutput, TapRequest, Tapped, describe

__all__ = ["TeacherSource", "LiveTeacher", "TeacherOrigin", "ORIGINS", "register_origin", "made_in_run",
           "teacher_origin", "build_teacher_source", "load_teacher_model"]


class TeacherSource(nn.Module):
    """Base of every teacher source (see the module docstring)."""

    data_spec: Optional[DataSpec] = None
    trainable: bool = False   # trained with the student, by its own terms (see the module docstring)

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

    def active(self, progress: float) -> bool:
        """Whether terms may read this source at ``progress`` (fraction of training done); a warm-up says no."""
        return True

    def bind(self, **engine) -> None:
        """The engine's training state (e.g. ``ema``), given once after it is built; most sources ignore it."""

    def exported(self) -> Optional[Tuple[nn.Module, Dict[str, Any]]]:
        """A trainable source's model and the metadata of its weights file (saved in the run folder), else None."""
        return None

    def train(self, mode: bool = True):
        # a frozen teacher stays in eval mode (no dropout, frozen BN statistics); a trainable one follows the run
        return super().train(mode and self.trainable)


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
        from .profile.macs import count_macs
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


# ---------------------------------------------------------------------- where a teacher comes from
@dataclass(frozen=True)
class TeacherOrigin:
    """A place a teacher comes from besides a checkpoint, named by the :class:`TeacherCfg` field that selects it.
    ``model(where, cfg) -> nn.Module``: its model (a live teacher); ``source(name, cfg, num_classes, run,
    student_spec) -> TeacherSource``: a source that is not a live model (then it has no model)."""
    field: str
    model: Optional[Callable[[str, TeacherCfg], nn.Module]] = None
    source: Optional[Callable[..., TeacherSource]] = None
    in_run: bool = False   # the run itself makes this teacher (a peer, the student's EMA): no weights come from outside


# the origins, registered by the packages that own them (vitkd.zoo: 'zoo'; the methods under vitkd.methods theirs)
ORIGINS: Dict[str, TeacherOrigin] = {}


def register_origin(field: str, model=None, source=None, in_run: bool = False) -> None:
    """Register where a teacher comes from when its config sets ``field`` (see :class:`TeacherOrigin`)."""
    if not has_key(TeacherCfg, field):
        raise ValueError(f"register_origin: TeacherCfg has no key '{field}' (declare it with register_section)")
    ORIGINS[field] = TeacherOrigin(field, model, source, in_run)


def made_in_run(raw_teacher: Optional[dict]) -> bool:
    """The raw teacher entry (a config's ``distill.teachers.<name>``) is made by the run itself (a peer trained
    beside the student, the student's EMA): it has no weights of its own to come from anywhere else."""
    return any(o.in_run and (raw_teacher or {}).get(o.field) is not None for o in ORIGINS.values())


def teacher_origin(name: str, cfg: TeacherCfg, planned: Optional[Dict[str, Any]] = None, live: bool = False) -> str:
    """Where teacher ``name`` comes from, decided in this one place: ``planned`` (its run is not trained yet: built
    untrained from the config that will train it, ``planned[name]``), a registered source's field the config sets
    (a store of outputs; not when ``live``, a model being wanted), a registered model origin's field (``zoo``),
    else ``checkpoint`` (a run folder or a weights file)."""
    if planned and name in planned:
        return "planned"
    for o in ORIGINS.values():
        if o.source is not None and not live and key_value(cfg, o.field) is not None:
            return o.field
    for o in ORIGINS.values():
        if o.model is not None and key_value(cfg, o.field) is not None:
            return o.field
    return "checkpoint"


def load_teacher_model(name: str, cfg: TeacherCfg, num_classes: int,
                       planned: Optional[Dict[str, Any]] = None) -> nn.Module:
    """The frozen timm model of a live teacher (:func:`teacher_origin`): a run folder's student or a weights file, a
    registered origin's model (a zoo entry), or, for a ``planned`` run, the untrained model that run will train."""
    where = f"distill.teachers.{name}"
    origin = teacher_origin(name, cfg, planned, live=True)
    if origin == "planned":
        p = planned[name]
        return model_lib.freeze(model_lib.create(cfg.model or p.model.name, class_count(p.data),
                                                 {**p.model.args, **cfg.args}, where=where))
    if origin != "checkpoint":
        return model_lib.freeze(ORIGINS[origin].model(where, cfg))
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


def build_teacher_source(name: str, cfg: TeacherCfg, num_classes: int, student_spec: Optional[DataSpec] = None,
                         run=None, planned: Optional[Dict[str, Any]] = None) -> TeacherSource:
    """Teacher ``name``'s source (:func:`teacher_origin`): a registered source (a store of logits, checked against
    the run config ``run``), or a live teacher of :func:`load_teacher_model`'s model."""
    origin = teacher_origin(name, cfg, planned)
    if origin in ORIGINS and ORIGINS[origin].source is not None:
        return ORIGINS[origin].source(name, cfg, num_classes, run, student_spec)
    return LiveTeacher(load_teacher_model(name, cfg, num_classes, planned), student_spec, cfg.bf16)
