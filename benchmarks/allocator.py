"""The allocator setting of training processes (vitkd/engine/allocator.py): training steps with glibc's default
malloc against ``keep_freed_memory()``, in one run of this script.

    python benchmarks/allocator.py [--model vit_fmnist_small] [--batch 128] [--steps 40] [--rounds 3] [--json]

The setting is process-wide and applies before the first allocation, so each side runs in its own fresh
interpreter (``VITKD_MALLOC=default`` or not), one thread, the same model, seed and in-memory batch (forward,
cross-entropy, backward, AdamW). The rounds alternate the two sides; reported: each side's median step time over
all its steps, minor page faults per step and the kernel's share of the CPU time, and the ratio keep / default
(goal: below 1, nothing else changes: tests/test_allocator.py checks the weights).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one_side(model: str, batch: int, steps: int) -> dict:
    import resource
    import time

    import timm
    import torch

    import vitkd  # noqa: F401  (registers the models)
    from vitkd.engine.allocator import keep_freed_memory
    applied = keep_freed_memory()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    m = timm.create_model(model, num_classes=10)
    opt = torch.optim.AdamW(m.parameters(), 1e-3)
    cfg = m.pretrained_cfg.get("input_size", (1, 28, 28))
    x, y = torch.randn(batch, *cfg), torch.randint(0, 10, (batch,))

    def step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(m(x), y).backward()
        opt.step()

    for _ in range(3):
        step()
    r0, times = resource.getrusage(resource.RUSAGE_SELF), []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    user, system = r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime
    return {"applied": applied, "times": times, "faults_per_step": (r1.ru_minflt - r0.ru_minflt) / steps,
            "kernel_share": system / (user + system)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vit_fmnist_small")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--side", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.side:
        print(json.dumps(one_side(a.model, a.batch, a.steps)))
        return
    sides = {"default": [], "keep": []}
    for r in range(a.rounds):
        for name in (("default", "keep") if r % 2 == 0 else ("keep", "default")):
            env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
                   "VITKD_MALLOC": "default" if name == "default" else "keep"}
            out = subprocess.run([sys.executable, __file__, "--side", name, "--model", a.model, "--batch",
                                  str(a.batch), "--steps", str(a.steps)], env=env, capture_output=True, text=True,
                                 check=True)
            sides[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    report = {"model": a.model, "batch": a.batch, "steps": a.steps, "rounds": a.rounds}
    for name, runs in sides.items():
        report[name] = {"applied": runs[0]["applied"],
                        "median_step_ms": 1000 * statistics.median(t for r in runs for t in r["times"]),
                        "faults_per_step": statistics.median(r["faults_per_step"] for r in runs),
                        "kernel_share": statistics.median(r["kernel_share"] for r in runs)}
    report["ratio_keep_over_default"] = report["keep"]["median_step_ms"] / report["default"]["median_step_ms"]
    if a.json:
        print(json.dumps(report, indent=2))
        return
    for name in sides:
        s = report[name]
        print(f"{name:8s} setting applied: {s['applied']!s:5s}  median step {s['median_step_ms']:7.1f} ms  "
              f"minor faults/step {s['faults_per_step']:8.0f}  kernel share {100 * s['kernel_share']:4.1f}%")
    print(f"keep / default: {report['ratio_keep_over_default']:.3f}x the step time (goal: below 1)")


if __name__ == "__main__":
    main()
