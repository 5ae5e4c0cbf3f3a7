"""Process-group facts the engine needs: who am I, how many are we, and how numbers are combined.

One process: rank 0 of 1, and every reduction is the identity. Under ``torchrun`` (an initialised
``torch.distributed`` group) each rank trains on its shard and :class:`TorchReducer` combines sums.
Only rank 0 writes the run folder.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, List

import torch

__all__ = ["World", "Reducer", "TorchReducer", "current_world", "reducer_for"]


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
        return dict(zip(keys, t.tolist()))

    def gather(self, obj: Any) -> List[Any]:
        import torch.distributed as dist
        out: List[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out


def reducer_for(world: World, device: torch.device) -> Reducer:
    return TorchReducer(device) if world.size > 1 else Reducer()
