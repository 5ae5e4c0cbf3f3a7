"""DeepInversion's losses on a batch of images being optimised: BatchNorm statistics, image priors,
Adaptive DeepInversion's competition term, and vitkd's reading of DearKD's intra-divergence term.

Facts taken from the reference code (NVlabs/DeepInversion): statistics are read at each BatchNorm INPUT
(forward hooks), mean and biased variance per channel, and compared with the layer's running statistics by
the L2 norm of the difference (mean and variance apart, then added); the first BN layer counts
``first_bn_mult`` (10) times; TV in four directions (right, down and both diagonals), as an L2 norm of each
difference tensor and as a mean absolute difference / 255 (the L1 prior); the l2 prior is the batch mean of
per-image L2 norms; the competition term is ``1 - clamp(JS, 0, 1)`` at T = 3 with the probabilities
clamped to [0.01, 0.99] and each KL taken as the reference's ``KLDivLoss(log P, M)`` (batch mean).
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BNStatistics", "bn_stat_distance", "tv_priors", "l2_prior", "competition_loss", "intra_divergence"]


def bn_stat_distance(x: Tensor, running_mean: Tensor, running_var: Tensor) -> Tensor:
    """``||mean(x) - running_mean||_2 + ||var(x) - running_var||_2`` per channel (dim 1), variance biased."""
    dims = [d for d in range(x.dim()) if d != 1]
    mean = x.mean(dim=dims)
    var = x.var(dim=dims, unbiased=False)
    return torch.linalg.vector_norm(mean - running_mean) + torch.linalg.vector_norm(var - running_var)


class BNStatistics:
    """Forward hooks on every BatchNorm layer of ``model`` (module order) that record, per forward, the
    distance of the layer input's batch statistics to the layer's running statistics.

    ``loss(first_mult)`` = sum over layers of s_l * distance_l, s_1 = ``first_mult`` (the first BN layer in
    module order), 1 elsewhere. The hook handles are kept and removed by :meth:`close` (or ``with``)."""

    def __init__(self, model: nn.Module):
        self.layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not self.layers:
            raise ValueError(f"{type(model).__name__} has no BatchNorm layer (DeepInversion reads BN statistics)")
        self.distances: List[Optional[Tensor]] = [None] * len(self.layers)
        self._handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(self.layers)]

    def _hook(self, i: int):
        def hook(module, inputs, output):
            self.distances[i] = bn_stat_distance(inputs[0], module.running_mean, module.running_var)
        return hook

    def loss(self, first_mult: float = 10.0) -> Tensor:
        missing = [i for i, d in enumerate(self.distances) if d is None]
        if missing:
            raise RuntimeError(f"BN layer {missing[0]} did not run in the last forward")
        total = sum(d * (first_mult if i == 0 else 1.0) for i, d in enumerate(self.distances))
        self.distances = [None] * len(self.layers)
        return total

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _diffs(x: Tensor):
    return (x[:, :, :, :-1] - x[:, :, :, 1:], x[:, :, :-1, :] - x[:, :, 1:, :],
            x[:, :, 1:, :-1] - x[:, :, :-1, 1:], x[:, :, :-1, :-1] - x[:, :, 1:, 1:])


def tv_priors(x: Tensor):
    """(TV L1, TV L2) of images ``x`` [B, C, H, W]: four directions; L2 = sum of the difference tensors'
    L2 norms, L1 = sum of their mean absolute values / 255."""
    d = _diffs(x)
    l2 = sum(torch.linalg.vector_norm(t) for t in d)
    l1 = sum((t.abs() / 255.0).mean() for t in d)
    return l1, l2


def l2_prior(x: Tensor) -> Tensor:
    """Batch mean of the per-image L2 norms."""
    return torch.linalg.vector_norm(x.flatten(1), dim=1).mean()


def competition_loss(student_logits: Tensor, teacher_logits: Tensor, T: float = 3.0) -> Tensor:
    """Adaptive DeepInversion: ``1 - clamp(JS, 0, 1)`` at temperature ``T`` (large where student and teacher
    agree, so minimising it seeks images they disagree on)."""
    p = F.softmax(student_logits / T, dim=1)
    q = F.softmax(teacher_logits / T, dim=1)
    m = (0.5 * (p + q)).clamp(0.01, 0.99)
    p, q = p.clamp(0.01, 0.99), q.clamp(0.01, 0.99)
    js = 0.5 * F.kl_div(p.log(), m, reduction="batchmean") + 0.5 * F.kl_div(q.log(), m, reduction="batchmean")
    return 1.0 - js.clamp(0.0, 1.0)


def intra_divergence(features: Tensor, logits: Tensor, target: Tensor, margin: float) -> Tensor:
    """vitkd's reading of DearKD's boundary-preserving intra-divergence loss (the paper's formula is not public
    in code): the mean cosine similarity of the teacher's pooled features over pairs of same-class images, both
    of whose teacher margins (target logit minus the largest other logit) exceed ``margin``. Minimising it
    pushes same-class images apart while they stay well inside their class (images near the boundary are left
    to the CE term). Zero when no pair qualifies."""
    f = F.normalize(features.flatten(1).float(), dim=1)
    tgt = logits.gather(1, target[:, None]).squeeze(1)
    other = logits.scatter(1, target[:, None], float("-inf")).amax(dim=1)
    safe = (tgt - other) > margin
    pair = (target[:, None] == target[None, :]) & safe[:, None] & safe[None, :]
    pair = pair & ~torch.eye(len(target), dtype=torch.bool, device=target.device)
    if not bool(pair.any()):
        return features.new_zeros(())
    return (f @ f.t())[pair].mean()
