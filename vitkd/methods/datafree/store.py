"""A synthetic set on disk (``vitkd synthesize``, data-free distillation): an ImageFolder of PNGs with a manifest,
written batch by batch (resumable), read as a train split by :mod:`vitkd.data` (``data.synthetic``).

==========================  ==========================================================================
``plan.json``               written FIRST: the fingerprint and settings of the set being written
``images/<class>/<i>.png``  the images (8-bit PNG, ``L`` grey or ``RGB``), ``<class>`` zero-padded so that
                            name order is label order (torchvision's ``ImageFolder`` reads it as it is)
``batches/<b>.json``        batch ``b`` is complete: its files, labels, best loss, teacher accuracy
``manifest.json``           written LAST: the set is complete (files and labels, classes, the teacher's
                            fingerprint, the settings, the real dataset the teacher was trained on)
==========================  ==========================================================================

Every file is written atomically (temp file + rename). A run that stops leaves the batches it finished;
the next run with the same fingerprint continues from there, a different fingerprint is refused unless the
folder is overwritten. Readers (``data.synthetic``) accept only a folder with a manifest.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np

from ...config import ConfigError, DataError
from ...io import atomic_write_bytes, atomic_write_json

__all__ = ["SyntheticStore", "read_synthetic", "FORMAT"]

FORMAT = "vitkd-synthetic/1"


def _png_bytes(arr: np.ndarray) -> bytes:
    import io
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


class SyntheticStore:
    PLAN = "plan.json"
    MANIFEST = "manifest.json"
    IMAGES = "images"
    BATCHES = "batches"

    def __init__(self, path: Union[str, Path]):
        self.path = Path(path)

    # ------------------------------------------------------------------ state
    def _read(self, name: str) -> Optional[dict]:
        p = self.path / name
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"synthetic set {self.path}: cannot read {name} ({type(e).__name__})") from None

    def manifest(self) -> Optional[dict]:
        return self._read(self.MANIFEST)

    def is_complete(self, fingerprint: str) -> bool:
        m = self.manifest()
        return m is not None and m.get("fingerprint") == fingerprint

    def begin(self, fingerprint: str, plan: dict, overwrite: bool = False) -> None:
        """Start (or continue) writing the set ``fingerprint``; a folder holding another set is refused unless
        ``overwrite`` (then its set is removed first)."""
        old = self._read(self.PLAN) if self.path.is_dir() else None
        foreign = self.path.is_dir() and any(self.path.iterdir()) and old is None
        if (old is not None and old.get("fingerprint") != fingerprint) or foreign:
            if not overwrite:
                what = "another synthetic set (other teacher or settings)" if old else "files that are not a synthetic set"
                raise ConfigError(f"--out {self.path}: holds {what}; use --overwrite or another folder")
            self.clear()
            old = None
        if old is None:
            self.path.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.path / self.PLAN, {"format": FORMAT, "fingerprint": fingerprint, **plan})

    def clear(self) -> None:
        for name in (self.MANIFEST, self.PLAN):
            (self.path / name).unlink(missing_ok=True)
        for name in (self.BATCHES, self.IMAGES):
            shutil.rmtree(self.path / name, ignore_errors=True)
        if self.path.is_dir() and any(self.path.iterdir()):
            raise ConfigError(f"--out {self.path}: holds other files; choose an empty folder")

    def batch_done(self, b: int) -> Optional[dict]:
        return self._read(f"{self.BATCHES}/{b:05d}.json")

    def _class_dir(self, label: int, num_classes: int) -> str:
        return f"{self.IMAGES}/{label:0{len(str(max(num_classes - 1, 0)))}d}"

    def write_batch(self, b: int, first_index: int, pixels: np.ndarray, labels: np.ndarray, num_classes: int,
                    info: dict) -> dict:
        """``pixels`` uint8 [B, H, W] (grey) or [B, H, W, 3]; images first, then the batch's record."""
        files = []
        for k, (img, y) in enumerate(zip(pixels, labels)):
            rel = f"{self._class_dir(int(y), num_classes)}/{first_index + k:06d}.png"
            atomic_write_bytes(self.path / rel, _png_bytes(img))
            files.append([rel, int(y)])
        record = {"batch": b, "files": files, **info}
        atomic_write_json(self.path / f"{self.BATCHES}/{b:05d}.json", record)
        return record

    def finish(self, manifest: dict, n_batches: int) -> dict:
        files = []
        for b in range(n_batches):
            rec = self.batch_done(b)
            if rec is None:
                raise RuntimeError(f"synthetic set {self.path}: batch {b} is missing")
            files += rec["files"]
        manifest = {"format": FORMAT, **manifest, "count": len(files), "files": files}
        atomic_write_json(self.path / self.MANIFEST, manifest)
        return manifest


def read_synthetic(path: Union[str, Path], num_classes: int, key: str = "data.synthetic"
                   ) -> Tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, H, W] or [N, H, W, 3], labels) of a complete synthetic set; ``num_classes``: the
    dataset's, which the set must match."""
    from PIL import Image
    store = SyntheticStore(path)
    m = store.manifest()
    if m is None:
        raise ConfigError(f"{key}: {path} is not a complete synthetic set (no {SyntheticStore.MANIFEST}; "
                          f"run or resume vitkd synthesize)")
    if m.get("format") != FORMAT:
        raise ConfigError(f"{key}: {path}/{SyntheticStore.MANIFEST}: format {m.get('format')!r}, expected {FORMAT}")
    if int(m.get("num_classes", -1)) != num_classes:
        raise ConfigError(f"{key}: {path} has {m.get('num_classes')} classes, the dataset {num_classes}")
    images, labels = [], []
    for rel, y in m["files"]:
        f = Path(path) / rel
        try:
            with Image.open(f) as img:
                images.append(np.asarray(img.convert(m.get("mode", "RGB"))))
        except (OSError, ValueError) as e:
            raise DataError(f"{key}: cannot read image {f} ({type(e).__name__}: {e})") from None
        labels.append(int(y))
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def set_fingerprint(path: Union[str, Path]) -> str:
    """What names a set's images: its manifest's fingerprint (a set not finished yet: its folder)."""
    m = SyntheticStore(path).manifest()
    return (m or {}).get("fingerprint") or f"incomplete:{path}"
