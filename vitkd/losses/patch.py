"""Patch-level relation distillation: ``manifold`` (Hao et al., NeurIPS 2022)."""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import Tensor

from ..connectors import resize_tokens
from ..taps import TapOutput, TapRequest
from . import functional as KF
from .base import Batch, LossTerm, ModelInfo, register_loss
from .common import as_pairs, check_vit_pairs


@register_loss("manifold")
class Manifold(LossTerm):
    """Manifold distillation on patch tokens of paired (student_block, teacher_block) layers.

    Per pair: ``intra * manifold_intra + inter * manifold_inter + random * manifold_random(k)``
    (each an element-mean of squared relation differences, tokens L2-normalised over channels, so
    widths may differ); the pairs are averaged. Prefix tokens (cls/dist/registers) are stripped by the
    taps and the real patch grids are passed, so a teacher on another grid is resampled bilinearly.
    Defaults (reference code): ``intra=4``, ``inter=0.1``, ``random=0.2``, ``k=192``; the reference pairs
    DeiT-Ti blocks 0-3 and 8-11 with the teacher's first and last four. Default weight 1
    (``--distillation-beta 1``); combine with ``ce`` and a logit term (the reference adds DeiT's).
    """

    def __init__(self, pairs, intra: float = 4.0, inter: float = 0.1, random: float = 0.2, k: int = 192,
                 teacher: Optional[str] = None):
        super().__init__(teacher=teacher)
        self.pairs = as_pairs(self, pairs)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.intra, self.inter, self.random, self.k = float(intra), float(inter), float(random), int(k)

    @property
    def world_size_dependent(self) -> bool:   # intra alone is per image
        return bool(self.inter or self.random)

    @property
    def world_size_reason(self) -> str:
        parts = (["inter: relations across the images of a rank's batch"] if self.inter else []) + \
            (["random: k tokens sampled from a rank's batch with the rank's random stream"] if self.random else [])
        return "; ".join(parts)

    def requests(self) -> Dict[str, TapRequest]:
        return {"student": TapRequest(tokens={s for s, _ in self.pairs}),
                self.teacher: TapRequest(tokens={t for _, t in self.pairs})}

    def setup(self, models: Dict[str, ModelInfo]) -> None:
        s, t = check_vit_pairs(self, models, self.pairs)

    def forward(self, outs: Dict[str, TapOutput], batch: Batch) -> Tensor:
        so, to = outs["student"], outs[self.teacher]
        total = 0.0
        for sb, tb in self.pairs:
            fs = so.patches[sb].float()
            ft = resize_tokens(to.patches[tb].float(), to.grid_size, so.grid_size)   # onto the student's grid
            g = {}
            loss = 0.0
            if self.intra:
                loss = loss + self.intra * KF.manifold_intra(fs, ft, **g)
            if self.inter:
                loss = loss + self.inter * KF.manifold_inter(fs, ft, **g)
            if self.random:
                loss = loss + self.random * KF.manifold_random(fs, ft, self.k, **g)
            total = total + loss
        if not torch.is_tensor(total):
            return so.logits.new_zeros(())
        return total / len(self.pairs)
