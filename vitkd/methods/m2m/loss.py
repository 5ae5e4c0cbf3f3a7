"""Module-level distillation: ``m2mkd`` (kamanphoebe/m2mKD).

The term itself is a logit loss: in an m2m module job (a run config with an ``m2m`` section, see
:mod:`.stage`) the student is the student's module i inside the frozen meta model and the teacher is
the teacher's module i in the same meta model, so both logits come out of the meta model's head (the
module's own head for the last module). The label part is part of the term (``alpha``), so a module job
needs no separate ``ce`` term.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ...taps import TapOutput
from ...losses import functional as KF
from ...losses.base import Batch, register_loss
from ...losses.common import target_of
from ...losses.logit import LogitTerm


def m2mkd(s: Tensor, t: Tensor, target: Tensor, alpha: float = 0.5, T: float = 1.0, mode: str = "soft",
          label_smoothing: float = 0.0) -> Tensor:
    """m2mKD's module loss (DeiT's ``DistillationLoss`` on the meta model's head, kamanphoebe/m2mKD):
    ``(1 - alpha) * SoftTargetCE(s, target) + alpha * distillation``.

    ``s``: logits of the student module's path, ``t``: the teacher module's path (both [B, C]); ``target``:
    the mixed label distribution [B, C] (mixup on) or hard labels [B] (then CE with ``label_smoothing``).
    Distillation: ``mode='soft'``: ``T^2 * KL(softmax(t/T) || softmax(s/T))`` with DeiT's reduction, summed
    over batch and classes and divided by B * C; ``mode='hard'``: CE against ``t.argmax(-1)`` (batch mean).
    Defaults ``alpha=0.5, T=1`` (the reference's).
    """
    KF.check_logits(s, t, "m2mkd")
    if mode not in ("soft", "hard"):
        raise ValueError(f"m2mkd: mode must be 'soft' or 'hard', got {mode!r}")
    if target.dim() == 2:
        base = torch.sum(-target * F.log_softmax(s, dim=-1), dim=-1).mean()
    else:
        base = F.cross_entropy(s, target, label_smoothing=label_smoothing)
    dist = KF.deit_hard(s, t) if mode == "hard" else KF.deit_soft(s, t, T, reduction="deit")
    return (1.0 - alpha) * base + alpha * dist


@register_loss("m2mkd")
class M2MKD(LogitTerm):
    """``(1 - alpha) * SoftTargetCE(student, mixed labels) + alpha * T^2 * KL(p_T || p_S)`` with DeiT's
    reduction (sum / (B * C)); ``mode='hard'``: CE against the teacher's argmax instead of the KL.
    Defaults ``alpha=0.5, T=1, mode=soft`` (the reference's); ``label_smoothing`` from ``train``."""

    def __init__(self, alpha: float = 0.5, T: float = 1.0, mode: str = "soft", label_smoothing: float = 0.0,
                 teacher: Optional[str] = None):
        super().__init__(None, None, teacher)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if T <= 0:
            raise ValueError(f"T must be > 0, got {T}")
        if mode not in ("soft", "hard"):
            raise ValueError(f"mode must be 'soft' or 'hard', got {mode!r}")
        self.alpha, self.T, self.mode, self.label_smoothing = float(alpha), float(T), mode, float(label_smoothing)

    def forward(self, outs: Dict[str, TapOutput], batch: Batch) -> Tensor:
        s, t = self.pair(outs)
        return m2mkd(s, t, target_of(batch), self.alpha, self.T, self.mode, self.label_smoothing)
