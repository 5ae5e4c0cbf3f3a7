"""Nothing loaded can execute code (issue 26): every command that reads a checkpoint or a dataset pickle is given
a pickle whose ``__reduce__`` runs a shell command creating a marker file. Each exits 2 with one line naming the
file, the marker never appears, and the folders are byte-identical to before.

Checkpoints are read with ``torch.load(weights_only=True)`` (tensors and plain values only), CIFAR batches by a
restricted unpickler (builtin containers and NumPy arrays only). A checkpoint of the older format (NumPy's RNG
state pickled) is refused in one line that says how to convert a trusted copy; the conversion is tested too.
"""
from __future__ import annotations

import os
import pickle
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, List

import numpy as np
import pytest
import torch

from test_bad_input import run_cli, snapshot, tiny, train_tiny, write_yaml
from vitkd.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]


class Payload:
    """Unpickled, it runs ``touch MARKER`` through the shell (the attack the safe loaders must refuse)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def raw_pickle(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps({"student": Payload(marker), "epoch": 0}))


def torch_zip(path: Path, marker: Path) -> None:
    """The payload inside torch.save's zip format, beside real keys (as a tampered checkpoint would hold it)."""
    torch.save({"version": 3, "epoch": 0, "student": {"w": torch.zeros(1)}, "rng": Payload(marker)}, path)


PLANTERS = {"raw pickle": raw_pickle, "torch zip": torch_zip}


def test_the_payload_really_runs_under_an_unsafe_load(tmp_path):
    """The test's own check: what the cases below plant does create the marker when unpickled plainly."""
    marker = tmp_path / "marker"
    raw_pickle(tmp_path / "p.pkl", marker)
    pickle.loads((tmp_path / "p.pkl").read_bytes())
    assert marker.exists()


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished tiny run (its config and a real checkpoint of the current format)."""
    return train_tiny(tmp_path_factory.mktemp("security") / "run")


def unfinished_copy(run: Path, t: Path) -> Path:
    """The run as a kill would leave it: no stamp, its last checkpoint."""
    shutil.copytree(run, t / "run")
    (t / "run" / RunDir.STAMP).unlink()
    return t / "run"


def _run_cli(argv: List[str], capsys):
    code, err = run_cli(argv, capsys)
    return code, err.strip().splitlines()


def _one_line_exit_2(argv: List[str], t: Path, capsys, *expect: str) -> str:
    before = snapshot(t)
    code, lines = _run_cli(argv, capsys)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("vitkd: error: ")
    for piece in expect:
        assert piece in lines[0], (piece, lines[0])
    assert snapshot(t) == before
    return lines[0]


# -- every command that reads a checkpoint, given a planted one
def _train_resume(t: Path, run: Path) -> List[str]:
    target = unfinished_copy(run, t)
    return ["train", str(write_yaml(t / "cfg.yaml", tiny())), "--out", str(target), "--resume"]


def _eval_unfinished_run(t: Path, run: Path) -> List[str]:
    return ["eval", str(unfinished_copy(run, t))]


def _eval_checkpoint_file(t: Path, run: Path) -> List[str]:
    shutil.copytree(run, t / "run")   # a finished run: the file named on the command line is still read
    return ["eval", str(t / "run" / RunDir.CHECKPOINT)]


READERS = {"train --resume": _train_resume, "eval RUN (unfinished)": _eval_unfinished_run,
           "eval RUN/checkpoint.pt": _eval_checkpoint_file}


@pytest.mark.parametrize("plant", PLANTERS, ids=list(PLANTERS))
@pytest.mark.parametrize("reader", READERS, ids=list(READERS))
def test_a_planted_checkpoint_runs_no_code(reader: str, plant: str, run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cases = tmp_path / "case"
    cases.mkdir()
    argv = READERS[reader](cases, run)
    marker = tmp_path / "marker"
    PLANTERS[plant](cases / "run" / RunDir.CHECKPOINT, marker)
    line = _one_line_exit_2(argv, cases, capsys, str(cases / "run" / RunDir.CHECKPOINT), "refused by the safe loader",
                            "vitkd convert-checkpoint")
    assert plant != "torch zip" or "posix.system" in line   # torch's zip format: the object it asked for is named
    assert not marker.exists()


def test_a_planted_checkpoint_in_a_real_process(run, tmp_path):
    """The same through ``python -m vitkd`` (the process's own exit code and stderr)."""
    cases = tmp_path / "case"
    cases.mkdir()
    argv = _eval_checkpoint_file(cases, run)
    marker = tmp_path / "marker"
    torch_zip(cases / "run" / RunDir.CHECKPOINT, marker)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "vitkd", *argv], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "refused by the safe loader" in proc.stderr and not marker.exists()


def test_a_real_checkpoint_loads_with_weights_only(run):
    """What the loop writes is tensors and plain values: torch's own safe loader reads it."""
    ck = torch.load(run / RunDir.CHECKPOINT, map_location="cpu", weights_only=True)
    assert ck["version"] == 3 and isinstance(ck["rng"]["numpy"]["key"], torch.Tensor)


