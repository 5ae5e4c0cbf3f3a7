"""DeepInversion of one batch: images optimised so that a frozen BN teacher classifies them as the given
labels while their feature statistics match the teacher's BatchNorm running statistics.

The mechanism follows NVlabs/DeepInversion: images start as N(0, 1) in the teacher's normalised space; each
step rolls them by a random offset of up to ``jitter`` pixels and flips them with p = 0.5 (``flip``); the loss
is ``ce * CE(T(x), y) + r_bn * sum_l s_l (||mu_l - mu_l^BN|| + ||var_l - var_l^BN||) + tv_l2 * TV_2 +
tv_l1 * TV_1 + l2 * ||x||`` (+ ``competition * (1 - JS)`` with a student, Adaptive DI); Adam with the learning
rate cosine-decayed to 0; after each step the pixels are clipped to the valid range ([0, 1] before
normalisation); the batch of the lowest loss seen is kept. ``diversity`` adds vitkd's reading of DearKD's
intra-divergence term (:func:`vitkd.methods.datafree.losses.intra_divergence`). ``grayscale`` optimises one channel and
repeats it over the model's channels (the digits are grey).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...data import DataSpec
from .config import InversionCfg
from .losses import BNStatistics, competition_loss, intra_divergence, l2_prior, tv_priors

__all__ = ["invert_batch", "Normaliser"]


class Normaliser:
    """Between a model's normalised input space and pixels in [0, 1] (``channels`` 1: grey, repeated)."""

    def __init__(self, spec: DataSpec, channels: int):
        self.mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
        self.std = torch.tensor(spec.std).view(1, -1, 1, 1)
        self.channels = channels

    def bounds(self) -> Tuple[Tensor, Tensor]:
        m, s = self.mean[:, :self.channels], self.std[:, :self.channels]
        return (0 - m) / s, (1 - m) / s

    def to_pixels(self, x: Tensor) -> Tensor:
        return (x * self.std[:, :self.channels] + self.mean[:, :self.channels]).clamp(0, 1)

    def to_model(self, x: Tensor, spec: Optional[DataSpec] = None) -> Tensor:
        """The optimised tensor as the input of a model with ``spec`` (default: this space's own model)."""
        pix = x * self.std[:, :self.channels] + self.mean[:, :self.channels]
        pix = pix.expand(-1, self.mean.shape[1], -1, -1) if self.channels == 1 else pix
        m, s = (self.mean, self.std) if spec is None else (torch.tensor(spec.mean).view(1, -1, 1, 1),
                                                           torch.tensor(spec.std).view(1, -1, 1, 1))
        return (pix - m) / s


def _pooled_and_logits(model: nn.Module, x: Tensor, want_pooled: bool):
    feats = model.forward_features(x)
    logits = model.forward_head(feats)
    pooled = model.forward_head(feats, pre_logits=True) if want_pooled else None
    return logits, pooled


def invert_batch(teacher: nn.Module, targets: Tensor, cfg: InversionCfg, spec: DataSpec, generator: torch.Generator,
                 student: Optional[nn.Module] = None, student_spec: Optional[DataSpec] = None,
                 bn: Optional[BNStatistics] = None) -> Tuple[Tensor, dict]:
    """Pixels in [0, 1] of the best-loss batch [B, C, H, W] (C = 1 with ``grayscale``) and a summary
    (best loss, its step, the teacher's accuracy on the kept batch). ``teacher`` (and ``student``) frozen,
    in eval mode; ``bn``: hooks already on the teacher (else made and removed here)."""
    channels = 1 if cfg.grayscale else len(spec.mean)
    norm = Normaliser(spec, channels)
    lo, hi = norm.bounds()
    B = len(targets)
    x = torch.randn(B, channels, *spec.img_size, generator=generator).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=cfg.lr, betas=tuple(cfg.betas), eps=1e-8)
    own = bn is None
    bn = bn or BNStatistics(teacher)
    best, best_loss, best_step = x.detach().clone(), math.inf, -1
    try:
        for step in range(cfg.iterations):
            for g in opt.param_groups:   # cosine from lr to 0 (the reference's lr_cosine_policy, no warm-up)
                g["lr"] = 0.5 * (1 + math.cos(math.pi * step / cfg.iterations)) * cfg.lr
            dx, dy = (torch.randint(-cfg.jitter, cfg.jitter + 1, (2,), generator=generator).tolist()
                      if cfg.jitter else (0, 0))
            xj = torch.roll(x, shifts=(dx, dy), dims=(2, 3))
            if cfg.flip and torch.rand((), generator=generator).item() < 0.5:
                xj = torch.flip(xj, dims=(3,))
            inp = norm.to_model(xj)
            logits, pooled = _pooled_and_logits(teacher, inp, cfg.diversity > 0)
            loss = cfg.ce * F.cross_entropy(logits, targets) + cfg.r_bn * bn.loss(cfg.first_bn_mult)
            if cfg.tv_l1 or cfg.tv_l2:
                tv1, tv2 = tv_priors(xj)
                loss = loss + cfg.tv_l1 * tv1 + cfg.tv_l2 * tv2
            if cfg.l2:
                loss = loss + cfg.l2 * l2_prior(xj)
            if cfg.competition and student is not None:
                with torch.no_grad():
                    s_logits = student(norm.to_model(xj, student_spec))
                loss = loss + cfg.competition * competition_loss(s_logits, logits, cfg.competition_T)
            if cfg.diversity:
                loss = loss + cfg.diversity * intra_divergence(pooled, logits, targets, cfg.diversity_margin)
            if loss.item() < best_loss:   # the images this loss was computed on (before the step)
                best, best_loss, best_step = x.detach().clone(), float(loss.item()), step
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                x.data = torch.maximum(torch.minimum(x.data, hi), lo)
        with torch.no_grad():
            acc = (teacher(norm.to_model(best)).argmax(1) == targets).float().mean().item()
            bn.loss(cfg.first_bn_mult)   # consume the statistics of this evaluation forward
    finally:
        if own:
            bn.close()
    return norm.to_pixels(best), {"best_loss": best_loss, "best_step": best_step, "teacher_top1": 100.0 * acc}
