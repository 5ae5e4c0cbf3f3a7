"""The loss-term registry and the base class every registered term derives from.

A term is a small ``nn.Module``: it holds its hyper-parameters, declares which taps it needs from
which model (:meth:`LossTerm.requests`), may build connectors once the models' shapes are known
(:meth:`LossTerm.setup`), and computes its loss from the tap outputs (:meth:`LossTerm.forward`).
Adding a method = one file with one ``@register_loss`` class; nothing else changes.

Config terms are checked against the class signature when built (mmrazor-style): an unknown or
missing argument is one line naming the term and the argument.
"""
from __future__ import annotations

import difflib
import inspect
import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Type

from torch import Tensor, nn

from ..config import ConfigError
from ..taps import ModelInfo, TapOutput, TapRequest

__all__ = ["LOSSES", "register_loss", "LossTerm", "Batch", "build_term", "WeightSchedule", "ModelInfo",
           "STUDENT_AS_TARGET"]

LOSSES: Dict[str, Type["LossTerm"]] = {}

# a term's name for the run's student when another model learns from it (``teacher: student``); never a teacher key
STUDENT_AS_TARGET = "student:target"


def register_loss(name: str):
    def deco(cls):
        if name in LOSSES:
            raise ValueError(f"loss '{name}' registered twice")
        cls.type_name = name
        LOSSES[name] = cls
        return cls
    return deco


@dataclass
class Batch:
    """What a term sees of the current batch besides the tap outputs."""
    images: Tensor
    target: Tensor                       # hard labels [B]
    soft_target: Optional[Tensor] = None  # mixed / smoothed label distribution [B, C] when mixup is on
    index: Optional[Tensor] = None       # dataset indices [B]
    epoch: int = 0
    progress: float = 0.0                # fraction of training done, in [0, 1]
    copy: Optional[Tensor] = None        # repeated augmentation: each sample's copy number [B] (None: all 0)


