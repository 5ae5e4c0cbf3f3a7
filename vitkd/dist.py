"""Devices and process groups: which device a run uses, who am I, how many are we, and how numbers are combined.

One process: rank 0 of 1, and every reduction is the identity. Under ``torchrun`` (an initialised
``torch.distributed`` group) each rank trains on its shard and :class:`TorchReducer` combines sums.
Only rank 0 writes the run folder.

:func:`join_from_env` joins the group that ``torchrun`` describes in the environment (gloo on CPU, nccl
on CUDA); :func:`wrap_for_ranks` puts the trainable part of a distiller (the student and the terms'
connectors, exits and stitches, and the teachers that train with it) under ``DistributedDataParallel``. The
frozen teachers stay outside it: replicated on every rank, never broadcast or all-reduced.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from .config import ConfigError

__all__ = ["resolve_device", "World", "Reducer", "TorchReducer", "current_world", "reducer_for", "join_from_env",
           "leave", "barrier", "TrainablePart", "wrap_for_ranks", "convert_sync_batchnorm", "env_world_size"]


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


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current_world() -> World:
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return World()


class Reducer:
    """Combines per-rank numbers. This one is for a single process: sums are already global."""

    def sum(self, values: Dict[str, float]) -> Dict[str, float]:
        return dict(values)

    def gather(self, obj: Any) -> List[Any]:
        return [obj]


class TorchReducer(Reducer):
    """All-reduce over the initialised torch.distributed group (float64, keys in sorted order)."""

    def __init__(self, device: torch.device):
        self.device = device

    def sum(self, values: Dict[str, float]) -> Dict[str, float]:
        import torch.distributed as dist
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        summed = dict(zip(keys, t.tolist()))
        return {k: summed[k] for k in values}   # the caller's key order (metrics columns)

    def gather(self, obj: Any) -> List[Any]:
        import torch.distributed as dist
        out: List[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out


def reducer_for(world: World, device: torch.device) -> Reducer:
    return TorchReducer(device) if world.size > 1 else Reducer()


# ---------------------------------------------------------------------- the process group
def env_world_size() -> int:
    """The world size ``torchrun`` announces in the environment (1 outside a launch)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def join_from_env(device: torch.device) -> bool:
    """Join the process group ``torchrun`` describes in the environment (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``; the ``env://`` rendezvous): nccl for a CUDA run, gloo
    otherwise. Returns True when this call initialised the group (the caller then :func:`leave` s it);
    False for a single process or a group that someone else initialised."""
    import torch.distributed as dist
    if env_world_size() <= 1 or not dist.is_available() or dist.is_initialized():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return True


def leave(joined: bool) -> None:
    if joined:
        import torch.distributed as dist
        if dist.is_initialized():
            dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.size > 1:
        import torch.distributed as dist
        dist.barrier()


# ---------------------------------------------------------------------- DDP
class TrainablePart(nn.Module):
    """What DDP wraps: the student, the loss terms (their connectors, exits, stitches) and the trainable teacher
    sources (``distiller.trained_teachers()``), as submodules, so DDP broadcasts and all-reduces exactly these. The
    forward is the distiller's own (the teachers run inside it), but the distiller is held as a plain attribute, not
    a submodule: the frozen teachers are replicated by every rank from the same weights, and stay outside DDP."""

    def __init__(self, distiller: nn.Module):
        super().__init__()
        self.student = distiller.student
        self.terms = distiller.terms
        self.trained_teachers = nn.ModuleDict(distiller.trained_teachers())
        object.__setattr__(self, "distiller", distiller)   # not registered: teachers are not DDP's

    def forward(self, batch):
        return self.distiller(batch)


def wrap_for_ranks(distiller: nn.Module, world: World, device: torch.device) -> nn.Module:
    """The module the loop calls each step: the distiller itself for one process; for several, its
    :class:`TrainablePart` under ``DistributedDataParallel`` (``find_unused_parameters=False``: every
    trainable parameter joins each step's graph, zero-weight terms included, see ``Distiller.forward``).
    Gradients are averaged over ranks, so with equal per-rank batches a step equals one step of a single
    process on the union of the ranks' batches."""
    if world.size <= 1:
        return distiller
    from torch.nn.parallel import DistributedDataParallel
    ids = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else None
    return DistributedDataParallel(TrainablePart(distiller), device_ids=ids, find_unused_parameters=False)


def convert_sync_batchnorm(student: nn.Module) -> nn.Module:
    """The student with its BatchNorm layers (timm's BatchNormAct2d included) as SyncBatchNorm: batch
    statistics over the global batch. The parameter and buffer objects are kept (checkpoints and
    exported weights keep their plain BatchNorm keys)."""
    try:
        from timm.layers import convert_sync_batchnorm as convert
    except ImportError:   # pragma: no cover - timm always has it in the supported range
        convert = nn.SyncBatchNorm.convert_sync_batchnorm
    return convert(student)
