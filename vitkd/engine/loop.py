"""The training loop: one loop for plain training and every distillation family.

The loop only calls ``distiller(batch) -> (total, terms)``; it knows no method by name. Under
``torchrun`` every process runs this loop as one rank of the run (see :mod:`vitkd.dist`): it joins the
process group from the environment, reads its shard of the epoch's permutation (``data.batch_size`` images per
rank and step, so the global batch is world size x batch), calls the distiller through
DistributedDataParallel (student and connectors; teachers outside), combines sums through one reducer and
evaluates its share of each split (:mod:`vitkd.evaluate`); rank 0 alone writes the run folder and prints, and
the checkpoint carries every rank's RNG state. Mixup/CutMix is drawn per sample from (seed, epoch, index), so it
does not depend on the batch size or the process count. Nothing is selected on the test split.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..config import ConfigError, RunCfg, config_paths, step_bf16, to_dict
from ..data import EpochSampler, sample_seed, train_view
from ..losses import Batch
from ..rundir import RunDir, ensure_writable, exclusive
from .._version import versions
from ..dist import (Reducer, World, barrier, convert_sync_batchnorm, current_world, join_from_env, leave,
                    reducer_for, resolve_device, wrap_for_ranks)
from ..evaluate import evaluate
from .build import Run, build_run, dry_forward
from .checkpoint import load_checkpoint, resume_changes, rng_state, save_checkpoint, set_rng_state
from .optim import build_optimizer

__all__ = ["train", "NonFiniteLoss", "epoch_means", "check_target", "world_size_notes"]


class NonFiniteLoss(RuntimeError):
    """A loss became NaN or infinite; the run stops and keeps its last good checkpoint."""


def _loader(ds, batch_size, sampler, num_workers, drop_last=False):
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      drop_last=drop_last, pin_memory=False, persistent_workers=False)


def epoch_means(sums: Dict[str, float], seen: float, reducer: Reducer) -> Dict[str, float]:
    """Per-image means of an epoch's loss sums over every rank."""
    total = reducer.sum({**sums, "__seen__": seen})
    n = max(1.0, total.pop("__seen__"))
    return {k: v / n for k, v in total.items()}


def check_target(run: RunDir, resume: bool, overwrite: bool, cfg: RunCfg) -> bool:
    """Whether the run continues from a checkpoint. A resume of a run killed before its first checkpoint
    (its config is there, no checkpoint) starts it again from the beginning. A folder the run reads (a
    teacher's, its initial weights', its synthetic set's, or one holding them) is never its output."""
    out = os.path.realpath(run.path)
    for key, value in config_paths(cfg):
        read = os.path.realpath(value)
        if read == out or read.startswith(out + os.sep):
            raise ConfigError(f"--out {run.path}: the run reads {key} there ({value}); a run never writes over "
                              f"what it reads (choose another --out)")
    if resume:
        if not run.has_checkpoint() and not (run.config_path.is_file() and not run.is_finished()):
            raise ConfigError(f"--resume: no checkpoint in {run.path} (nothing to continue)")
        return run.has_checkpoint()
    if run.holds_a_run() and not overwrite:
        raise ConfigError(f"--out {run.path}: already holds a run (use --resume to continue or --overwrite)")
    return False


def world_size_notes(distiller, student: nn.Module) -> Dict[str, str]:
    """What makes this run's trajectory depend on the number of processes, by name: the loss terms that
    declare it (``LossTerm.world_size_dependent``), a student (or a teacher trained with it) with unsynchronised
    BatchNorm, and one with active dropout / drop-path (each rank draws its own masks)."""
    notes = {}
    for i, term in enumerate(distiller.terms):
        if getattr(term, "world_size_dependent", False):
            notes[f"terms[{i}] {term.label}"] = term.world_size_reason or "declared world-size dependent"
    trained = {"student": student, **{f"teacher {k}": t for k, t in distiller.trained_teachers().items()}}
    for who, model in trained.items():
        bn = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if any(not isinstance(m, nn.SyncBatchNorm) for m in bn):
            notes[f"{who} BatchNorm"] = "batch statistics of each rank's batch" + \
                (" (train.sync_bn: true syncs them)" if who == "student" else "")
        drops = [m for m in model.modules() if (isinstance(m, nn.Dropout) and m.p > 0)
                 or (type(m).__name__ == "DropPath" and getattr(m, "drop_prob", 0.0) > 0)]
        if drops:
            notes[f"{who} dropout/drop-path"] = "each rank draws its own masks"
    return notes


