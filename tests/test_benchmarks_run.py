"""The benchmark scripts still run against the current API (a smoke run each; no timing is asserted)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_distill_step_benchmark_runs_and_both_sides_compute_the_same_loss():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "distill_step.py"), "--steps", "1",
                          "--warmup", "0", "--batch-size", "2"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [line for line in out.stdout.splitlines() if "ratio vitkd/timm" in line]
    assert len(lines) == 2 and all("(same)" in line for line in lines), out.stdout


@pytest.mark.slow
def test_taps_benchmark_runs():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "taps.py"), "--reps", "1", "--batch", "1"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ratio to plain" in out.stdout


@pytest.mark.slow
def test_stored_logits_benchmark_runs():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "stored_logits.py"), "--steps", "1", "--warmup",
                          "0", "--batch-size", "2", "--img-size", "32", "--save-images", "4"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})   # this checkout's vitkd
    assert out.returncode == 0, out.stderr[-2000:]
    assert "stored/no-KD" in out.stdout and "bytes per sample per epoch" in out.stdout


@pytest.mark.slow
def test_train_speed_benchmark_runs():
    from vitkd.datasets import fashion_mnist
    if fashion_mnist.find() is None and os.environ.get("VITKD_REQUIRE_FASHION_MNIST") != "1":
        pytest.skip("no Fashion-MNIST files (vitkd data get fashion_mnist)")
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_speed.py"), "--steps", "1", "--warmup", "0",
                          "--batch", "8", "--subset", "16", "--teacher-batch", "2", "--precisions", "fp32", "bf16"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ratio vitkd/plain" in out.stdout and "bf16/fp32 step speed-up" in out.stdout, out.stdout
