"""Optimizer and learning-rate schedule of a run."""
from __future__ import annotations

import math

import torch

__all__ = ["param_groups", "build_optimizer", "WarmupCosine"]


def param_groups(distiller, weight_decay: float):
    """Two AdamW groups: no decay on norms, biases and every name in ``distiller.no_weight_decay()``
    (the student's own list and each loss term's, e.g. ViTKD's mask token)."""
    skip = distiller.no_weight_decay()
    decay, no_decay = [], []
    for name, p in distiller.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") or name in skip else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def build_optimizer(distiller, tc, steps_per_epoch: int):
    optimizer = torch.optim.AdamW(param_groups(distiller, tc.weight_decay), lr=tc.lr)
    sched = WarmupCosine(optimizer, tc.lr, tc.min_lr, int(round(tc.warmup_epochs * steps_per_epoch)),
                         tc.epochs * steps_per_epoch)
    return optimizer, sched


class WarmupCosine:
    """Per-step learning rate: linear warmup from 0, then cosine to ``min_lr``. Stateless in the step,
    so resuming only needs the step count."""

    def __init__(self, optimizer, lr: float, min_lr: float, warmup_steps: int, total_steps: int):
        self.optimizer, self.lr, self.min_lr = optimizer, lr, min_lr
        self.warmup_steps, self.total_steps = warmup_steps, max(1, total_steps)
        self.step_count = 0
        self._apply()

    def value(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        p = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1 + math.cos(math.pi * min(1.0, p)))

    def _apply(self):
        lr = self.value(self.step_count)
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)

    def step(self):
        self.step_count += 1
        self._apply()

    def state_dict(self):
        return {"step_count": self.step_count}

    def load_state_dict(self, state):
        self.step_count = int(state["step_count"])
        self._apply()
