"""``vitkd synthesize``: a labelled synthetic set from a BN teacher, cached by the teacher's fingerprint.

The fingerprint is the sha256 of the teacher's weights file (and the competing student's), the model names
and arguments, the input spec, the seed and every inversion setting. A folder that holds the complete set of
that fingerprint is reused as it is; a partial one is continued batch by batch (each batch draws from its own
seed, so a resumed set equals an uninterrupted one).
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable, Optional

import numpy as np
import torch

from ...config import DataCfg, TeacherCfg
from ...data import class_count, sample_seed
from ...io import json_digest, sha256_file
from ...rundir import exclusive
from .config import SynthCfg
from .inversion import invert_batch
from .losses import BNStatistics
from .store import SyntheticStore

__all__ = ["synthesize", "is_synthesized", "fingerprint", "SYNTH_VERSION"]

SYNTH_VERSION = 1   # bump when the synthesis computes something else for the same settings


def _weights_digest(model: torch.nn.Module) -> str:
    """sha256 of a model's state (names, dtypes, shapes, bytes, in name order): the identity of weights that come
    from no file of their own (a zoo entry's, loaded through timm)."""
    import hashlib
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        t = v.detach().cpu().contiguous().reshape(-1)
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _model_identity(t: TeacherCfg, model: torch.nn.Module) -> dict:
    from ...models import resolve_weights
    from ...taps import model_name
    if t.checkpoint is None:   # weights from a zoo entry: their content
        return {"model": model_name(model), "zoo": t.zoo, "state_sha256": _weights_digest(model)}
    return {"model": model_name(model), "args": t.args, "weights_sha256": sha256_file(resolve_weights(t.checkpoint))}


def fingerprint(cfg: SynthCfg, teacher: torch.nn.Module, spec, student: Optional[torch.nn.Module] = None) -> dict:
    """(The identity of what would be written, its sha256)."""
    ident = {"version": SYNTH_VERSION, "teacher": _model_identity(cfg.teacher, teacher),
             "student": _model_identity(cfg.student, student) if student is not None else None,
             "input": {"img_size": list(spec.img_size), "mean": list(spec.mean), "std": list(spec.std)},
             "seed": cfg.seed, "synth": dataclasses.asdict(cfg.synth)}
    return {"identity": ident, "sha256": json_digest(ident)}


def _data_identity(data: DataCfg) -> dict:
    """The real dataset the set stands in for (its val/test splits evaluate students trained on the set)."""
    return {k: v for k, v in dataclasses.asdict(data).items() if k in ("name", "root", "img_size", "val_size")}


def _models(cfg: SynthCfg):
    """(teacher, its input spec, competing student or None, its spec, class count)."""
    from ... import models as model_lib
    from ...teachers import load_teacher_model
    n_cls = class_count(cfg.data)
    teacher = load_teacher_model("teacher", cfg.teacher, n_cls)
    if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in teacher.modules()):
        from ...config import ConfigError
        from ...taps import model_name
        raise ConfigError(f"teacher: {model_name(teacher)} has no BatchNorm layer (DeepInversion matches the "
                          f"statistics of a BN teacher)")
    spec = model_lib.data_spec(teacher, cfg.data.img_size)
    student = student_spec = None
    if cfg.student is not None and cfg.synth.competition > 0:
        student = load_teacher_model("student", cfg.student, n_cls)
        student_spec = model_lib.data_spec(student, cfg.data.img_size)
    return teacher, spec, student, student_spec, n_cls


def is_synthesized(cfg: SynthCfg, out) -> bool:
    """``out`` holds the complete set of ``cfg`` (same teacher weights, same settings)."""
    teacher, spec, student, _, _ = _models(cfg)
    return SyntheticStore(out).is_complete(fingerprint(cfg, teacher, spec, student)["sha256"])


def synthesize(cfg: SynthCfg, out, overwrite: bool = False, log: Callable[[str], None] = print) -> dict:
    """Write (or reuse, or continue) the synthetic set of ``cfg`` in ``out``; returns its manifest.
    ``overwrite``: a folder holding another set (other teacher or settings) is emptied first. One process
    writes ``out`` at a time (:func:`vitkd.rundir.exclusive`)."""
    with exclusive(out):
        return _synthesize(cfg, out, overwrite, log)


def _synthesize(cfg: SynthCfg, out, overwrite: bool, log: Callable[[str], None]) -> dict:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    teacher, spec, student, student_spec, n_cls = _models(cfg)
    fp = fingerprint(cfg, teacher, spec, student)
    store = SyntheticStore(out)
    if store.is_complete(fp["sha256"]):
        log(f"synthetic set {out}: complete, reused (fingerprint {fp['sha256'][:12]})")
        return store.manifest()
    s = cfg.synth
    n_batches = math.ceil(s.images / s.batch_size)
    labels = np.arange(s.images) % n_cls
    store.begin(fp["sha256"], {"identity": fp["identity"], "batches": n_batches}, overwrite=overwrite)
    t0 = time.perf_counter()
    with BNStatistics(teacher) as bn:
        for b in range(n_batches):
            if store.batch_done(b) is not None:
                continue
            lo, hi = b * s.batch_size, min(s.images, (b + 1) * s.batch_size)
            targets = torch.as_tensor(labels[lo:hi])
            g = torch.Generator().manual_seed(sample_seed(cfg.seed, b, 0xD1))
            tb = time.perf_counter()
            pixels, info = invert_batch(teacher, targets, s, spec, g, student, student_spec, bn=bn)
            arr = (pixels * 255).round().to(torch.uint8)
            arr = arr[:, 0].numpy() if s.grayscale else arr.permute(0, 2, 3, 1).numpy()
            store.write_batch(b, lo, arr, labels[lo:hi], n_cls, {**info, "wall_s": time.perf_counter() - tb})
            log(f"batch {b + 1}/{n_batches}: best loss {info['best_loss']:.3f} (step {info['best_step']}), "
                f"teacher top-1 {info['teacher_top1']:.1f}%, {time.perf_counter() - tb:.1f}s")
    records = [store.batch_done(b) for b in range(n_batches)]
    top1 = sum(r["teacher_top1"] * len(r["files"]) for r in records) / s.images
    manifest = store.finish({"fingerprint": fp["sha256"], "identity": fp["identity"], "num_classes": n_cls,
                             "mode": "L" if s.grayscale else "RGB", "image_size": list(spec.img_size),
                             "data": _data_identity(cfg.data), "teacher_top1": top1,
                             "wall_s": sum(r["wall_s"] for r in records)}, n_batches)
    log(f"synthetic set {out}: {manifest['count']} images, teacher top-1 {top1:.1f}%, "
        f"{time.perf_counter() - t0:.0f}s this run")
    return manifest
