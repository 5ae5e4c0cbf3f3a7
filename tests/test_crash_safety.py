"""Crash safety (issue 12): real ``python -m vitkd`` processes SIGKILLed at moments drawn from a seeded RNG.

* A training run killed three times (once proven inside a checkpoint write) and resumed with ``--resume`` after
  each kill ends with model weights whose sha256 equals an uninterrupted run's (single process, CPU), with the
  same per-epoch metrics, and no stray temp file.
* An ``--overwrite`` killed part-way never leaves a folder that loads as the old run.
* A suite (``vitkd compare``) killed after its first run finished does not train that run again.
* A deep-mutual-learning run (a ``peer`` teacher trained with the student) and a run distilling from the student's
  EMA (an ``ema`` teacher), each killed twice and resumed, end bit-identical to their uninterrupted runs: the student,
  the peer's and the EMA's weights, and the metrics (issue 31).
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from vitkd.cli import main
from vitkd.rundir import RunDir

pytestmark = pytest.mark.isa   # CPU-sensitive: .ci/run runs these again under other instruction sets

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

CFG = {
    "seed": 1,
    "model": {"name": "vit_tiny_patch16_224",
              "args": {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2,
                       "drop_path_rate": 0.1}},
    "data": {"name": "digits", "train_subset": 96, "batch_size": 8, "augment": "light"},
    "train": {"epochs": 3, "lr": 1e-3, "warmup_epochs": 1, "eval_every": 3, "checkpoint_every": 2, "threads": 1,
              "progress": False},
}
KILLS = 3
SEED = 12


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def temp_files(folder: Path):
    return sorted(folder.glob(".*.tmp")) if folder.is_dir() else []


def checkpoint_temps(folder: Path):
    return [p.name for p in temp_files(folder) if p.name.startswith(f".{RunDir.CHECKPOINT}.")]


def launch(cfg: Path, out: Path, log: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vitkd", "train", str(cfg), "--out", str(out), *extra],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, env=ENV, cwd=ROOT)


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def wait_for(cond, proc: subprocess.Popen, timeout: float = 120.0, poll: float = 0.0005) -> bool:
    """Poll ``cond`` until it holds (True) or the process ends or the time is up (False)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        if proc.poll() is not None:
            return bool(cond())
        time.sleep(poll)
    return False


def checkpoint_id(run: Path):
    try:
        st = (run / RunDir.CHECKPOINT).stat()
        return st.st_ino, st.st_mtime_ns
    except FileNotFoundError:
        return None