def train(cfg: RunCfg, out_dir, resume: bool = False, overwrite: bool = False,
          log: Callable[[str], None] = print) -> dict:
    """Train ``cfg`` into the run folder ``out_dir``; returns the last epoch's metrics.

    A folder that holds another run is refused unless ``overwrite`` (its files are then cleared first, the
    stamp and weights before anything else) or ``resume`` (the run continues from its checkpoint; its
    config may differ only in the keys of :data:`vitkd.engine.checkpoint.RESUME_MAY_CHANGE`).

    Launched by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment), each process joins the process group
    first (gloo on CPU, nccl on CUDA, one GPU per process by ``LOCAL_RANK``) and leaves it at the end."""
    joined = join_from_env(resolve_device(cfg.train.device))
    try:   # rank 0, the one writer of the folder, holds it: a second writer gets one line
        with exclusive(out_dir) if current_world().is_main else contextlib.nullcontext():
            final = _train(cfg, out_dir, resume, overwrite, log)
        barrier(current_world())   # every rank leaves together, after rank 0 has written the folder
        return final
    finally:
        leave(joined)


def _train(cfg: RunCfg, out_dir, resume: bool, overwrite: bool, log: Callable[[str], None]) -> dict:
    """The run, step by step: checks and building, restore (or a fresh start), each epoch's training and
    evaluation, the finished run folder."""
    t, ckpt, changes = _prepare(cfg, out_dir, resume, overwrite, log)
    _restore_or_start(t, ckpt, changes, resume)
    tc = cfg.train
    for epoch in range(t.start_epoch, tc.epochs):
        t0 = time.perf_counter()
        row = _train_epoch(t, epoch)
        if (epoch + 1) % tc.eval_every == 0 or epoch + 1 == tc.epochs:
            _evaluate_epoch(t, epoch, row)
        row["epoch_time_s"] = time.perf_counter() - t0
        _end_epoch(t, epoch, row)
    _finish(t)
    return t.history[-1]


@dataclass
class _Training:
    """A training run in progress: what :func:`_prepare` built, and what the epochs change."""
    cfg: RunCfg
    run_dir: RunDir
    world: World
    log: Callable[[str], None]
    run: Run
    train_ds: Any                  # the train split as training reads it (augmented, mixed)
    sampler: EpochSampler
    loader: DataLoader
    optimizer: Any
    sched: Any
    model: nn.Module               # what a step calls: the distiller, or its trainable part under DDP
    ema: Any
    reducer: Reducer
    meta: dict
    amp: bool
    history: List[dict] = field(default_factory=list)
    start_epoch: int = 0
    start_step: int = 0
    sums: Dict[str, float] = field(default_factory=dict)   # this epoch's loss sums so far, and the images seen
    seen: float = 0.0

    @property
    def steps_per_epoch(self) -> int:
        return len(self.loader)

    def state(self, epoch: int, step_in_epoch: int, epoch_done: bool) -> dict:
        """The checkpoint's contents after ``step_in_epoch`` steps of ``epoch`` (every rank's RNG state gathered)."""
        cfg, world, distiller = self.cfg, self.world, self.run.distiller
        rngs = self.reducer.gather(rng_state())
        return {"config": to_dict(cfg), "epoch": epoch, "epoch_done": epoch_done, "step_in_epoch": step_in_epoch,
                "sums": dict(self.sums), "seen": self.seen, "student": self.run.student.state_dict(),
                "connectors": distiller.connector_state_dict(), "teachers": distiller.teacher_state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.sched.state_dict(), "ema": self.ema.state_dict() if self.ema is not None else None,
                "rng": rngs if world.size > 1 else rngs[0], "history": self.history,
                "num_classes": self.run.num_classes,
                "data_order": {"sampler": "EpochSampler", "seed": cfg.seed, "repeats": cfg.data.repeated_aug,
                               "train_images": len(self.train_ds), "world_size": world.size}}


