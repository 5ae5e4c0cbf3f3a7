"""``vitkd logits save``: run a config's teachers once over every epoch's augmented images and store their logits.

The images are the student's own training inputs, rebuilt sample by sample through the one definition of the
train pipeline (:func:`vitkd.data.train_view`: the seeded per-sample augmentation, then the per-sample mixup /
CutMix partner and lambda), for every epoch of the schedule and every repeated-augmentation copy. Each teacher
writes its own store (:mod:`.format`): per epoch and sample key the top-K logits and the logsumexp.

Resumable: shards already on disk that verify are kept, the others are (re)written; a shard appears under its
name only once complete (temp file + rename). Under ``torchrun`` rank r writes the chunks ``c % world == r``;
the store is the same bytes for any number of ranks.
"""
from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ...config import ConfigError, DistillCfg, RunCfg, path_under, section, step_bf16
from ...data import build_datasets, train_view
from ...models import student_spec
from ...io import json_digest
from ...dist import World, barrier, current_world, join_from_env, leave, resolve_device
from ...rundir import exclusive
from ...taps import TapRequest, describe
from ...teachers import LiveTeacher, load_teacher_model
from .replay import SOURCE_KEY
from .fingerprint import data_fingerprint, record_seed, weights_sha256
from .format import (FORMAT_VERSION, STORE_FILE, StoreError, layout, read_shard, read_store_json,
                     record_dtype, shard_path, write_shard, write_store_json)

__all__ = ["save_logits", "save_store", "train_pipeline", "DEFAULT_TOPK", "DEFAULT_CHUNK"]

DEFAULT_TOPK = 10       # TinyViT's K on ImageNet-1k
DEFAULT_CHUNK = 4096    # sample keys per shard


def train_pipeline(cfg: RunCfg):
    """(the train split as training reads it, the student's input spec, the class count) of ``cfg``."""
    spec = student_spec(cfg)
    datasets, num_classes = build_datasets(cfg.data, spec, cfg.seed)
    return train_view(datasets["train"], cfg.train), spec, num_classes


