"""The C allocator's settings for training processes.

glibc's malloc gives freed memory back to the system eagerly: large blocks are ``mmap``-ed and unmapped on free, and
the heap's top is trimmed past 128 KiB. A training step frees and allocates the same activation and gradient
buffers every step, so each step faults all of them in again: on the 2-core machine of ``benchmarks/allocator.py``
a quarter of a worker's CPU time went to the kernel (about 8,000 minor page faults per step of the Fashion-MNIST
ViT-S). :func:`keep_freed_memory` raises both thresholds to 1 GiB, so freed blocks are reused instead; the cost is
that a process keeps up to that much freed memory. It changes where tensors live, never what is computed: the
weights are the same bit for bit (``tests/test_allocator.py``). ``VITKD_MALLOC=default`` keeps glibc's settings; on
a C library without ``mallopt`` (macOS) nothing changes.
"""
from __future__ import annotations

import ctypes
import os

__all__ = ["keep_freed_memory", "ENV", "KEEP_BYTES"]

ENV = "VITKD_MALLOC"          # "default": leave the C library's settings
KEEP_BYTES = 1 << 30
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3   # glibc's mallopt parameters (malloc.h)
_applied = [False]


def keep_freed_memory() -> bool:
    """Keep freed memory for reuse (glibc: ``mallopt`` trim and mmap thresholds at :data:`KEEP_BYTES`), once per
    process. Returns whether the settings are in effect."""
    if _applied[0] or os.environ.get(ENV, "").strip().lower() == "default":
        return _applied[0]
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):   # no mallopt in this process's C library
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied[0] = mallopt(_M_TRIM_THRESHOLD, KEEP_BYTES) == 1 and mallopt(_M_MMAP_THRESHOLD, KEEP_BYTES) == 1
    return _applied[0]
