"""Inference throughput (images per second), median of timed repetitions after warm-up."""
from __future__ import annotations

import math
import statistics
import time
from typing import Any, Dict, Optional, Union

import torch
import torch.nn as nn

from .macs import InputSpec

__all__ = ["measure_throughput"]


def _model_device(model: nn.Module) -> Optional[torch.device]:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.synchronize()


def measure_throughput(
    model: nn.Module,
    input_size: InputSpec = (3, 224, 224),
    batch_size: int = 32,
    warmup: int = 2,
    iters: int = 5,
    device: Union[str, torch.device] = "cpu",
) -> Dict[str, Any]:
    """Inference throughput in images/s from the median of ``iters`` timed
    forward passes (after ``warmup`` untimed ones), under
    ``torch.inference_mode`` with ``model.eval()``.

    The model's training mode and device are restored afterwards.
    """
    device = torch.device(device)
    orig_device = _model_device(model)
    was_training = model.training
    if isinstance(input_size, int):
        input_size = (3, input_size, input_size)
    if isinstance(input_size, torch.Tensor):
        x = input_size.to(device)
        batch_size = int(x.shape[0])
    else:
        x = torch.randn(batch_size, *tuple(int(s) for s in input_size), device=device)
    model.to(device).eval()
    times = []
    try:
        with torch.inference_mode():
            for _ in range(max(warmup, 0)):
                model(x)
            _sync(device)
            for _ in range(max(iters, 1)):
                t0 = time.perf_counter()
                model(x)
                _sync(device)
                times.append(time.perf_counter() - t0)
    finally:
        model.train(was_training)
        if orig_device is not None and orig_device != device:
            model.to(orig_device)
    med = statistics.median(times)
    return {
        "img_per_s": batch_size / med if med > 0 else math.inf,
        "median_batch_s": med,
        "batch_size": batch_size,
        "iters": len(times),
        "warmup": warmup,
        "device": str(device),
        "times_s": times,
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
    }


