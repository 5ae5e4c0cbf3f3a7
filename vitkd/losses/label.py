"""Cross-entropy on the labels: the task loss, one term like any other."""
from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..taps import TapOutput, TapRequest
from .base import Batch, LossTerm, ModelInfo, register_loss


@register_loss("ce")
class LabelCE(LossTerm):
    """Cross-entropy of the student against the labels (batch mean); default weight 1.

    ``head``: which head to train (e.g. ``cls`` for DeiT's distilled student: CE on the cls head only);
    default: the model's logits (timm's forward, which averages the heads of a distilled model).
    ``label_smoothing``: default taken from ``train.label_smoothing``. With mixup/cutmix the mixed,
    smoothed label distribution is used (soft-target cross-entropy).
    """

    needs_teacher = False

    def __init__(self, head: Optional[str] = None, label_smoothing: Optional[float] = None):
        super().__init__(teacher=None)
        self.head = head
        self.label_smoothing = label_smoothing

    def requests(self) -> Dict[str, TapRequest]:
        return {"student": TapRequest(heads=self.head is not None)}

    def setup(self, models: Dict[str, ModelInfo]) -> None:
        self.check_head(models["student"], self.head, "student")

    def forward(self, outs: Dict[str, TapOutput], batch: Batch) -> Tensor:
        out = outs["student"]
        logits = out.heads[self.head] if self.head is not None else out.logits
        if batch.soft_target is not None:
            return torch.sum(-batch.soft_target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        return F.cross_entropy(logits.float(), batch.target, label_smoothing=self.label_smoothing or 0.0)
