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
from typing import Callable, Dict, List

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..config import ConfigError, RunCfg, config_paths, step_bf16, to_dict
from ..data import EpochSampler, sample_seed, train_view
from ..losses import Batch
from ..rundir import RunDir, ensure_writable, exclusive
from .._version import versions
from ..dist import (Reducer, barrier, convert_sync_batchnorm, current_world, join_from_env, leave, reducer_for,
                    resolve_device, wrap_for_ranks)
from ..evaluate import evaluate
from .build import build_run, dry_forward
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
    declare it (``LossTerm.world_size_dependent``), a student with (unsynchronised) BatchNorm, and a
    student with active dropout / drop-path (each rank draws its own masks)."""
    notes = {}
    for i, term in enumerate(distiller.terms):
        if getattr(term, "world_size_dependent", False):
            notes[f"terms[{i}] {term.label}"] = term.world_size_reason or "declared world-size dependent"
    bn = [m for m in student.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if any(not isinstance(m, nn.SyncBatchNorm) for m in bn):
        notes["student BatchNorm"] = "batch statistics of each rank's batch (train.sync_bn: true syncs them)"
    drops = [m for m in student.modules() if (isinstance(m, nn.Dropout) and m.p > 0)
             or (type(m).__name__ == "DropPath" and getattr(m, "drop_prob", 0.0) > 0)]
    if drops:
        notes["student dropout/drop-path"] = "each rank draws its own masks"
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
    run_dir = RunDir(out_dir)
    world = current_world()
    if not world.is_main:
        log = lambda m: None   # noqa: E731 - rank 0 alone prints
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
    barrier(world)   # every rank has checked the folder before rank 0 clears or writes it
    run = build_run(cfg, world)
    tc, dc = cfg.train, cfg.data
    device, distiller, student = run.device, run.distiller, run.student
    if tc.sync_bn and world.size > 1:
        if device.type != "cuda":
            raise ConfigError("train.sync_bn: SyncBatchNorm needs CUDA (this run is on the CPU)")
        convert_sync_batchnorm(student)
    reducer = reducer_for(world, device)
    train_ds = train_view(run.datasets["train"], tc)
    mix_on = train_ds is not run.datasets["train"]
    sampler = EpochSampler(len(train_ds), cfg.seed, shuffle=True, rank=world.rank, world=world.size,
                           repeats=dc.repeated_aug)
    loader = _loader(train_ds, dc.batch_size, sampler, dc.num_workers, drop_last=mix_on)
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise ConfigError(f"data.batch_size: {dc.batch_size} is larger than the {len(train_ds)} train images")
    dry_forward(distiller, train_ds, cfg)   # a model/data mismatch fails here, before anything is written
    if world.is_main:
        ensure_writable(run_dir.path)   # the first thing created: a config that cannot train leaves no folder
    optimizer, sched = build_optimizer(distiller, tc, steps_per_epoch)
    model = wrap_for_ranks(distiller, world, device)   # the distiller itself for one process
    ema = None
    if tc.ema_decay is not None:
        from timm.utils import ModelEmaV3
        ema = ModelEmaV3(student, decay=tc.ema_decay)
    history: List[dict] = []
    start_epoch, start_step = 0, 0
    sums: Dict[str, float] = {}
    seen = 0.0
    meta = {"num_classes": run.num_classes, "img_size": list(run.spec.img_size), "mean": list(run.spec.mean),
            "std": list(run.spec.std), "train_images": len(train_ds), "val_images": len(run.datasets["val"]),
            "test_images": len(run.datasets["test"]), "device": str(device),
            "precision": "bf16" if step_bf16(cfg.train.precision, cfg.train.amp, device.type) else "fp32",
            "versions": versions(), "model": cfg.model.name, "world_size": world.size,
            "batch_per_rank": dc.batch_size, "resumes": []}
    if world.size > 1:
        meta["global_batch"] = world.size * dc.batch_size
        meta["world_size_dependent"] = world_size_notes(distiller, student)
    if ckpt is not None:
        student.load_state_dict(ckpt["student"])
        distiller.terms.load_state_dict(ckpt["connectors"])
        optimizer.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        if ema is not None and ckpt.get("ema") is not None:
            ema.load_state_dict(ckpt["ema"])
        history = list(ckpt["history"])
        if ckpt.get("epoch_done", True):
            start_epoch = int(ckpt["epoch"]) + 1
        else:
            start_epoch, start_step = int(ckpt["epoch"]), int(ckpt["step_in_epoch"])
            sums, seen = dict(ckpt["sums"]), float(ckpt["seen"])
        rngs = ckpt["rng"]
        set_rng_state(rngs[world.rank] if isinstance(rngs, list) else rngs)
        meta["resumes"] = list(run_dir.read_meta().get("resumes", []))
        if changes:
            meta["resumes"].append({"at_step": start_epoch * steps_per_epoch + start_step,
                                    "changes": {k: list(v) for k, v in changes.items()},
                                    "note": "allowed config change: no longer bit-identical to an uninterrupted run"})
        done = f"{start_epoch} of {tc.epochs} epochs done" + (f" and {start_step} steps" if start_step else "")
        log(f"resumed {run_dir.path}: {done}")
    else:
        if resume:
            log(f"resumed {run_dir.path}: 0 of {tc.epochs} epochs done (no checkpoint yet: starting from the start)")
        if world.is_main:
            run_dir.clear()
            run_dir.write_config(to_dict(cfg))
        # dropout / drop-path stream of this run; each further rank draws its own
        torch.manual_seed(sample_seed(cfg.seed, 0xD0) if world.rank == 0 else sample_seed(cfg.seed, 0xD0, world.rank))
    if world.is_main:
        run_dir.remove_stray_temp_files()
        run_dir.write_meta(meta)
    amp = step_bf16(tc.precision, tc.amp, device.type)
    total_steps = tc.epochs * steps_per_epoch
    from tqdm import tqdm

    def state(epoch: int, step_in_epoch: int, epoch_done: bool) -> dict:
        rngs = reducer.gather(rng_state())
        return {"config": to_dict(cfg), "epoch": epoch, "epoch_done": epoch_done, "step_in_epoch": step_in_epoch,
                "sums": dict(sums), "seen": seen, "student": student.state_dict(),
                "connectors": distiller.connector_state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": sched.state_dict(), "ema": ema.state_dict() if ema is not None else None,
                "rng": rngs if world.size > 1 else rngs[0], "history": history, "num_classes": run.num_classes,
                "data_order": {"sampler": "EpochSampler", "seed": cfg.seed, "repeats": dc.repeated_aug,
                               "train_images": len(train_ds), "world_size": world.size}}

    for epoch in range(start_epoch, tc.epochs):
        t0 = time.perf_counter()
        train_ds.set_epoch(epoch)
        first = start_step if epoch == start_epoch else 0
        sampler.set_epoch(epoch, start=first * dc.batch_size)
        if first == 0:
            sums, seen = {}, 0.0
        # a DataLoader iterator draws a seed from the torch RNG as it starts; a run resumed inside an epoch restored
        # the RNG state that followed that draw, so its iterator draws from a generator of its own
        loader.generator = torch.Generator() if first else None
        distiller.train()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{tc.epochs}", leave=False,
                   disable=None if tc.progress and world.is_main else True, file=sys.stderr)
        keys = sampler.order() if dc.repeated_aug > 1 else None   # (index, copy) of every sample, in order
        for step, item in enumerate(bar, start=first):
            x, y, idx = item[0].to(device), item[1].to(device), item[2]
            soft = item[3].to(device) if len(item) > 3 else None
            gstep = epoch * steps_per_epoch + step
            copy = None if keys is None else torch.tensor([c for _, c in keys[step * dc.batch_size:][:len(idx)]])
            batch = Batch(images=x, target=y, soft_target=soft, index=idx, epoch=epoch, copy=copy,
                          progress=gstep / total_steps)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss, parts = model(batch)
            if not torch.isfinite(loss):
                bad = next((k for k, v in parts.items() if not torch.isfinite(v)), "total")
                raise NonFiniteLoss(f"non-finite loss in term '{bad}' at epoch {epoch + 1} step {step + 1} "
                                    f"(global step {gstep + 1}); the last good checkpoint is kept")
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
            every = tc.checkpoint_every
            if every and (gstep + 1) % every == 0 and step + 1 < steps_per_epoch:
                st = state(epoch, step + 1, False)
                if world.is_main:
                    save_checkpoint(run_dir, st)
        row = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"]}
        row.update({f"train_{k}": v for k, v in epoch_means(sums, seen, reducer).items()})
        last = epoch + 1 == tc.epochs
        if (epoch + 1) % tc.eval_every == 0 or last:
            for split in ("val", "test"):
                r = evaluate(student, run.datasets[split], dc.eval_batch_size, device, dc.num_workers, amp,
                             world, reducer, keep_logits=last)
                row[f"{split}_top1"], row[f"{split}_loss"] = r["top1"], r["loss"]
                if last and world.is_main:
                    run_dir.save_predictions(split, r["logits"], r["targets"], r["indices"])
                if ema is not None:
                    r = evaluate(ema.module, run.datasets[split], dc.eval_batch_size, device, dc.num_workers, amp,
                                 world, reducer)
                    row[f"ema_{split}_top1"] = r["top1"]
        row["epoch_time_s"] = time.perf_counter() - t0
        history.append(row)
        st = state(epoch, 0, True)
        if world.is_main:
            save_checkpoint(run_dir, st)
            run_dir.write_metrics(history, meta)
        evals = f" val {row['val_top1']:.2f} test {row['test_top1']:.2f}" if "val_top1" in row else ""
        log(f"epoch {epoch + 1}/{tc.epochs} loss {row['train_loss']:.4f}{evals} ({row['epoch_time_s']:.1f}s)")
    if world.is_main:
        run_dir.write_metrics(history, meta)   # again: a kill after the last checkpoint may have cut its write
        weights_meta = {"model": cfg.model.name, "num_classes": run.num_classes}
        run_dir.save_weights(student.state_dict(), weights_meta)
        if ema is not None:
            run_dir.save_weights(ema.module.state_dict(), weights_meta, ema=True)
        run_dir.write_stamp(to_dict(cfg))   # last: the run is finished
    distiller.close()
    return history[-1]
