"""Building what a run needs from a validated config: device, datasets, student, distiller."""
from __future__ import annotations

import platform
from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np
import torch
from torch import nn

from .. import models as model_lib
from ..config import ConfigError, RunCfg
from ..data import DataSpec, build_datasets
from ..distiller import Distiller, build_distiller
from .dist import World

__all__ = ["Run", "build_run", "build_student", "resolve_device", "versions"]


def resolve_device(name: str, local_rank: Optional[int] = None) -> torch.device:
    """The run's device; with ``local_rank`` (one process of several on a node) CUDA means that GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' asked for but no CUDA device is available")
    if name == "cuda" and local_rank is not None:
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"train.device: local rank {local_rank} has no GPU of its own "
                              f"({torch.cuda.device_count()} visible; use --nproc_per_node <= that)")
        return torch.device("cuda", local_rank)
    return torch.device(name)


def versions() -> Dict[str, str]:
    import timm
    import torchvision
    from .. import __version__
    return {"vitkd": __version__, "torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
            "timm": timm.__version__, "numpy": np.__version__, "python": platform.python_version()}


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
    probe = model_lib.create(cfg.model.name, 10, cfg.model.args, where="model")   # input spec only
    spec = model_lib.data_spec(probe, cfg.data.img_size)
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
    distiller.to(device)
    return Run(cfg, student, distiller, datasets, num_classes, spec, device)


def build_student(cfg: RunCfg, weights: str):
    """The student alone with ``weights`` (a weights file or a finished run folder), and its datasets: what
    evaluation needs. No teacher is loaded."""
    device = resolve_device(cfg.train.device)
    student, datasets, num_classes, spec = _student_and_data(cfg, weights)
    return student.to(device).eval(), datasets, num_classes, spec, device
