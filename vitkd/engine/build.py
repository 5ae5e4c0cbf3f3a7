"""Building what a run needs from a validated config: device, datasets, student, distiller."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from .. import models as model_lib
from ..config import ConfigError, RunCfg, TeacherCfg, path_keys, raw_teachers
from ..data import DataSpec, build_datasets, class_count, seeded
from ..distiller import Distiller, build_distiller
from ..dist import World, resolve_device
from ..losses import Batch

__all__ = ["Run", "build_run", "build_student", "dry_build", "dry_forward", "planned_teachers"]


@dataclass
class Run:
    cfg: RunCfg
    student: nn.Module
    distiller: Distiller
    datasets: dict
    num_classes: int
    spec: DataSpec
    device: torch.device


def _student_and_data(cfg: RunCfg, weights=None):
    """The data (its class count and the student's input spec) and the student, seeded by the run."""
    torch.manual_seed(cfg.seed)
    spec = model_lib.student_spec(cfg)
    datasets, num_classes = build_datasets(cfg.data, spec, cfg.seed)
    torch.manual_seed(cfg.seed)
    student = model_lib.create(cfg.model.name, num_classes, cfg.model.args, weights or cfg.model.checkpoint,
                               where="model")
    return student, datasets, num_classes, spec


def build_run(cfg: RunCfg, world: Optional[World] = None) -> Run:
    """Everything a training run needs (fails with ConfigError before any work). Every rank of a
    multi-process run builds the same student, connectors and teachers from the same seed."""
    world = world or World()
    device = resolve_device(cfg.train.device, world.local_rank if world.size > 1 else None)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    student, datasets, num_classes, spec = _student_and_data(cfg)
    distiller = build_distiller(cfg, student, num_classes, spec.img_size, student_spec=spec)
    student = distiller.student   # a run kind may train the student inside a larger model
    distiller.to(device)
    return Run(cfg, student, distiller, datasets, num_classes, spec, device)


def build_student(cfg: RunCfg, weights: str):
    """The student alone with ``weights`` (a weights file or a finished run folder), and its datasets: what
    evaluation needs. No teacher is loaded."""
    device = resolve_device(cfg.train.device)
    student, datasets, num_classes, spec = _student_and_data(cfg, weights)
    return student.to(device).eval(), datasets, num_classes, spec, device


def planned_teachers(raw: dict, planned: Dict[str, RunCfg]) -> Tuple[dict, Dict[str, RunCfg]]:
    """The teachers of a raw config that read a run folder not trained yet (``planned``: run folder -> the
    config that will train it): (the raw config without their checkpoints, {teacher name: that config})."""
    raw = copy.deepcopy(raw)
    found = {}
    teacher_paths = path_keys(TeacherCfg)
    for name, t in raw_teachers(raw).items():
        for key in teacher_paths:   # a run folder, or any other folder a teacher is read from, that a planned job writes
            ck = t.get(key) if isinstance(t, dict) else None
            if isinstance(ck, str) and str(Path(ck)) in planned:
                found[name] = planned[str(Path(ck))]
                t.pop(key)
    return raw, found


def dry_build(cfg: RunCfg, planned: Optional[Dict[str, RunCfg]] = None) -> dict:
    """Build ``cfg``'s student, teachers and loss terms and run one forward of zeros through them
    (:func:`dry_forward`), on the CPU, reading no data and writing nothing: model names and arguments, term
    arguments, blocks, stages and input sizes fail here in one line. Suites and chains dry-build every run before
    the first trains. ``planned``: teachers whose run is not trained yet (a suite teacher, an earlier chain stage),
    with the config that will train it; they are built from it, untrained (also when the run reads them through a
    store that a planned job writes). Other teachers load their weights. Returns each teacher's tap request."""
    n = class_count(cfg.data)
    with seeded(cfg.seed):
        student = model_lib.create(cfg.model.name, n, cfg.model.args, where="model")
        spec = model_lib.data_spec(student, cfg.data.img_size)
        distiller = build_distiller(cfg, student, n, spec.img_size, student_spec=spec, planned=planned or {})
        try:
            dry_forward(distiller, [(torch.zeros(spec.input_size), 0)] * 2, cfg)
        finally:
            distiller.close()
    return {name: distiller.requests[name] for name in distiller.teachers}


@torch.no_grad()
def dry_forward(distiller, train_ds, cfg: RunCfg) -> None:
    """One forward of two images of ``train_ds`` through the distiller in eval mode (RNG states restored): input
    sizes, heads and connectors that cannot work fail here in one line. Training runs it on its first two training
    images before any file is written; :func:`dry_build` on two images of zeros, reading no data."""
    device = next(distiller.parameters()).device
    items = [train_ds[i] for i in range(min(2, len(train_ds)))]
    x = torch.stack([it[0] for it in items]).to(device)
    y = torch.tensor([int(it[1]) for it in items], device=device)
    was = distiller.training
    try:
        with seeded(0):
            distiller.eval()
            distiller(Batch(images=x, target=y, index=torch.arange(len(items)), progress=0.0))
    except ConfigError:
        raise
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise ConfigError(f"model {cfg.model.name} cannot train on data.img_size {tuple(x.shape[-2:])} with these "
                          f"terms ({type(e).__name__}: {first})") from None
    finally:
        distiller.train(was)