def after_checkpoints(run: Path, n: int):
    """A condition for :func:`wait_for`: the run has written ``n`` more checkpoints since this call."""
    seen, last = 0, checkpoint_id(run)

    def cond() -> bool:
        nonlocal seen, last
        now = checkpoint_id(run)
        if now is not None and now != last:
            seen, last = seen + 1, now
        return seen >= n
    return cond


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, in this process (same single thread and CPU as the killed ones)."""
    from vitkd.config import parse_config
    from vitkd.engine import train
    root = tmp_path_factory.mktemp("reference")
    threads = torch.get_num_threads()
    try:
        train(parse_config(yaml.safe_load(yaml.safe_dump(CFG))), root / "run", log=lambda m: None)
    finally:
        torch.set_num_threads(threads)
    return root / "run"


def epochs_of(run: Path):
    keys = ("epoch", "lr", "train_loss", "train_ce", "val_top1", "test_top1", "val_loss", "test_loss")
    return [{k: e.get(k) for k in keys} for e in json.loads((run / RunDir.METRICS_JSON).read_text())["epochs"]]


def test_killed_three_times_then_resumed_equals_an_uninterrupted_run(tmp_path, reference):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(CFG))
    run = tmp_path / "run"
    rng = random.Random(SEED)
    in_write = rng.randrange(KILLS)              # which kill waits for a checkpoint write
    plan = [("write", 0, 0.0) if k == in_write else ("step", rng.randint(1, 3), rng.uniform(0.0, 0.03))
            for k in range(KILLS)]
    kills, proven, logs = [], 0, []
    while True:
        logs.append(tmp_path / f"segment{len(logs)}.log")
        proc = launch(cfg, run, logs[-1], *(["--resume"] if logs[1:] else []))
        if len(kills) >= KILLS and proven:   # every kill done: the last resume runs to the end
            assert proc.wait(timeout=300) == 0, logs[-1].read_text()
            break
        assert len(kills) < KILLS + 5, f"no kill was proven inside a checkpoint write: {kills}"
        # the planned kills, then more kills inside writes until one is proven
        kind, n_checkpoints, delay = plan[len(kills)] if len(kills) < KILLS else ("write", 0, 0.0)
        if kind == "write":   # the kill lands while the checkpoint's temp file exists: between creation and rename
            stray = set(checkpoint_temps(run))   # left by an earlier kill (this process removes them as it starts)
            caught = wait_for(lambda: set(checkpoint_temps(run)) - stray, proc)
            assert caught, f"the run ended before a checkpoint write was caught:\n{logs[-1].read_text()}"
            kill(proc)
            inside = bool(set(checkpoint_temps(run)) - stray)   # this process's temp file outlived it
            proven += inside
            kills.append("inside a checkpoint write" if inside else "just after a checkpoint write")
        else:                 # after this process's n-th checkpoint, plus a random part of a step
            caught = wait_for(after_checkpoints(run, n_checkpoints), proc)
            assert caught, f"the run ended before its checkpoint {n_checkpoints}:\n{logs[-1].read_text()}"
            time.sleep(delay)
            kill(proc)
            kills.append(f"{delay * 1000:.1f} ms after checkpoint {n_checkpoints} of the process")
        assert proc.returncode == -signal.SIGKILL, logs[-1].read_text()
    # the resumed run: the same weights, bit for bit, the same metrics, nothing stray
    assert RunDir(run).is_finished()
    assert sha256(run / RunDir.WEIGHTS) == sha256(reference / RunDir.WEIGHTS)
    assert epochs_of(run) == epochs_of(reference)
    assert temp_files(run) == []
    umask = os.umask(0)
    os.umask(umask)
    assert (run / RunDir.WEIGHTS).stat().st_mode & 0o777 == 0o666 & ~umask   # outputs follow the umask
    # every resume says how many epochs are done; each epoch printed a line though no terminal was attached
    texts = [p.read_text() for p in logs]
    assert all("resumed " in t and "epochs done" in t for t in texts[1:]), texts
    assert any(f"epoch {e}/3 loss" in t for t in texts for e in (1, 2, 3))
    resumes = yaml.safe_load((run / RunDir.META).read_text())["resumes"]
    assert resumes == []   # nothing changed on resume: the run stays bit-identical


def test_a_killed_overwrite_never_loads_as_the_old_run(tmp_path, reference, capsys):
    old = tmp_path / "run"
    shutil.copytree(reference, old)
    old_weights = sha256(old / RunDir.WEIGHTS)
    new_cfg = dict(yaml.safe_load(yaml.safe_dump(CFG)), seed=2)
    cfg = tmp_path / "new.yaml"
    cfg.write_text(yaml.safe_dump(new_cfg))
    proc = launch(cfg, old, tmp_path / "overwrite.log", "--overwrite")
    # the overwrite has begun when the old run's files start to go; the kill comes a random moment later
    assert wait_for(lambda: not RunDir(old).is_finished(), proc), (tmp_path / "overwrite.log").read_text()
    time.sleep(random.Random(SEED).uniform(0.0, 0.05))
    kill(proc)
    folder = RunDir(old)
    assert not folder.is_finished()
    assert not (old / RunDir.WEIGHTS).exists() or sha256(old / RunDir.WEIGHTS) != old_weights
    # as a teacher: refused in one line
    student = dict(yaml.safe_load(yaml.safe_dump(CFG)))
    student["distill"] = {"teachers": {"t": {"checkpoint": str(old)}}, "terms": [{"type": "ce"}, {"type": "kd"}]}
    (tmp_path / "kd.yaml").write_text(yaml.safe_dump(student))
    capsys.readouterr()
    assert main(["train", str(tmp_path / "kd.yaml"), "--out", str(tmp_path / "kd")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds no finished run" in err[0] and str(old) in err[0]
    # by eval: refused in one line, or (once the new run checkpointed) the new run's student, never the old one
    code = main(["eval", str(old), "--json"])
    out, err = capsys.readouterr()
    if code == 2:
        assert len(err.strip().splitlines()) == 1 and str(old) in err
    else:
        assert code == 0 and torch.load(old / RunDir.CHECKPOINT, weights_only=True)["config"]["seed"] == 2
        assert "epoch" in json.loads(out.strip().splitlines()[-1])


SUITE_STUDENT = {
    "model": {"name": "vit_tiny_patch16_224",
              "args": {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 1, "num_heads": 2}},
    "data": {"name": "digits", "train_subset": 32, "batch_size": 16},
    "train": {"epochs": 1, "progress": False},
}


def test_a_killed_suite_does_not_train_its_finished_runs_again(tmp_path, capsys):
    (tmp_path / "student.yaml").write_text(yaml.safe_dump(SUITE_STUDENT))
    suite = {"name": "tiny", "student": "student.yaml", "seeds": [0], "jobs": 1,
             "rows": [{"name": "a", "family": "none"},
                      {"name": "b", "family": "none", "set": {"train.epochs": 40, "data.train_subset": 64}}]}
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    argv = ["compare", str(tmp_path / "suite.yaml"), "--out", str(tmp_path / "results"), "--cache",
            str(tmp_path / "cache"), "--jobs", "1"]
    first = tmp_path / "cache" / "rows" / "a" / "s0"
    proc = subprocess.Popen([sys.executable, "-m", "vitkd", *argv], stdout=open(tmp_path / "suite.log", "w"),
                            stderr=subprocess.STDOUT, env=ENV, cwd=tmp_path, start_new_session=True)
    try:
        assert wait_for(lambda: RunDir(first).is_finished(), proc, poll=0.01), (tmp_path / "suite.log").read_text()
        time.sleep(random.Random(SEED).uniform(0.0, 0.3))
    finally:
        os.killpg(proc.pid, signal.SIGKILL)   # the suite and its worker processes
        proc.wait()
    assert not RunDir(tmp_path / "cache" / "rows" / "b" / "s0").is_finished()
    assert not (tmp_path / "results").exists()
    mtime = (first / RunDir.WEIGHTS).stat().st_mtime_ns
    # the second row shortened so the rerun is quick; the first row's config is unchanged
    suite["rows"][1]["set"] = {"train.epochs": 1}
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    capsys.readouterr()
    threads = torch.get_num_threads()
    try:
        assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "run rows/b/s0 done" in out and "rows/a/s0 done" not in out
    assert (first / RunDir.WEIGHTS).stat().st_mtime_ns == mtime
    assert (tmp_path / "results" / "results.csv").is_file()


# issue 31: the online teacher sources (vitkd.methods.online); both runs have drop-path in every model they train
ONLINE = {
    "dml": {"distill": {"teachers": {"peer1": {"peer": {"model": "vit_tiny_patch16_224", "args": {
        "img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2, "drop_path_rate": 0.1}}}},
        "terms": [{"type": "ce"}, {"type": "kd", "teacher": "peer1", "T": 1.0}, {"type": "ce", "student": "peer1"},
                  {"type": "kd", "student": "peer1", "teacher": "student", "T": 1.0}]}},
    "ema": {"train": {**CFG["train"], "ema_decay": 0.9},
            "distill": {"teachers": {"mean": {"ema": {"warmup": 0.2}}},
                        "terms": [{"type": "ce", "weight": 0.5}, {"type": "kd", "weight": 0.5, "T": 2.0}]}},
}


@pytest.mark.parametrize("kind", sorted(ONLINE))
def test_killed_online_distillation_resumes_bit_exactly(tmp_path, kind):
    from vitkd.config import parse_config
    from vitkd.engine import train
    raw = {**yaml.safe_load(yaml.safe_dump(CFG)), **ONLINE[kind]}
    threads = torch.get_num_threads()
    try:
        train(parse_config(yaml.safe_load(yaml.safe_dump(raw))), tmp_path / "reference", log=lambda m: None)
    finally:
        torch.set_num_threads(threads)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    run, rng, logs = tmp_path / "run", random.Random(SEED), []
    for k in range(2):   # after the process's n-th checkpoint, plus a random part of a step
        logs.append(tmp_path / f"segment{k}.log")
        proc = launch(cfg, run, logs[-1], *(["--resume"] if k else []))
        n_checkpoints, delay = rng.randint(1, 3), rng.uniform(0.0, 0.03)
        assert wait_for(after_checkpoints(run, n_checkpoints), proc), logs[-1].read_text()
        time.sleep(delay)
        kill(proc)
        assert proc.returncode == -signal.SIGKILL, logs[-1].read_text()
    logs.append(tmp_path / "last.log")
    assert launch(cfg, run, logs[-1], "--resume").wait(timeout=300) == 0, logs[-1].read_text()
    ref = tmp_path / "reference"
    files = [RunDir.WEIGHTS] + ([RunDir.EMA_WEIGHTS] if kind == "ema" else ["teachers/peer1.safetensors"])
    for name in files:
        assert sha256(run / name) == sha256(ref / name), name
    extra = ["peer1_val_top1", "peer1_test_top1", "ensemble_test_top1"] if kind == "dml" else ["ema_test_top1"]
    got, want = (json.loads((r / RunDir.METRICS_JSON).read_text())["epochs"] for r in (run, ref))
    assert epochs_of(run) == epochs_of(ref)
    assert [[e.get(k) for k in extra] for e in got] == [[e.get(k) for k in extra] for e in want]
    assert all(want[-1][k] is not None for k in extra)   # evaluated in the last epoch
    assert temp_files(run) == [] and all("resumed " in p.read_text() for p in logs[1:])
