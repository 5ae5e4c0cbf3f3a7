"""The stored teacher: a teacher source that serves a store's logits for the batch's (epoch, index, copy).

Dense targets are rebuilt as TinyViT does: the stored top-K probabilities, and the mass left over spread evenly
over the other C - K classes. The source serves the rebuilt distribution's *log-probabilities* as the teacher's
logits, so every logit-level term applies its own temperature to them: at T it sees
``softmax(log q / T)``, the rebuilt distribution tempered in log space. With K = C this is exactly the live
teacher's ``softmax(z / T)`` (``log q = z - logsumexp(z)``, to the stored precision), at any T; with K < C it
is the tempered rebuild. Each served record's augmentation seed is checked against the batch's sample key.
Every logit term of vitkd reads teacher logits only through a softmax (or an argmax), which a constant shift
per row does not change, so ``kd``, ``deit`` (soft and hard), ``dkd``, ``dist``, the final-logit part of
``ofa`` and ``cit`` (one store per head's teacher) are served. What a store does not hold (tokens, attention,
Q/K/V, stages, final features, a teacher's separate heads) is refused at build time, in one line.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from ...config import ConfigError, RunCfg, TeacherCfg, section
from ...data import DataSpec
from ...io import json_digest
from ...taps import ModelInfo, TapOutput, TapRequest
from ...teachers import TeacherSource
from .fingerprint import check_fingerprint, record_seed
from .format import StoreError, layout, read_shard, read_store_json, record_dtype, shard_path

__all__ = ["StoredTeacher", "dense_log_probs", "open_store", "SOURCE_KEY"]

# the teacher key that reads a store: distill.teachers.<name>: {logits: PATH}
SOURCE_KEY = "logits"


def dense_log_probs(idx: Tensor, val: Tensor, num_classes: int) -> Tensor:
    """Log-probabilities [B, C] of the rebuilt distribution: the stored log-probabilities ``val`` on the top-K
    classes ``idx``, ``log((1 - their mass) / (C - K))`` on every other class, rows normalised (float32)."""
    lp_top = val.float()
    b, k = lp_top.shape
    if k == num_classes:
        out = torch.empty(b, num_classes, dtype=torch.float32, device=lp_top.device)
    else:
        rest = (1.0 - lp_top.exp().sum(1)).clamp_min(torch.finfo(torch.float32).tiny) / (num_classes - k)
        out = rest.log()[:, None].repeat(1, num_classes)
    out.scatter_(1, idx.long(), lp_top)
    return torch.log_softmax(out, dim=1)   # rounding of fp16 values: rows sum to exactly 1 again


def open_store(path: str, where: str):
    """(store.json, record dtype, fingerprint digest) of a store, every shard present with its size."""
    meta = read_store_json(Path(path), where)
    fp = meta["fingerprint"]
    dtype = record_dtype(int(fp["topk"]), meta["values"])
    keys, n_chunks = layout(meta)
    for e in range(int(fp["epochs"])):
        for c in range(n_chunks):
            p = shard_path(Path(path), e, c)
            size = 128 + min(int(meta["chunk"]), keys - c * int(meta["chunk"])) * dtype.itemsize
            if not p.is_file():
                raise StoreError(f"{where}: {path} is incomplete: {p.name} is missing (finish it with "
                                 f"`vitkd logits save` on its config)")
            if p.stat().st_size != size:
                raise StoreError(f"{where}: {p}: truncated or padded shard ({p.stat().st_size} bytes, expected "
                                 f"{size})")
    return meta, dtype, json_digest(fp)


class StoredTeacher(TeacherSource):
    """A teacher read from a store written by ``vitkd logits save`` (see the module docstring)."""

    def __init__(self, path: str, name: str = "teacher", where: Optional[str] = None):
        super().__init__()
        self.path, self.name = str(path), name
        self.where = where or f"distill.teachers.{name}.{SOURCE_KEY}"
        self.meta, self.dtype, self._fsha = open_store(self.path, self.where)
        fp = self.meta["fingerprint"]
        self.num_classes, self.topk, self.epochs = int(self.meta["num_classes"]), int(fp["topk"]), int(fp["epochs"])
        self.n, self.seed = int(self.meta["train_images"]), int(fp["seed"])
        self._epoch: Optional[int] = None
        self._table: Optional[Tuple[Tensor, Tensor, Tensor]] = None

    @classmethod
    def from_config(cls, name: str, cfg: TeacherCfg, num_classes: int, run: Optional[RunCfg] = None,
                    student_spec: Optional[DataSpec] = None) -> "StoredTeacher":
        src = cls(section(cfg, SOURCE_KEY), name)
        if src.num_classes != num_classes:
            raise StoreError(f"{src.where}: the store's teacher predicts {src.num_classes} classes, the data has "
                             f"{num_classes}")
        if run is not None and student_spec is not None:
            check_fingerprint(src.meta, run, student_spec, src.where, cfg.checkpoint)
        return src

    # ------------------------------------------------------------------ TeacherSource
    def describe(self, img_size) -> ModelInfo:
        t = self.meta["teacher"]
        return ModelInfo(name=t["name"], vit=bool(t["vit"]), depth=int(t["depth"]), embed_dim=t["embed_dim"],
                         num_heads=t["num_heads"], num_classes=int(t["num_classes"]),
                         grid=tuple(t["grid"]) if t["grid"] is not None else None, prefix_names=list(t["prefix_names"]),
                         stages={int(k): tuple(v) for k, v in t["stages"].items()}, head_names=list(t["head_names"]))

    def check_request(self, term: str, request: TapRequest) -> None:
        needs = [(what, sorted(v) if isinstance(v, frozenset) else None) for what, v in (
            ("tokens of blocks", request.tokens), ("attention of blocks", request.attn),
            ("Q/K/V of blocks", request.qkv), ("CNN stages of strides", request.stages),
            ("final features", request.features), ("separate heads", request.heads)) if v]
        if needs:
            what, which = needs[0]
            raise ConfigError(f"distill term '{term}': teacher '{self.name}' is a stored-logits teacher "
                              f"({self.path}) and the term needs its {what}{f' {which}' if which else ''}; a store "
                              f"holds logits only (give this term a live teacher with a checkpoint)")

    def set_request(self, request: TapRequest) -> None:
        self.request = request

    def forward_macs(self, input_size) -> float:
        """The teacher's forward MACs per image, paid when the store was written (once for every run it serves):
        a row's training cost stays comparable with the same row run live."""
        return float(self.meta["teacher"].get("forward_macs", 0.0))

    def forward(self, images: Tensor, batch=None) -> TapOutput:
        if batch is None or batch.index is None:
            raise ConfigError(f"{self.where}: a stored teacher needs the batch's sample indices and epoch")
        idx, val = self._rows(int(batch.epoch), batch.index, batch.copy)
        logits = dense_log_probs(idx, val, self.num_classes).to(images.device)
        return TapOutput(logits=logits)

    # ------------------------------------------------------------------ reading
    def _rows(self, epoch: int, index: Tensor, copy: Optional[Tensor]):
        if epoch >= self.epochs:
            raise StoreError(f"{self.where}: epoch {epoch + 1} asked for, the store holds {self.epochs} epochs")
        index = torch.as_tensor(index).long().cpu()
        if int(index.max()) >= self.n:
            raise StoreError(f"{self.where}: sample index {int(index.max())} asked for, the store holds "
                             f"{self.n} train images")
        copies = torch.zeros_like(index) if copy is None else torch.as_tensor(copy).long().cpu()
        pos = index + copies * self.n
        seed, idx, val = self._load(epoch)
        for i, (p, c) in enumerate(zip(index.tolist(), copies.tolist())):
            if int(seed[pos[i]]) != record_seed(self.seed, epoch, p, c):
                raise StoreError(f"{self.where}: the record of epoch {epoch + 1} sample {p} (copy {c}) holds another "
                                 f"sample's augmentation seed (the store does not match this data pipeline)")
        return idx[pos], val[pos]

    def _load(self, epoch: int):
        if self._epoch != epoch:
            keys, n_chunks = layout(self.meta)
            chunk = int(self.meta["chunk"])
            parts = [read_shard(shard_path(Path(self.path), epoch, c), self.dtype, self._fsha, epoch, c, c * chunk,
                                min(chunk, keys - c * chunk)) for c in range(n_chunks)]
            rec = np.concatenate(parts)
            self._table = (np.ascontiguousarray(rec["seed"]),
                           torch.from_numpy(np.ascontiguousarray(rec["idx"])),
                           torch.from_numpy(np.ascontiguousarray(rec["val"])))
            self._epoch = epoch
        return self._table


def store_serves(path: str, cfg: RunCfg, teacher: TeacherCfg) -> bool:
    """Whether the store at ``path`` is complete and was written for ``cfg``'s recipe and seed by the weights of
    ``teacher`` (a live teacher config): what decides that a suite's store job is already done."""
    from ...models import student_spec
    try:
        meta, _, _ = open_store(path, "logits")
        check_fingerprint(meta, cfg, student_spec(cfg), "logits", teacher.checkpoint)
    except ConfigError:
        return False
    return True