# -- checkpoints that load safely but are not whole
def _drop(key: str) -> Callable[[dict], dict]:
    return lambda ck: {k: v for k, v in ck.items() if k != key}


@pytest.mark.parametrize("reader", READERS, ids=list(READERS))
@pytest.mark.parametrize("key", ["student", "rng", "version"])
def test_a_checkpoint_missing_a_key_is_one_line(reader: str, key: str, run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = READERS[reader](tmp_path, run)
    path = tmp_path / "run" / RunDir.CHECKPOINT
    torch.save(_drop(key)(torch.load(path, weights_only=True)), path)
    _one_line_exit_2(argv, tmp_path, capsys, str(path), f"missing key '{key}'")


# -- the older format: refused in one line, converted from a trusted copy
def _as_format_2(ck: dict) -> dict:
    """The checkpoint as vitkd wrote it before: Python's RNG state a tuple, NumPy's the legacy tuple with an
    ndarray (which the safe loader refuses)."""
    py, npst = ck["rng"]["python"], ck["rng"]["numpy"]
    rng = {"python": (py["version"], tuple(py["state"].tolist()), py["gauss_next"]),
           "numpy": (npst["bit_generator"], npst["key"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
                     npst["cached_gaussian"]),
           "torch": ck["rng"]["torch"]}
    return {**ck, "version": 2, "rng": rng}


def test_an_old_checkpoint_is_refused_then_converted_from_a_trusted_copy(run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = _train_resume(tmp_path, run)
    path = tmp_path / "run" / RunDir.CHECKPOINT
    new = torch.load(path, weights_only=True)
    old = _as_format_2(new)
    torch.save(old, path)
    _one_line_exit_2(argv, tmp_path, capsys, "numpy", "vitkd convert-checkpoint OLD NEW --trust")
    # without --trust nothing is read or written
    _one_line_exit_2(["convert-checkpoint", str(path), str(tmp_path / "new.pt")], tmp_path, capsys, "--trust")
    code, lines = _run_cli(["convert-checkpoint", str(path), str(tmp_path / "new.pt"), "--trust"], capsys)
    assert code == 0 and not lines
    from vitkd.engine.checkpoint import load_checkpoint, set_rng_state
    converted = load_checkpoint(tmp_path / "new.pt")
    assert converted["version"] == 3 and all(torch.equal(converted["student"][k], new["student"][k])
                                             for k in new["student"])
    set_rng_state(converted["rng"])   # the same states as the old tuples held
    assert random.getstate() == old["rng"]["python"]
    got = np.random.get_state()
    assert got[0] == old["rng"]["numpy"][0] and np.array_equal(got[1], old["rng"]["numpy"][1])
    assert got[2:] == old["rng"]["numpy"][2:]
    shutil.move(tmp_path / "new.pt", path)   # the converted checkpoint resumes
    code, lines = _run_cli(argv, capsys)
    assert code == 0, lines


# -- CIFAR's pickled batches
def _cifar_folder(root: Path, marker: Path, poisoned: str) -> Path:
    """torchvision's cifar-10-batches-py layout with real-format batches, one file replaced by the payload."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.RandomState(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.randint(0, 256, size=(8, 3072), dtype=np.uint8), "labels": rng.randint(0, 10, 8).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    (folder / poisoned).write_bytes(pickle.dumps({"data": Payload(marker), "labels": [0]}, protocol=2))
    return root


@pytest.mark.parametrize("poisoned", ["data_batch_3", "test_batch", "batches.meta"])
def test_a_planted_cifar_batch_runs_no_code(poisoned: str, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "marker"
    root = _cifar_folder(tmp_path / "data", marker, poisoned)
    raw = tiny(data={"name": "cifar10", "root": str(root), "val_size": 8, "train_subset": None, "batch_size": 8})
    argv = ["train", str(write_yaml(tmp_path / "cfg.yaml", raw)), "--out", str(tmp_path / "out")]
    _one_line_exit_2(argv, tmp_path, capsys, str(root / "cifar-10-batches-py" / poisoned), "posix.system")
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_the_restricted_cifar_reader_reads_every_pickle_protocol(tmp_path):
    """Protocols 0 to 5 of NumPy arrays, sets and bytes (what the restricted unpickler must still admit)."""
    from vitkd.config import DataCfg
    from vitkd.data import DataSpec, build_datasets
    spec = DataSpec(img_size=(32, 32), mean=(0.5,) * 3, std=(0.5,) * 3)
    for proto in range(pickle.HIGHEST_PROTOCOL + 1):
        root = tmp_path / str(proto)
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        data = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            (folder / name).write_bytes(pickle.dumps({"data": data, "labels": [1, 2], "extra": {b"x", frozenset()},
                                                      "b": bytearray(b"y")}, protocol=proto))
        (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]},
                                                           protocol=proto))
        ds, n = build_datasets(DataCfg(name="cifar10", root=str(root), val_size=2), spec, seed=0)
        assert n == 10 and len(ds["test"]) == 2
        assert np.array_equal(ds["test"].items[1], data[1].reshape(3, 32, 32).transpose(1, 2, 0)), proto
