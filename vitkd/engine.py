"""Training and evaluation: one loop for plain training and every distillation family.

The loop only calls ``distiller(batch) -> (total, terms)``. Each epoch writes metrics (CSV and JSON)
and an atomic checkpoint carrying student, connectors, optimizer, scheduler, EMA, epoch, RNG states
and data order, so ``resume`` continues bit-exactly. Nothing is selected on the test split.
"""
from __future__ import annotations

import json
import math
import os
import platform
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.utils.data import DataLoader

from . import models as model_lib
from .config import ConfigError, RunCfg, parse_config, to_dict
from .data import DataSpec, EpochSampler, build_datasets, sample_seed, seeded
from .distiller import Distiller, build_distiller
from .io import atomic_save_safetensors, atomic_torch_save, atomic_write_csv, atomic_write_json, atomic_write_text
from .losses import Batch

__all__ = ["train", "evaluate", "load_checkpoint", "Run", "build_run", "resolve_device", "WarmupCosine",
           "CHECKPOINT_NAME", "versions"]

CHECKPOINT_NAME = "checkpoint.pt"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' asked for but no CUDA device is available")
    return torch.device(name)


def versions() -> Dict[str, str]:
    import timm
    import torchvision
    from . import __version__
    return {"vitkd": __version__, "torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
            "timm": timm.__version__, "numpy": np.__version__, "python": platform.python_version()}


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


def _rng_state() -> dict:
    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.random.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict):
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.random.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


@dataclass
class Run:
    cfg: RunCfg
    student: nn.Module
    distiller: Distiller
    datasets: dict
    num_classes: int
    spec: DataSpec
    device: torch.device


def build_run(cfg: RunCfg) -> Run:
    """Build everything a run needs from a validated config (fails with ConfigError before any work)."""
    device = resolve_device(cfg.train.device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    # the number of classes comes from the data; data needs the model's input spec: probe cheaply
    torch.manual_seed(cfg.seed)
    probe = model_lib.create(cfg.model.name, 10, cfg.model.args, where="model")
    spec = model_lib.data_spec(probe, cfg.data.img_size)
    datasets, num_classes = build_datasets(cfg.data, spec, cfg.seed)
    torch.manual_seed(cfg.seed)
    student = model_lib.create(cfg.model.name, num_classes, cfg.model.args, cfg.model.checkpoint, where="model")
    distiller = build_distiller(cfg, student, num_classes, spec.img_size, student_spec=spec)
    distiller.to(device)
    return Run(cfg, student, distiller, datasets, num_classes, spec, device)


def _loader(ds, batch_size, sampler, num_workers, drop_last=False):
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      drop_last=drop_last, pin_memory=False, persistent_workers=False)


@torch.no_grad()
def evaluate(model: nn.Module, dataset, batch_size: int, device: torch.device, num_workers: int = 0,
             amp: bool = False) -> Dict[str, float]:
    """Top-1 (%) and mean cross-entropy of ``model`` (its plain forward) on a whole split."""
    was = model.training
    model.eval()
    loader = _loader(dataset, batch_size, EpochSampler(len(dataset), 0, shuffle=False), num_workers)
    correct, loss_sum, n = 0, 0.0, 0
    for x, y, _ in loader:
        x, y = x.to(device), y.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
            logits = model(x)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(-1) == y).sum().item()
        n += len(y)
    model.train(was)
    return {"top1": 100.0 * correct / max(1, n), "loss": loss_sum / max(1, n)}


