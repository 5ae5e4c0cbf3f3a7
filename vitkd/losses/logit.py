"""Logit distillation terms: ``kd``, ``deit``, ``dkd``, ``dist``.

Each reads one teacher's logits (``teacher_head`` picks one head of a multi-head teacher) and one
student head (``head``; default the student's logits, i.e. timm's forward, which averages the two
heads of a distilled DeiT). Teacher tensors come from ``torch.no_grad()``; everything is computed
in float32.
"""
from __future__ import annotations

from typing import Dict, Optional

from torch import Tensor

from ..taps import TapOutput, TapRequest
from . import functional as KF
from .base import Batch, LossTerm, ModelInfo, register_loss
from .common import logits_of, target_of, check_logit_pair


class LogitTerm(LossTerm):
    """A student head against a teacher head."""

    def __init__(self, head: Optional[str] = None, teacher_head: Optional[str] = None, teacher: Optional[str] = None):
        super().__init__(teacher=teacher)
        self.head = head
        self.teacher_head = teacher_head

    def requests(self) -> Dict[str, TapRequest]:
        return {"student": TapRequest(heads=self.head is not None),
                self.teacher: TapRequest(heads=self.teacher_head is not None)}

    def setup(self, models: Dict[str, ModelInfo]) -> None:
        s, t = models["student"], models[self.teacher]
        check_logit_pair(self, s, t, self.head, self.teacher_head)

    def pair(self, outs: Dict[str, TapOutput]):
        return logits_of(outs["student"], self.head), logits_of(outs[self.teacher], self.teacher_head)


@register_loss("kd")
class KD(LogitTerm):
    """Hinton KD: ``T^2 * KL(softmax(t/T) || softmax(s/T))``, KL summed over classes, batch mean.

    Args: ``T`` (default 4, mdistiller CIFAR; ImageNet recipes use 1), ``head`` (student head, default
    its logits), ``teacher_head``, ``teacher``. Default weight 1; the references use 0.9 (CIFAR, with
    CE 0.1) or 0.5 (ImageNet, with CE 0.5) -- set ``weight`` and the ``ce`` term's weight accordingly.
    """

    def __init__(self, T: float = 4.0, head: Optional[str] = None, teacher_head: Optional[str] = None,
                 teacher: Optional[str] = None):
        super().__init__(head, teacher_head, teacher)
        if T <= 0:
            raise ValueError(f"T must be > 0, got {T}")
        self.T = float(T)

    def forward(self, outs: Dict[str, TapOutput], batch: Batch) -> Tensor:
        s, t = self.pair(outs)
        return KF.kd(s, t, self.T)


@register_loss("deit")
class DeiT(LogitTerm):
    """DeiT token distillation on the student's ``dist`` head (the CE on ``cls`` is a separate ``ce`` term).

    ``mode='hard'``: cross-entropy against the teacher's argmax (batch mean; DeiT's published models);
    ``mode='soft'``: ``T^2 * KL`` with ``reduction='batchmean'`` (KL summed over classes, / B) or
    ``'deit'`` (DeiT's original: / (B * classes)). Defaults: ``mode=hard``, ``T=1``, ``head=dist``.
    Reference weight: 0.5 (``--distillation-alpha 0.5``, with the ``ce`` term on ``cls`` at 0.5).
    """

    def __init__(self, mode: str = "hard", T: float = 1.0, reduction: str = "batchmean", head: str = "dist",
                 teacher_head: Optional[str] = None, teacher: Optional[str] = None):
        super().__init__(head, teacher_head, teacher)
        if mode not in ("hard", "soft"):
            raise ValueError(f"mode must be 'hard' or 'soft', got {mode!r}")
        if reduction not in ("batchmean", "deit"):
            raise ValueError(f"reduction must be 'batchmean' or 'deit', got {reduction!r}")
        if T <= 0:
            raise ValueError(f"T must be > 0, got {T}")
        self.mode, self.T, self.reduction = mode, float(T), reduction

    def setup(self, models: Dict[str, ModelInfo]) -> None:
        s = models["student"]
        if self.head not in s.head_names:
            self.fail(f"student model {s.name} has no head '{self.head}' (heads: {', '.join(s.head_names)}); "
                      f"DeiT distillation needs a distilled student, e.g. deit_tiny_distilled_patch16_224")
        super().setup(models)

    def forward(self, outs: Dict[str, TapOutput], batch: Batch) -> Tensor:
        s, t = self.pair(outs)
        if self.mode == "hard":
            return KF.deit_hard(s, t)
        return KF.deit_soft(s, t, self.T, self.reduction)


@register_loss("dkd")
class DKD(LogitTerm):
    """Decoupled KD: ``(alpha * TCKD + beta * NCKD) * T^2``, each KL summed over classes and batch, / B.

    Defaults ``alpha=1, beta=8, T=4`` (mdistiller CIFAR; ImageNet: beta 0.5, T 1). The reference warms the
    term up linearly over its first 20 epochs: use the term's schedule, e.g. ``schedule: {kind: linear,
    start: 0, to: 0.08}`` for 20 of 240 epochs. Reference weight 1 on top of CE 1.
    """

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, T: float = 4.0,
                 head: Optional[str] = None, teacher_head: Optional[str] = None, teacher: Optional[str] = None):
        super().__init__(head, teacher_head, teacher)
        if T <= 0:
            raise ValueError(f"T must be > 0, got {T}")
        self.alpha, self.beta, self.T = float(alpha), float(beta), float(T)

    def forward(self, outs: Dict[str, TapOutput], batch: Batch) -> Tensor:
        s, t = self.pair(outs)
        return KF.dkd(s, t, target_of(batch), self.alpha, self.beta, self.T)


@register_loss("dist")
class DIST(LogitTerm):
    """DIST: ``T^2 * (beta * inter + gamma * intra)`` Pearson-correlation relation losses (batch >= 2).

    Defaults ``beta=1, gamma=1, T=1`` (reference). Reference weight 1 (some ImageNet recipes use 2).
    """

    def __init__(self, beta: float = 1.0, gamma: float = 1.0, T: float = 1.0, head: Optional[str] = None,
                 teacher_head: Optional[str] = None, teacher: Optional[str] = None):
        super().__init__(head, teacher_head, teacher)
        if T <= 0:
            raise ValueError(f"T must be > 0, got {T}")
        self.beta, self.gamma, self.T = float(beta), float(gamma), float(T)

    @property
    def world_size_dependent(self) -> bool:   # beta alone (correlation over each image's classes) is per image
        return bool(self.gamma)

    @property
    def world_size_reason(self) -> str:
        return "gamma: each class's correlation is taken across the images of a rank's batch" if self.gamma else ""

    def forward(self, outs: Dict[str, TapOutput], batch: Batch) -> Tensor:
        s, t = self.pair(outs)
        return KF.dist(s, t, self.beta, self.gamma, self.T)