def _check_resume(run_dir: RunDir, world: World, cfg: RunCfg, resume: bool, overwrite: bool):
    """(the checkpoint the run continues from or None, the config changes a resume brings), refused in one line
    before anything is built."""
    from_checkpoint = check_target(run_dir, resume, overwrite, cfg)
    if world.is_main:
        ensure_writable(run_dir.path)
    ckpt, changes = None, {}
    if from_checkpoint:
        ckpt = load_checkpoint(run_dir.path)
        saved_world = int((ckpt.get("data_order") or {}).get("world_size", 1))
        if saved_world != world.size:
            raise ConfigError(f"--resume: {run_dir.path} was trained by {saved_world} process(es), not {world.size} "
                              f"(resume it with the same number of processes)")
        changes = resume_changes(ckpt["config"], to_dict(cfg))
    elif resume:   # killed before its first checkpoint: the same policy, then a fresh start
        resume_changes(run_dir.read_config(), to_dict(cfg))
    return ckpt, changes


def _prepare(cfg: RunCfg, out_dir, resume: bool, overwrite: bool, log: Callable[[str], None]):
    """The checks, then everything the run needs built (model/data mismatches fail before any file is written):
    (the run in progress, the checkpoint it continues from, the changes the resume brings)."""
    run_dir, world = RunDir(out_dir), current_world()
    if not world.is_main:
        log = lambda m: None   # noqa: E731 - rank 0 alone prints
    ckpt, changes = _check_resume(run_dir, world, cfg, resume, overwrite)
    barrier(world)   # every rank has checked the folder before rank 0 clears or writes it
    run = build_run(cfg, world)
    tc, dc = cfg.train, cfg.data
    if tc.sync_bn and world.size > 1:
        if run.device.type != "cuda":
            raise ConfigError("train.sync_bn: SyncBatchNorm needs CUDA (this run is on the CPU)")
        convert_sync_batchnorm(run.student)
    reducer = reducer_for(world, run.device)
    train_ds = train_view(run.datasets["train"], tc)
    mix_on = train_ds is not run.datasets["train"]
    sampler = EpochSampler(len(train_ds), cfg.seed, shuffle=True, rank=world.rank, world=world.size,
                           repeats=dc.repeated_aug)
    loader = _loader(train_ds, dc.batch_size, sampler, dc.num_workers, drop_last=mix_on)
    if len(loader) == 0:
        raise ConfigError(f"data.batch_size: {dc.batch_size} is larger than the {len(train_ds)} train images")
    dry_forward(run.distiller, train_ds, cfg)   # a model/data mismatch fails here, before anything is written
    if world.is_main:
        ensure_writable(run_dir.path)   # the first thing created: a config that cannot train leaves no folder
    optimizer, sched = build_optimizer(run.distiller, tc, len(loader))
    model = wrap_for_ranks(run.distiller, world, run.device)   # the distiller itself for one process
    ema = None
    if tc.ema_decay is not None:
        from timm.utils import ModelEmaV3
        ema = ModelEmaV3(run.student, decay=tc.ema_decay)
    run.distiller.bind(ema=ema.module if ema is not None else None)   # a teacher source may read the EMA
    meta = _run_meta(cfg, run, train_ds, world)
    amp = step_bf16(tc.precision, tc.amp, run.device.type)
    t = _Training(cfg, run_dir, world, log, run, train_ds, sampler, loader, optimizer, sched, model, ema, reducer,
                  meta, amp)
    return t, ckpt, changes


def _run_meta(cfg: RunCfg, run: Run, train_ds, world: World) -> dict:
    """The run folder's metadata: classes, input spec, split sizes, device, precision, versions, ranks."""
    dc = cfg.data
    meta = {"num_classes": run.num_classes, "img_size": list(run.spec.img_size), "mean": list(run.spec.mean),
            "std": list(run.spec.std), "train_images": len(train_ds), "val_images": len(run.datasets["val"]),
            "test_images": len(run.datasets["test"]), "device": str(run.device),
            "precision": "bf16" if step_bf16(cfg.train.precision, cfg.train.amp, run.device.type) else "fp32",
            "versions": versions(), "model": cfg.model.name, "world_size": world.size,
            "batch_per_rank": dc.batch_size, "resumes": []}
    if world.size > 1:
        meta["global_batch"] = world.size * dc.batch_size
        meta["world_size_dependent"] = world_size_notes(run.distiller, run.student)
    return meta