def _param_groups(distiller: Distiller, weight_decay: float):
    skip = {f"student.{n}" for n in getattr(distiller.student, "no_weight_decay", lambda: set())()}
    decay, no_decay = [], []
    for name, p in distiller.named_parameters():
        if not p.requires_grad:
            continue
        # no decay on norms, biases, the student's own no_weight_decay() and learned tokens (cls/dist/mask)
        token = name.rsplit(".", 1)[-1].endswith("token")
        (no_decay if p.ndim <= 1 or name.endswith(".bias") or name in skip or token else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def load_checkpoint(path) -> dict:
    p = Path(path)
    if p.is_dir():
        p = p / CHECKPOINT_NAME
    if not p.is_file():
        raise ConfigError(f"checkpoint not found: {path}")
    try:
        return torch.load(p, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ConfigError(f"checkpoint {p}: cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None


def _write_metrics(out: Path, history: List[dict], meta: dict):
    atomic_write_csv(out / "metrics.csv", history)
    atomic_write_json(out / "metrics.json", {**meta, "epochs": history, "final": history[-1] if history else {}})


def train(cfg: RunCfg, out_dir, resume: bool = False, log=print) -> dict:
    """Train ``cfg`` into ``out_dir``; returns the last epoch's metrics."""
    out = Path(out_dir)
    ckpt = None
    if resume:
        ckpt = load_checkpoint(out)
        saved = parse_config(ckpt["config"])
        if to_dict(saved) != to_dict(cfg):
            cfg = saved   # the run's own config wins: resuming continues the same experiment
    run = build_run(cfg)
    tc, dc = cfg.train, cfg.data
    device, distiller, student = run.device, run.distiller, run.student
    train_ds = run.datasets["train"]
    sampler = EpochSampler(len(train_ds), cfg.seed, shuffle=True, repeats=dc.repeated_aug)
    mixing = tc.mixup > 0 or tc.cutmix > 0
    loader = _loader(train_ds, dc.batch_size, sampler, dc.num_workers, drop_last=mixing)
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise ConfigError(f"data.batch_size: {dc.batch_size} is larger than the {len(train_ds)} train images")
    optimizer = torch.optim.AdamW(_param_groups(distiller, tc.weight_decay), lr=tc.lr)
    sched = WarmupCosine(optimizer, tc.lr, tc.min_lr, int(round(tc.warmup_epochs * steps_per_epoch)),
                         tc.epochs * steps_per_epoch)
    mixup = None
    if mixing:
        from timm.data import Mixup
        mixup = Mixup(mixup_alpha=tc.mixup, cutmix_alpha=tc.cutmix, prob=tc.mixup_prob,
                      label_smoothing=tc.label_smoothing, num_classes=run.num_classes)
    ema = None
    if tc.ema_decay is not None:
        from timm.utils import ModelEmaV3
        ema = ModelEmaV3(student, decay=tc.ema_decay)
    history: List[dict] = []
    start_epoch = 0
    if ckpt is not None:
        student.load_state_dict(ckpt["student"])
        distiller.terms.load_state_dict(ckpt["connectors"])
        optimizer.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        if ema is not None and ckpt.get("ema") is not None:
            ema.load_state_dict(ckpt["ema"])
        history = list(ckpt["history"])
        start_epoch = int(ckpt["epoch"]) + 1
        _set_rng_state(ckpt["rng"])
        log(f"resumed {out} at epoch {start_epoch}/{tc.epochs}")
    else:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
        torch.manual_seed(sample_seed(cfg.seed, 0xD0))   # dropout / drop-path stream of this run
    meta = {"num_classes": run.num_classes, "img_size": list(run.spec.img_size), "mean": list(run.spec.mean),
            "std": list(run.spec.std), "train_images": len(train_ds), "device": str(device),
            "versions": versions(), "model": cfg.model.name}
    atomic_write_text(out / "run.yaml", yaml.safe_dump(meta, sort_keys=False))
    amp = tc.amp and device.type == "cuda"
    total_steps = tc.epochs * steps_per_epoch
    from tqdm import tqdm

    for epoch in range(start_epoch, tc.epochs):
        t0 = time.perf_counter()
        train_ds.set_epoch(epoch)
        sampler.set_epoch(epoch)
        distiller.train()
        sums: Dict[str, float] = {}
        seen = 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{tc.epochs}", leave=False, disable=None if tc.progress else True,
                   file=sys.stderr)
        for step, (x, y, idx) in enumerate(bar):
            x, y = x.to(device), y.to(device)
            soft = None
            if mixup is not None:
                with seeded(sample_seed(cfg.seed, epoch, step, 0x31)):
                    x, soft = mixup(x, y)
            gstep = epoch * steps_per_epoch + step
            batch = Batch(images=x, target=y, soft_target=soft, index=idx, epoch=epoch,
                          progress=gstep / total_steps)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss, parts = distiller(batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at epoch {epoch} step {step}: "
                                         + ", ".join(f"{k}={v.item():.4g}" for k, v in parts.items()))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if tc.clip_grad:
                torch.nn.utils.clip_grad_norm_(distiller.trainable_parameters(), tc.clip_grad)
            optimizer.step()
            sched.step()
            if ema is not None:
                ema.update(student, step=gstep)
            sums["loss"] = sums.get("loss", 0.0) + loss.item() * len(y)
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v.item() * len(y)
            seen += len(y)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        row = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"]}
        row.update({f"train_{k}": v / seen for k, v in sums.items()})
        if (epoch + 1) % tc.eval_every == 0 or epoch + 1 == tc.epochs:
            for split in ("val", "test"):
                r = evaluate(student, run.datasets[split], dc.eval_batch_size, device, dc.num_workers, amp)
                row[f"{split}_top1"], row[f"{split}_loss"] = r["top1"], r["loss"]
                if ema is not None:
                    r = evaluate(ema.module, run.datasets[split], dc.eval_batch_size, device, dc.num_workers, amp)
                    row[f"ema_{split}_top1"] = r["top1"]
        row["epoch_time_s"] = time.perf_counter() - t0
        history.append(row)
        state = {"version": 1, "config": to_dict(cfg), "epoch": epoch, "student": student.state_dict(),
                 "connectors": distiller.connector_state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": sched.state_dict(), "ema": ema.state_dict() if ema is not None else None,
                 "rng": _rng_state(), "history": history, "num_classes": run.num_classes,
                 "data_order": {"sampler": "EpochSampler", "seed": cfg.seed, "next_epoch": epoch + 1,
                                "repeats": dc.repeated_aug, "train_images": len(train_ds)}}
        atomic_torch_save(state, out / CHECKPOINT_NAME)
        _write_metrics(out, history, meta)
        evals = f" val {row['val_top1']:.2f} test {row['test_top1']:.2f}" if "val_top1" in row else ""
        log(f"epoch {epoch + 1}/{tc.epochs} loss {row['train_loss']:.4f}{evals} ({row['epoch_time_s']:.1f}s)")
    atomic_save_safetensors(student.state_dict(), out / model_lib.WEIGHTS_NAME,
                            metadata={"model": cfg.model.name, "num_classes": run.num_classes})
    if ema is not None:
        atomic_save_safetensors(ema.module.state_dict(), out / "model_ema.safetensors",
                                metadata={"model": cfg.model.name, "num_classes": run.num_classes})
    distiller.close()
    return history[-1]