class _Keys(Dataset):
    """Positions ``[first, first + count)`` of an epoch: position p is the sample key (p % n, p // n)."""

    def __init__(self, ds, n: int, first: int, count: int):
        self.ds, self.n, self.first, self.count = ds, n, first, count

    def __len__(self):
        return self.count

    def __getitem__(self, i):
        p = self.first + i
        return self.ds[(p % self.n, p // self.n)][0]


def info_dict(info) -> dict:
    """A ModelInfo as JSON (the stored teacher describes itself from it)."""
    return {"name": info.name, "vit": info.vit, "depth": info.depth, "embed_dim": info.embed_dim,
            "num_heads": info.num_heads, "num_classes": info.num_classes,
            "grid": list(info.grid) if info.grid is not None else None, "prefix_names": list(info.prefix_names),
            "stages": {str(k): list(v) for k, v in info.stages.items()}, "head_names": list(info.head_names)}


def save_logits(cfg: RunCfg, out, topk: Optional[int] = None, epochs: Optional[int] = None, bf16: bool = False,
                values: str = "fp16", chunk: int = DEFAULT_CHUNK, batch_size: Optional[int] = None,
                progress: bool = True, log: Callable[[str], None] = print,
                stores: Optional[Dict[str, Path]] = None, replace: bool = False) -> Dict[str, Path]:
    """One store per live teacher of ``cfg`` under ``out/<teacher name>`` (or, for the teachers named in
    ``stores``, at the folder it gives); returns them by teacher name. One process writes ``out`` (each
    folder of ``stores``) at a time (:func:`vitkd.rundir.exclusive`); under ``torchrun``, rank 0 holds it."""
    teachers = {k: t for k, t in (cfg.distill or DistillCfg()).teachers.items() if section(t, SOURCE_KEY) is None
                and (stores is None or k in stores)}
    dest = {k: Path(stores[k]) if stores else path_under(out, k, key=f"distill.teachers.{k}") for k in teachers}
    if not teachers:
        raise ConfigError("distill.teachers: no teacher with a checkpoint to run (a stored teacher is already "
                          "stored)")
    joined = join_from_env(resolve_device(cfg.train.device))
    try:
        with contextlib.ExitStack() as held:
            if current_world().is_main:
                for folder in ([Path(out)] if stores is None else sorted(set(dest.values()))):
                    held.enter_context(exclusive(folder))
            return _save_all(cfg, teachers, dest, topk, epochs, bf16, values, chunk, batch_size, progress, log,
                             replace)
    finally:
        leave(joined)


def _save_all(cfg, teachers, dest, topk, epochs, bf16, values, chunk, batch_size, progress, log, replace):
    world = current_world()
    if not world.is_main:
        log = lambda m: None   # noqa: E731 - rank 0 alone prints
    device = resolve_device(cfg.train.device, world.local_rank if world.size > 1 else None)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    train_ds, spec, num_classes = train_pipeline(cfg)
    stores = {}
    for name, tcfg in teachers.items():
        model = load_teacher_model(name, tcfg, num_classes)
        teacher_bf16 = bf16 or tcfg.bf16 or step_bf16(cfg.train.precision, False, device.type)
        source = LiveTeacher(model, spec, bf16=teacher_bf16).to(device)
        source.set_request(TapRequest())
        try:
            info = {**info_dict(describe(model, spec.img_size)),
                    "forward_macs": source.forward_macs(spec.input_size)}
            stores[name] = save_store(cfg, source, weights_sha256(tcfg.checkpoint), info,
                                      dest[name], train_ds, spec, num_classes, topk=topk, epochs=epochs,
                                      values=values, chunk=chunk, batch_size=batch_size or cfg.data.eval_batch_size,
                                      world=world, progress=progress, label=name, replace=replace)
        finally:
            source.close()
        log(f"stored teacher '{name}': {stores[name]} (distill.teachers.{name}: {{logits: {stores[name]}}})")
    return stores


def save_store(cfg: RunCfg, source, teacher_sha: str, info: dict, store: Path, train_ds, spec, num_classes: int,
               topk: Optional[int] = None, epochs: Optional[int] = None, values: str = "fp16",
               chunk: int = DEFAULT_CHUNK, batch_size: int = 256, world: World = World(), progress: bool = True,
               label: str = "teacher", replace: bool = False) -> Path:
    """Write (or finish) one teacher's store at ``store``. A store of another config there is refused, or with
    ``replace`` deleted first."""
    store = Path(store)
    k = DEFAULT_TOPK if topk is None else int(topk)
    if k < 1:
        raise ConfigError(f"--topk: must be >= 1, got {topk}")
    k = min(k, num_classes)
    if num_classes > 32767:
        raise ConfigError(f"a store keeps class indices as int16: {num_classes} classes do not fit")
    if values not in ("fp16", "fp32"):
        raise ConfigError(f"--values: '{values}' is not one of fp16, fp32")
    if batch_size < 1:
        raise ConfigError(f"--batch-size: must be >= 1, got {batch_size}")
    if chunk < 1:
        raise ConfigError(f"--chunk: must be >= 1, got {chunk}")
    n_epochs = cfg.train.epochs if epochs is None else int(epochs)
    if n_epochs < 1:
        raise ConfigError(f"--epochs: must be >= 1, got {epochs}")
    n = len(train_ds)
    keys = n * cfg.data.repeated_aug
    fp = {**data_fingerprint(cfg, spec), "epochs": n_epochs, "teacher_sha256": teacher_sha, "topk": k}
    if getattr(source, "bf16", False):   # bf16 teachers give other logits (fp32 stores keep their old digest)
        fp["teacher_precision"] = "bf16"
    meta = {"format": FORMAT_VERSION, "fingerprint": fp, "values": values, "num_classes": num_classes,
            "train_images": n, "keys_per_epoch": keys, "chunk": int(chunk),
            "record_bytes": record_dtype(k, values).itemsize, "seed": cfg.seed, "teacher": info,
            "temperature": 1.0, "note": "top-K log-probabilities (logits - logsumexp) at T = 1"}
    if replace and (store / STORE_FILE).is_file() and json_digest(read_store_json(store, "--out")) != json_digest(meta):
        for f in list(store.glob("*.shard")) + [store / STORE_FILE]:   # a store of another config: start over
            f.unlink()
    if (store / STORE_FILE).is_file():
        old = read_store_json(store, "--out")
        if json_digest(old) != json_digest(meta):
            field = next((f for f in fp if old.get("fingerprint", {}).get(f) != fp[f]), None)
            what = f"{field} differs" if field else "its layout differs"
            raise StoreError(f"--out {store}: holds a store of another config ({what}); choose another --out or "
                             f"remove it")
    elif store.exists() and any(store.iterdir()):
        raise StoreError(f"--out {store}: not empty and not a logits store")
    if world.is_main:
        write_store_json(store, meta)
        for tmp in store.glob(".*.tmp"):   # a write cut short by a kill: never a shard
            tmp.unlink()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        barrier(world)   # no rank writes before the folder is clean
    dtype = record_dtype(k, values)
    fsha = json_digest(fp)
    _, n_chunks = layout(meta)
    todo = []
    for e in range(n_epochs):
        for c in range(world.rank, n_chunks, world.size):
            first = c * chunk
            count = min(chunk, keys - first)
            path = shard_path(store, e, c)
            if path.is_file():
                try:
                    read_shard(path, dtype, fsha, e, c, first, count)
                    continue
                except StoreError:
                    pass   # rewritten below
            todo.append((e, c, first, count))
    from tqdm import tqdm
    bar = tqdm(total=sum(t[3] for t in todo), desc=f"logits {label}", unit="img", file=sys.stderr,
               disable=None if progress else True, leave=False)
    device = next((b.device for b in source.buffers()), None) or next(source.parameters()).device
    t0, seen = time.perf_counter(), 0
    try:
        for e, c, first, count in todo:
            train_ds.set_epoch(e)
            loader = DataLoader(_Keys(train_ds, n, first, count), batch_size=batch_size, shuffle=False,
                                num_workers=cfg.data.num_workers)
            parts: List[np.ndarray] = []
            for x in loader:
                pos = range(first + sum(len(q) for q in parts), first + sum(len(q) for q in parts) + len(x))
                seeds = [record_seed(cfg.seed, e, p % n, p // n) for p in pos]
                parts.append(_records(source(x.to(device)).logits, k, dtype, seeds))
                seen += len(x)
                bar.update(len(x))
                bar.set_postfix_str(f"teacher {seen / max(1e-9, time.perf_counter() - t0):.0f} img/s")
            write_shard(store, e, c, first, np.concatenate(parts), fsha)
    finally:
        bar.close()
    return store


def _records(logits: torch.Tensor, k: int, dtype: np.dtype, seeds) -> np.ndarray:
    z = torch.log_softmax(logits.detach().float().cpu(), dim=-1)   # log-probabilities at T = 1
    rec = np.zeros(len(z), dtype=dtype)
    top = torch.topk(z, k, dim=-1)   # sorted, largest first
    rec["seed"] = np.asarray(seeds, dtype=np.uint32)
    rec["idx"] = top.indices.to(torch.int16).numpy()
    rec["val"] = top.values.numpy().astype(dtype["val"].base)
    return rec