def _restore_or_start(t: _Training, ckpt, changes: dict, resume: bool) -> None:
    """Continue from ``ckpt`` (student, connectors, optimizer, schedule, EMA, history, the epoch's sums, every
    rank's RNG state), or start afresh: the folder cleared, the config written, the run's dropout stream seeded.
    Then the run folder's metadata is written."""
    cfg, world, run_dir, tc = t.cfg, t.world, t.run_dir, t.cfg.train
    if ckpt is not None:
        t.run.student.load_state_dict(ckpt["student"])
        t.run.distiller.terms.load_state_dict(ckpt["connectors"])
        t.run.distiller.load_teacher_state_dict(ckpt.get("teachers"))
        t.optimizer.load_state_dict(ckpt["optimizer"])
        t.sched.load_state_dict(ckpt["scheduler"])
        if t.ema is not None and ckpt.get("ema") is not None:
            t.ema.load_state_dict(ckpt["ema"])
        t.history = list(ckpt["history"])
        if ckpt.get("epoch_done", True):
            t.start_epoch = int(ckpt["epoch"]) + 1
        else:
            t.start_epoch, t.start_step = int(ckpt["epoch"]), int(ckpt["step_in_epoch"])
            t.sums, t.seen = dict(ckpt["sums"]), float(ckpt["seen"])
        rngs = ckpt["rng"]
        set_rng_state(rngs[world.rank] if isinstance(rngs, list) else rngs)
        t.meta["resumes"] = list(run_dir.read_meta().get("resumes", []))
        if changes:
            t.meta["resumes"].append({"at_step": t.start_epoch * t.steps_per_epoch + t.start_step,
                                      "changes": {k: list(v) for k, v in changes.items()},
                                      "note": "allowed config change: no longer bit-identical to an uninterrupted "
                                              "run"})
        done = f"{t.start_epoch} of {tc.epochs} epochs done" + (f" and {t.start_step} steps" if t.start_step else "")
        t.log(f"resumed {run_dir.path}: {done}")
    else:
        if resume:
            t.log(f"resumed {run_dir.path}: 0 of {tc.epochs} epochs done (no checkpoint yet: starting from the start)")
        if world.is_main:
            run_dir.clear()
            run_dir.write_config(to_dict(cfg))
        # dropout / drop-path stream of this run; each further rank draws its own
        torch.manual_seed(sample_seed(cfg.seed, 0xD0) if world.rank == 0 else sample_seed(cfg.seed, 0xD0, world.rank))
    if world.is_main:
        run_dir.remove_stray_temp_files()
        run_dir.write_meta(t.meta)


def _train_epoch(t: _Training, epoch: int) -> dict:
    """One epoch of steps (from ``t.start_step`` in the epoch a run resumed inside); a checkpoint every
    ``train.checkpoint_every`` steps. Returns the epoch's row so far: lr and per-image train losses."""
    from tqdm import tqdm
    tc, dc, world, device = t.cfg.train, t.cfg.data, t.world, t.run.device
    distiller, steps_per_epoch = t.run.distiller, t.steps_per_epoch
    t.train_ds.set_epoch(epoch)
    first = t.start_step if epoch == t.start_epoch else 0
    t.sampler.set_epoch(epoch, start=first * dc.batch_size)
    if first == 0:
        t.sums, t.seen = {}, 0.0
    # a DataLoader iterator draws a seed from the torch RNG as it starts; a run resumed inside an epoch restored
    # the RNG state that followed that draw, so its iterator draws from a generator of its own
    t.loader.generator = torch.Generator() if first else None
    distiller.train()
    bar = tqdm(t.loader, desc=f"epoch {epoch + 1}/{tc.epochs}", leave=False,
               disable=None if tc.progress and world.is_main else True, file=sys.stderr)
    keys = t.sampler.order() if dc.repeated_aug > 1 else None   # (index, copy) of every sample, in order
    total_steps = tc.epochs * steps_per_epoch
    for step, item in enumerate(bar, start=first):
        x, y, idx = item[0].to(device), item[1].to(device), item[2]
        soft = item[3].to(device) if len(item) > 3 else None
        gstep = epoch * steps_per_epoch + step
        copy = None if keys is None else torch.tensor([c for _, c in keys[step * dc.batch_size:][:len(idx)]])
        batch = Batch(images=x, target=y, soft_target=soft, index=idx, epoch=epoch, copy=copy,
                      progress=gstep / total_steps)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=t.amp):
            loss, parts = t.model(batch)
        if not torch.isfinite(loss):
            bad = next((k for k, v in parts.items() if not torch.isfinite(v)), "total")
            raise NonFiniteLoss(f"non-finite loss in term '{bad}' at epoch {epoch + 1} step {step + 1} "
                                f"(global step {gstep + 1}); the last good checkpoint is kept")
        t.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if tc.clip_grad:
            torch.nn.utils.clip_grad_norm_(distiller.trainable_parameters(), tc.clip_grad)
        t.optimizer.step()
        t.sched.step()
        if t.ema is not None:
            t.ema.update(t.run.student, step=gstep)
        t.sums["loss"] = t.sums.get("loss", 0.0) + loss.item() * len(y)
        for k, v in parts.items():
            t.sums[k] = t.sums.get(k, 0.0) + v.item() * len(y)
        t.seen += len(y)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        every = tc.checkpoint_every
        if every and (gstep + 1) % every == 0 and step + 1 < steps_per_epoch:
            st = t.state(epoch, step + 1, False)
            if world.is_main:
                save_checkpoint(t.run_dir, st)
    row = {"epoch": epoch + 1, "lr": t.optimizer.param_groups[0]["lr"]}
    row.update({f"train_{k}": v for k, v in epoch_means(t.sums, t.seen, t.reducer).items()})
    return row


