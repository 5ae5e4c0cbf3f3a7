"""The on-disk format of a stored-logits teacher (TinyViT style): one folder per teacher.

    <store>/store.json            what the store is: fingerprint, teacher, K, value type, layout (atomic JSON)
    <store>/e0003-c00001.shard    epoch 3, chunk 1: a fixed 128-byte header + fixed-size records

An epoch holds one record per *sample key* ``(index, copy)`` at position ``copy * n + index`` (``n`` train
images, ``copy`` < ``data.repeated_aug``); chunk ``c`` holds the positions ``[c * S, (c + 1) * S)`` of
``S = chunk`` keys. A chunk's content depends on nothing but the store's settings, so a store written by any
number of ranks (each writes the chunks ``c % world == rank``) is byte-identical and serves a run with any
number of ranks.

A record is ``seed`` (uint32: the sample's augmentation seed, checked when it is served) then ``idx``
(int16[K]: the top-K classes, largest first) then ``val`` (float16[K], or float32[K] with ``values: fp32``:
their logits shifted by the logsumexp of all C logits, i.e. log-probabilities at T = 1; fp16 keeps the
dominant classes' log-probabilities to about 5e-4 x their magnitude): ``4 + 4K`` bytes with fp16 values. The header holds a magic, the format version, the epoch, the
chunk, the record count and size, the sha256 of the store's fingerprint and the sha256 of the records;
a shard that is truncated, corrupted or from another store fails to open, in one line naming the file.
Shards are written to a temporary file and renamed, so a half-written shard never has a shard's name.
"""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np

from ...config import ConfigError
from ...io import atomic_write_bytes, atomic_write_json

__all__ = ["StoreError", "STORE_FILE", "FORMAT_VERSION", "HEADER", "record_dtype", "shard_path", "write_shard",
           "read_shard", "read_store_json", "write_store_json", "VALUE_TYPES"]

STORE_FILE = "store.json"
FORMAT_VERSION = 1
MAGIC = b"VKDLOGIT"
# magic, version, epoch, chunk, first position, count, record size, K, value bytes, fingerprint sha, records sha
_HEAD = struct.Struct("<8sHIIQIIHH32s32s")
HEADER = 128
VALUE_TYPES = {"fp16": np.float16, "fp32": np.float32}


class StoreError(ConfigError):
    """A store that cannot serve (missing, incomplete, corrupted, or of another config): one line."""


def record_dtype(k: int, values: str) -> np.dtype:
    return np.dtype([("seed", "<u4"), ("idx", "<i2", (k,)), ("val", np.dtype(VALUE_TYPES[values]).newbyteorder("<"),
                                                              (k,))])


def shard_path(store: Path, epoch: int, chunk: int) -> Path:
    return Path(store) / f"e{epoch:04d}-c{chunk:05d}.shard"


def write_shard(store: Path, epoch: int, chunk: int, first: int, records: np.ndarray, fingerprint_sha: str) -> Path:
    body = records.tobytes()
    head = _HEAD.pack(MAGIC, FORMAT_VERSION, epoch, chunk, first, len(records), records.dtype.itemsize,
                      records.dtype["idx"].shape[0], records.dtype["val"].base.itemsize,
                      bytes.fromhex(fingerprint_sha), hashlib.sha256(body).digest())
    path = shard_path(store, epoch, chunk)
    atomic_write_bytes(path, head.ljust(HEADER, b"\0") + body)
    return path


def read_shard(path: Path, dtype: np.dtype, fingerprint_sha: str, epoch: int, chunk: int, first: int,
               count: int, verify: bool = True) -> Optional[np.ndarray]:
    """The records of one shard, checked against what the store says it must hold; raises :class:`StoreError`
    naming the file when it is truncated, corrupted (checksum) or from another store."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise StoreError(f"{path}: shard missing (the store is incomplete; run `vitkd logits save` again to "
                         f"finish it)") from None
    want = HEADER + count * dtype.itemsize
    if len(data) < HEADER or data[:8] != MAGIC:
        raise StoreError(f"{path}: not a vitkd logits shard (bad header)")
    magic, ver, ep, ch, fst, n, rsize, k, vbytes, fsha, rsha = _HEAD.unpack(data[:_HEAD.size])
    if ver != FORMAT_VERSION:
        raise StoreError(f"{path}: shard format version {ver}, this vitkd reads {FORMAT_VERSION}")
    if fsha.hex() != fingerprint_sha:
        raise StoreError(f"{path}: shard of another store (its fingerprint differs from store.json)")
    if (ep, ch, fst, n, rsize) != (epoch, chunk, first, count, dtype.itemsize):
        raise StoreError(f"{path}: header says epoch {ep} chunk {ch} ({n} records of {rsize} bytes), the store "
                         f"expects epoch {epoch} chunk {chunk} ({count} of {dtype.itemsize})")
    if len(data) != want:
        raise StoreError(f"{path}: truncated or padded shard ({len(data)} bytes, expected {want})")
    body = memoryview(data)[HEADER:]
    if verify and hashlib.sha256(body).digest() != rsha:
        raise StoreError(f"{path}: corrupted shard (sha256 of its records does not match its header)")
    return np.frombuffer(body, dtype=dtype, count=count)


def write_store_json(store: Path, meta: Dict[str, Any]) -> None:
    atomic_write_json(Path(store) / STORE_FILE, meta)


def read_store_json(store: Path, key: str = "logits") -> Dict[str, Any]:
    p = Path(store) / STORE_FILE
    if not Path(store).is_dir():
        raise StoreError(f"{key}: stored-logits folder not found: {store}")
    if not p.is_file():
        raise StoreError(f"{key}: {store} is not a stored-logits folder (no {STORE_FILE}; write one with "
                         f"`vitkd logits save`)")
    try:
        meta = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise StoreError(f"{key}: cannot read {p} ({type(e).__name__}: {e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
        raise StoreError(f"{key}: {p} is not a vitkd logits store of format {FORMAT_VERSION}")
    return meta


def layout(meta: Dict[str, Any]) -> Tuple[int, int]:
    """(keys per epoch, chunks per epoch) of a store."""
    keys, chunk = int(meta["keys_per_epoch"]), int(meta["chunk"])
    return keys, -(-keys // chunk)
