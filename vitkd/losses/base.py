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

import torch
from torch import Tensor, nn

from ..config import ConfigError
from ..taps import TapOutput, TapRequest

__all__ = ["LOSSES", "register_loss", "LossTerm", "Batch", "build_term", "WeightSchedule", "ModelInfo"]

LOSSES: Dict[str, Type["LossTerm"]] = {}


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


@dataclass
class ModelInfo:
    """Shapes of a model that terms need to build connectors (probed once at build time)."""
    name: str
    vit: bool
    depth: int
    embed_dim: Optional[int]
    num_heads: Optional[int]
    num_classes: int
    grid: Optional[tuple]
    prefix_names: list
    stages: Dict[int, tuple]             # reduction -> (module, channels)
    head_names: list
    model: nn.Module


class WeightSchedule:
    """Weight over training progress p in [0, 1]: constant, or from ``start`` to ``end`` (linear/cosine),
    optionally only after ``warmup`` (fraction of training) with weight 0 before."""

    def __init__(self, weight: float, schedule: Optional[dict] = None, where: str = ""):
        self.weight = float(weight)
        s = dict(schedule or {})
        unknown = set(s) - {"kind", "start", "end", "warmup"}
        if unknown:
            raise ConfigError(f"{where}.schedule: unknown key '{sorted(unknown)[0]}' (valid: kind, start, end, warmup)")
        self.kind = s.get("kind", "constant")
        if self.kind not in ("constant", "linear", "cosine"):
            raise ConfigError(f"{where}.schedule.kind: '{self.kind}' is not one of constant, linear, cosine")
        self.start = float(s.get("start", self.weight))
        self.end = float(s.get("end", self.weight))
        self.warmup = float(s.get("warmup", 0.0))

    def __call__(self, progress: float) -> float:
        if progress < self.warmup:
            return 0.0
        if self.kind == "constant":
            return self.weight
        p = (progress - self.warmup) / max(1e-12, 1 - self.warmup)
        if self.kind == "linear":
            f = p
        else:
            f = 0.5 * (1 - math.cos(math.pi * p))
        return self.start + (self.end - self.start) * f


class LossTerm(nn.Module):
    """Base of every registered loss term.

    Common config keys (handled here, not by subclasses): ``type``, ``weight``, ``schedule``,
    ``student`` (always the student), ``teacher`` (name of a teacher, for terms that read one).
    """

    type_name: str = "?"
    needs_teacher: bool = True

    def __init__(self, teacher: Optional[str] = None):
        super().__init__()
        self.teacher = teacher
        self.label = self.type_name
        self.schedule = WeightSchedule(1.0)

    # what each model must return: {"student": TapRequest, "<teacher>": TapRequest}
    def requests(self) -> Dict[str, TapRequest]:
        return {"student": TapRequest()} if not self.needs_teacher else {"student": TapRequest(),
                                                                          self.teacher: TapRequest()}

    def setup(self, models: Dict[str, ModelInfo]) -> None:
        """Check the models against this term and build connectors. Raise ConfigError naming the problem."""

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


def build_term(spec: Dict[str, Any], index: int, teacher_names) -> LossTerm:
    """Build a registered term from its config mapping, checked against the class signature."""
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
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise ConfigError(f"{where}.weight: expected a number, got {weight!r}")
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
        if t is None and len(teacher_names) == 1:
            spec["teacher"] = t = next(iter(teacher_names))
        if t not in teacher_names:
            raise ConfigError(f"{where}.teacher: '{t}' is not a configured teacher "
                              f"({', '.join(teacher_names) or 'no teachers configured under distill.teachers'})")
    try:
        term = cls(**spec)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from None
    term.label = label or (kind if not cls.needs_teacher else f"{kind}")
    term.schedule = WeightSchedule(weight, schedule, where)
    return term