def _evaluate_epoch(t: _Training, epoch: int, row: dict) -> None:
    """Val and test top-1 and loss of the student (and top-1 of its EMA, of each teacher trained with it and of
    their ensemble) into ``row``; after the last epoch, every image's predictions into the run folder."""
    dc, run = t.cfg.data, t.run
    last = epoch + 1 == t.cfg.train.epochs
    for split in ("val", "test"):
        r = evaluate(run.student, run.datasets[split], dc.eval_batch_size, run.device, dc.num_workers, t.amp,
                     t.world, t.reducer, keep_logits=last)
        row[f"{split}_top1"], row[f"{split}_loss"] = r["top1"], r["loss"]
        if last and t.world.is_main:
            t.run_dir.save_predictions(split, r["logits"], r["targets"], r["indices"])
        if t.ema is not None:
            r = evaluate(t.ema.module, run.datasets[split], dc.eval_batch_size, run.device, dc.num_workers, t.amp,
                         t.world, t.reducer)
            row[f"ema_{split}_top1"] = r["top1"]
        for name, model in run.distiller.evaluated_models().items():   # trained teachers and their ensemble
            r = evaluate(model, run.datasets[split], dc.eval_batch_size, run.device, dc.num_workers, t.amp,
                         t.world, t.reducer)
            row[f"{name}_{split}_top1"] = r["top1"]


def _end_epoch(t: _Training, epoch: int, row: dict) -> None:
    """The epoch's row into the history, the checkpoint and the metrics written, one line printed."""
    t.history.append(row)
    st = t.state(epoch, 0, True)
    if t.world.is_main:
        save_checkpoint(t.run_dir, st)
        t.run_dir.write_metrics(t.history, t.meta)
    evals = f" val {row['val_top1']:.2f} test {row['test_top1']:.2f}" if "val_top1" in row else ""
    t.log(f"epoch {epoch + 1}/{t.cfg.train.epochs} loss {row['train_loss']:.4f}{evals} ({row['epoch_time_s']:.1f}s)")


def _finish(t: _Training) -> None:
    """The finished run folder: metrics, the student's (and EMA's, and each trained teacher's) weights, then the
    stamp, last."""
    cfg, run_dir = t.cfg, t.run_dir
    if t.world.is_main:
        run_dir.write_metrics(t.history, t.meta)   # again: a kill after the last checkpoint may have cut its write
        weights_meta = {"model": cfg.model.name, "num_classes": t.run.num_classes}
        run_dir.save_weights(t.run.student.state_dict(), weights_meta)
        if t.ema is not None:
            run_dir.save_weights(t.ema.module.state_dict(), weights_meta, ema=True)
        for name, source in t.run.distiller.trained_teachers().items():
            model, meta = source.exported()
            run_dir.save_teacher_weights(name, model.state_dict(), {**meta, "num_classes": t.run.num_classes})
        run_dir.write_stamp(to_dict(cfg))   # last: the run is finished
    t.run.distiller.close()