class WeightSchedule:
    """A term's weight over training progress p in [0, 1]: the one schedule mechanism of every term.

    Keys (all optional): ``kind`` constant | linear | cosine; ``start`` and ``end``, the weights at the two
    ends of the ramp (default: the term's ``weight``); ``from`` (weight 0 before p = from; the ramp starts
    there); ``to`` (the ramp reaches ``end`` at p = to, default 1, and stays there); ``until`` (weight 0 from
    p = until on). Examples: ``{until: 0.5}`` switches a term off halfway (DearKD's early stage);
    ``{from: 0.1}`` switches it on after 10%; ``{kind: linear, start: 0, to: 0.2}`` ramps it up over the
    first 20% (DKD's warm-up). A weight of 0 at a step means the term is not computed at that step.
    """

    KEYS = ("kind", "start", "end", "from", "to", "until")

    def __init__(self, weight: float, schedule: Optional[dict] = None, where: str = ""):
        self.weight = float(weight)
        s = dict(schedule or {})
        unknown = set(s) - set(self.KEYS)
        if unknown:
            key = sorted(unknown)[0]
            hint = " (use 'from')" if key == "warmup" else ""
            raise ConfigError(f"{where}.schedule: unknown key '{key}'{hint} (valid: {', '.join(self.KEYS)})")
        self.kind = s.get("kind", "constant")
        if self.kind not in ("constant", "linear", "cosine"):
            raise ConfigError(f"{where}.schedule.kind: '{self.kind}' is not one of constant, linear, cosine")
        for k in ("start", "end", "from", "to", "until"):
            v = s.get(k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise ConfigError(f"{where}.schedule.{k}: expected a number, got {v!r}")
        self.start = float(s.get("start", self.weight))
        self.end = float(s.get("end", self.weight))
        self.begin = float(s.get("from", 0.0))
        self.to = float(s.get("to", 1.0))
        self.until = float(s.get("until", math.inf))
        for k, v in (("weight", self.weight), ("start", self.start), ("end", self.end)):
            if v < 0 or not math.isfinite(v):
                raise ConfigError(f"{where}.{'' if k == 'weight' else 'schedule.'}{k}: must be a finite number "
                                  f">= 0, got {v}")
        if not 0 <= self.begin < self.to <= 1:
            raise ConfigError(f"{where}.schedule: needs 0 <= from < to <= 1, got from {self.begin}, to {self.to}")
        if self.until <= self.begin:
            raise ConfigError(f"{where}.schedule.until: {self.until} leaves the term never on (from {self.begin})")

    @property
    def never_on(self) -> bool:
        """The weight is 0 at every step (a constant weight of 0, or a ramp from 0 to 0)."""
        return (self.weight if self.kind == "constant" else max(self.start, self.end)) == 0

    def __call__(self, progress: float) -> float:
        if progress < self.begin or progress >= self.until:
            return 0.0
        if self.kind == "constant":
            return self.weight
        p = min(1.0, (progress - self.begin) / (self.to - self.begin))
        f = p if self.kind == "linear" else 0.5 * (1 - math.cos(math.pi * p))
        return self.start + (self.end - self.start) * f


class LossTerm(nn.Module):
    """Base of every registered loss term.

    Common config keys (handled here, not by subclasses): ``type``, ``weight``, ``schedule``,
    ``student`` (the model that learns from the term: the run's student, or a trainable teacher such as a peer;
    default ``student``), ``teacher`` (name of a teacher, for terms that read one; ``student`` where another model
    learns from the student).

    A term always calls its learner ``"student"``: the distiller shows it the learner's output under that key and
    every other model's output detached, under the name :meth:`reads` maps it to (the run's student, when it is the
    target, under :data:`STUDENT_AS_TARGET`). So every term works for any learner, unchanged.
    """

    type_name: str = "?"
    needs_teacher: bool = True
    # Does the term's trajectory depend on how the global batch is split over processes? A per-sample
    # term (a mean over the batch of per-image losses, no random draws: the default) gives the same
    # gradients for any process count, since DDP averages the ranks' gradients. A term that couples the
    # images of a batch (relations across images) or draws from the process's random stream declares
    # itself dependent (``world_size_reason`` says why); a subclass may make it a property of its settings.
    # Recorded in run.yaml when a run has several processes; listed in docs/scale_out.md.
    world_size_dependent: bool = False
    world_size_reason: str = ""
    learner: str = "student"   # the model this term trains (``student:`` in its config)

    def __init__(self, teacher: Optional[str] = None):
        super().__init__()
        self.teacher = teacher
        self.label = self.type_name
        self.schedule = WeightSchedule(1.0)

    def reads(self, key: str) -> str:
        """The configured model behind this term's name ``key`` for it (its learner is always ``"student"``)."""
        if key == "student":
            return self.learner
        return "student" if key == STUDENT_AS_TARGET else key

    # what each model must return: {"student": TapRequest, "<teacher>": TapRequest}
    def requests(self) -> Dict[str, TapRequest]:
        return {"student": TapRequest()} if not self.needs_teacher else {"student": TapRequest(),
                                                                          self.teacher: TapRequest()}

    def setup(self, models: Dict[str, ModelInfo]) -> None:
        """Check the models against this term and build connectors. Raise ConfigError naming the problem."""

    def no_weight_decay(self) -> set:
        """Names (relative to this term) of trainable parameters kept out of weight decay."""
        return set()

    def forward(self, outs: Dict[str, TapOutput], batch: Batch) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def fail(self, message: str):
        raise ConfigError(f"distill term '{self.label}': {message}")

    # helpers for subclasses ---------------------------------------------------------
    def check_blocks(self, info: ModelInfo, blocks, role: str):
        if not info.vit:
            self.fail(f"{role} model {info.name} has no transformer blocks (it is a CNN)")
        for b in blocks:
            if not -info.depth <= b < info.depth:
                self.fail(f"{role} model {info.name} has no block {b} (valid 0..{info.depth - 1} or "
                          f"-{info.depth}..-1)")

    def check_head(self, info: ModelInfo, head: Optional[str], role: str):
        if head is not None and head not in info.head_names:
            self.fail(f"{role} model {info.name} has no head '{head}' (heads: {', '.join(info.head_names)})")


def build_term(spec: Dict[str, Any], index: int, teacher_names, defaults: Optional[Dict[str, Any]] = None) -> LossTerm:
    """Build a registered term from its config mapping, checked against the class signature.

    ``defaults``: run-level values for term arguments of the same name that the spec leaves out
    (see :func:`vitkd.distiller.term_defaults`)."""
    where = f"distill.terms[{index}]"
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a mapping with a 'type', got {spec!r}")
    spec = dict(spec)
    kind = spec.pop("type", None)
    if kind is None:
        raise ConfigError(f"{where}: missing 'type' (one of {', '.join(sorted(LOSSES))})")
    if kind not in LOSSES:
        hint = difflib.get_close_matches(str(kind), list(LOSSES), n=1)
        extra = f" (did you mean '{hint[0]}'?)" if hint else f" (known: {', '.join(sorted(LOSSES))})"
        raise ConfigError(f"{where}.type: unknown loss '{kind}'{extra}")
    cls = LOSSES[kind]
    where = f"{where} ({kind})"
    weight = spec.pop("weight", 1.0)
    schedule = spec.pop("schedule", None)
    label = spec.pop("name", None)
    learner = spec.pop("student", "student")
    if learner != "student" and learner not in teacher_names:
        raise ConfigError(f"{where}.student: '{learner}' is not a configured teacher (the model that learns from "
                          f"this term: 'student' or a trainable teacher)")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise ConfigError(f"{where}.weight: expected a number, got {weight!r}")
    if not weight >= 0 or not math.isfinite(weight):
        raise ConfigError(f"{where}.weight: must be a finite number >= 0, got {weight!r}")
    sig = inspect.signature(cls.__init__)
    params = {k: p for k, p in sig.parameters.items() if k != "self"}
    for k in spec:
        if k not in params:
            hint = difflib.get_close_matches(k, list(params), n=1)
            extra = f" (did you mean '{hint[0]}'?)" if hint else f" (arguments: {', '.join(params) or 'none'})"
            raise ConfigError(f"{where}: unknown argument '{k}'{extra}")
    for k, p in params.items():
        if p.default is inspect.Parameter.empty and k not in spec and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            raise ConfigError(f"{where}: missing argument '{k}'")
    if cls.needs_teacher:
        t = spec.get("teacher")
        if t is None and learner != "student":
            t = "student"   # a teacher that learns learns from the student unless told otherwise
        if t is None and len(teacher_names) == 1:
            spec["teacher"] = t = next(iter(teacher_names))
        if t == learner:
            raise ConfigError(f"{where}.teacher: '{t}' is also the model that learns from this term (student: "
                              f"{learner}); a model does not distil from itself")
        if t == "student" and learner != "student":
            spec["teacher"] = STUDENT_AS_TARGET
        elif t not in teacher_names:
            raise ConfigError(f"{where}.teacher: '{t}' is not a configured teacher "
                              f"({', '.join(teacher_names) or 'no teachers configured under distill.teachers'})")
    for k, v in (defaults or {}).items():
        if k in params and k not in spec:
            spec[k] = v
    try:
        term = cls(**spec)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from None
    term.label = label or (kind if learner == "student" else f"{kind}_{learner}")
    term.learner = learner
    term.schedule = WeightSchedule(weight, schedule, where)
    return term
