"""Fashion-MNIST as a vitkd dataset (issue 27), on the real files and on IDX fixtures the tests write themselves.

The tests on the real files need Debian's ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``). They
are skipped where it is absent, except when ``VITKD_REQUIRE_FASHION_MNIST=1`` (``.ci/run`` installs the package
and sets it): there a missing package fails them.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from vitkd.config import DATASET_NAMES, DataCfg, DataError
from vitkd.data import SOURCES
from vitkd.datasets import fashion_mnist as fm
from vitkd.datasets.idx import parse_idx, read_idx_bytes

from loopback import serve
import torch

from vitkd.cli import main
from test_bad_input import snapshot


def cli(argv, capsys):
    """``vitkd ARGV`` in this process: (exit code, stdout, stderr); the thread count a run sets is restored."""
    threads = torch.get_num_threads()
    try:
        code = main(argv)
    finally:
        torch.set_num_threads(threads)
    got = capsys.readouterr()
    return code, got.out, got.err


def run_cli(argv, capsys):
    code, _, err = cli(argv, capsys)
    return code, err

DEBIAN = fm.DEBIAN_DIR
HAVE_REAL = all((DEBIAN / f"{f.name}.gz").is_file() for f in fm.FILES)
REQUIRED = os.environ.get("VITKD_REQUIRE_FASHION_MNIST") == "1"
real_files = pytest.mark.skipif(not HAVE_REAL and not REQUIRED,
                                reason=f"Debian's {fm.DEBIAN_PACKAGE} is not installed ({DEBIAN})")


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    """A fresh VITKD_HOME per test: no cache of verified arrays or downloads from before."""
    h = tmp_path / "vitkd_home"
    monkeypatch.setenv("VITKD_HOME", str(h))
    return h


# ---------------------------------------------------------------------- an independent IDX writer and reader
def idx_bytes(arr: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array, written out here from the format's definition (LeCun's page)."""
    assert arr.dtype == np.uint8
    return struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def read_reference(path: Path) -> np.ndarray:
    """The array in a (gzipped) IDX uint8 file, read without vitkd: magic 2051 (images) or 2049 (labels)."""
    with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack(">I", data[:4])
    if magic == 2051:
        n, rows, cols = struct.unpack(">III", data[4:16])
        return np.frombuffer(data, np.uint8, offset=16).reshape(n, rows, cols)
    assert magic == 2049
    n, = struct.unpack(">I", data[4:8])
    return np.frombuffer(data, np.uint8, offset=8).reshape(n)


def test_idx_reader_equals_an_independent_encoding(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 7, dtype=np.uint8)
    for name, arr in (("img", images), ("lab", labels)):
        raw = tmp_path / name
        raw.write_bytes(idx_bytes(arr))
        gz = tmp_path / f"{name}.gz"
        gz.write_bytes(gzip.compress(idx_bytes(arr)))
        for p in (raw, gz):
            got = parse_idx(read_idx_bytes(p), p)
            assert got.dtype == np.uint8 and np.array_equal(got, arr)
            assert np.array_equal(read_reference(p), arr)


@pytest.mark.parametrize("case, expect", [
    ("truncated", "truncated"),
    ("trailing", "trailing bytes"),
    ("wrong magic", "not an IDX file"),
    ("wrong type", "unknown type byte"),
    ("cut header", "header cut short"),
    ("cut gzip", "not a complete gzip file"),
])
def test_idx_format_errors_are_one_line_naming_the_file(tmp_path, case, expect):
    good = idx_bytes(np.zeros((3, 28, 28), np.uint8))
    data = {"truncated": good[:-5], "trailing": good + b"\0", "wrong magic": b"\x01" + good[1:],
            "wrong type": good[:2] + b"\x07" + good[3:], "cut header": good[:9],
            "cut gzip": gzip.compress(good)[:-12]}[case]
    p = tmp_path / "file"
    p.write_bytes(data)
    with pytest.raises(DataError) as e:
        parse_idx(read_idx_bytes(p), p)
    msg = str(e.value)
    assert expect in msg and str(p) in msg and "\n" not in msg


# ---------------------------------------------------------------------- fixtures at data.root, through the CLI
def write_fixture_root(root: Path, n_train: int = 60000, n_test: int = 10000, gz: bool = False) -> None:
    """Four IDX files of the right names (zeros, with a label count of our choosing): the format is right, the
    content is not Fashion-MNIST's."""
    root.mkdir(parents=True, exist_ok=True)
    arrays = {"train_images": np.zeros((n_train, 28, 28), np.uint8), "train_labels": np.arange(n_train, dtype=np.uint8) % 10,
              "test_images": np.zeros((n_test, 28, 28), np.uint8), "test_labels": np.arange(n_test, dtype=np.uint8) % 10}
    for f in fm.FILES:
        data = idx_bytes(arrays[f.key])
        (root / (f.name + (".gz" if gz else ""))).write_bytes(gzip.compress(data, 1) if gz else data)


def _train_cfg(tmp_path: Path, root: Path, **data) -> Path:
    cfg = {"name": "fm", "seed": 0,
           "model": {"name": "vit_tiny_patch16_224",
                     "args": {"img_size": 28, "patch_size": 7, "embed_dim": 32, "depth": 1, "num_heads": 2}},
           "data": {"name": "fashion_mnist", "root": str(root), "train_subset": 64, "batch_size": 32, **data},
           "train": {"epochs": 1, "warmup_epochs": 0, "progress": False, "threads": 1}}
    p = tmp_path / "fm.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


@pytest.mark.parametrize("case, file, expect", [
    ("missing", "t10k-labels-idx1-ubyte", "not found"),
    ("wrong count", "t10k-images-idx3-ubyte", "holds uint8 [9999, 28, 28]"),
    ("truncated", "train-labels-idx1-ubyte", "truncated"),
    ("wrong magic", "train-images-idx3-ubyte", "not an IDX file"),
    ("not the content", "train-images-idx3-ubyte", "decompressed MD5"),   # all four are zeros: the first is named
])
def test_a_bad_file_under_data_root_is_one_line_naming_it_and_nothing_is_written(tmp_path, capsys, case, file,
                                                                                   expect):
    root = tmp_path / "fm"
    write_fixture_root(root, n_test=9999 if case == "wrong count" else 10000)
    p = root / file
    if case == "missing":
        p.unlink()
    elif case == "truncated":
        p.write_bytes(p.read_bytes()[:-100])
    elif case == "wrong magic":
        p.write_bytes(b"\x08\x03" + p.read_bytes()[2:])
    cfg = _train_cfg(tmp_path, root)
    before = snapshot(tmp_path)
    code, err = run_cli(["train", str(cfg), "--out", str(tmp_path / "run")], capsys)
    assert code == 2, err
    assert err.count("\n") == 1 and str(p) in err and expect in err, err
    assert snapshot(tmp_path) == before   # no run folder, no cache of arrays
    assert not (tmp_path / "vitkd_home" / "datasets" / "cache").exists()


def test_without_any_files_the_error_says_what_to_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "no-debian")
    cfg = _train_cfg(tmp_path, root=tmp_path)
    raw = yaml.safe_load(cfg.read_text())
    del raw["data"]["root"]
    cfg.write_text(yaml.safe_dump(raw))
    code, err = run_cli(["train", str(cfg), "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and err.count("\n") == 1 and "vitkd data get fashion_mnist" in err, err
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------- splits and subsets (no files needed)
def test_subset_order_is_stratified_and_nested():
    labels = np.repeat(np.arange(10), 5500)
    np.random.RandomState(3).shuffle(labels)
    order = fm.subset_order(labels)
    assert sorted(order.tolist()) == list(range(len(labels)))
    for k in (1, 7, 10, 64, 512, 5123, 55000):
        counts = np.bincount(labels[order[:k]], minlength=10)
        assert counts.max() - counts.min() <= 1, (k, counts)
    assert set(order[:512]) <= set(order[:5123])   # nested by construction (prefixes)


def test_the_dataset_registry_and_the_config_schema_name_the_same_datasets():
    assert set(SOURCES) == set(DATASET_NAMES)
    assert DataCfg(name="fashion_mnist").root is None   # no data.root needed: the files are found


def test_profile_takes_one_channel_at_28_px(capsys):
    code, out, err = cli(["profile", "vit_tiny_patch16_224", "--img-size", "28", "--in-chans", "1",
                          "--no-throughput", "--json"], capsys)
    assert code == 0, err
    assert tuple(json.loads(out)["input_size"]) == (1, 28, 28)
    code, err = run_cli(["profile", "resnet10t", "--in-chans", "0", "--no-throughput"], capsys)
    assert code == 2 and "--in-chans" in err


# ---------------------------------------------------------------------- the real files
def _require_real():
    if not HAVE_REAL:
        pytest.fail(f"VITKD_REQUIRE_FASHION_MNIST=1 but {DEBIAN} lacks the files (apt-get install {fm.DEBIAN_PACKAGE})")


@real_files
def test_the_loader_equals_an_independent_reading_of_the_real_files():
    _require_real()
    arrays = fm.load()
    for f in fm.FILES:
        ref = read_reference(DEBIAN / f"{f.name}.gz")
        assert ref.shape == f.shape
        assert np.array_equal(arrays[f.key], ref), f.key   # every image and label
        with gzip.open(DEBIAN / f"{f.name}.gz", "rb") as g:
            assert hashlib.md5(g.read()).hexdigest() == f.md5
    assert (np.bincount(arrays["train_labels"]) == 6000).all() and (np.bincount(arrays["test_labels"]) == 1000).all()


@real_files
def test_the_splits_are_fixed_stratified_and_disjoint():
    _require_real()
    y = fm.load()["train_labels"]
    val = fm.val_indices(y)
    assert len(val) == 5000 and len(set(val.tolist())) == 5000
    assert (np.bincount(y[val], minlength=10) == 500).all()
    # the split is the documented recipe, written out again here
    rng = np.random.RandomState(20170825)
    again = np.sort(np.concatenate([np.flatnonzero(y == c)[rng.permutation(6000)[:500]] for c in range(10)]))
    assert np.array_equal(val, again)
    parts = fm.splits()
    assert [len(parts[s][1]) for s in ("train", "val", "test")] == [55000, 5000, 10000]
    x_all = fm.load()["train_images"]
    assert np.array_equal(parts["val"][0], x_all[val])
    keep = np.setdiff1d(np.arange(60000), val)
    assert np.array_equal(parts["train"][0], x_all[keep]) and np.array_equal(parts["train"][1], y[keep])


@real_files
def test_torchvision_reads_the_same_images_from_the_layout_vitkd_also_reads(tmp_path):
    _require_real()
    from torchvision.datasets import FashionMNIST
    raw = tmp_path / "tv" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for f in fm.FILES:
        with gzip.open(DEBIAN / f"{f.name}.gz", "rb") as g:
            (raw / f.name).write_bytes(g.read())
    found = fm.find(str(tmp_path / "tv"))
    assert found is not None and found.folder == raw and found.where.startswith("data.root")
    mine = fm.load(str(tmp_path / "tv"))
    for train, key in ((True, "train"), (False, "test")):
        ds = FashionMNIST(str(tmp_path / "tv"), train=train, download=False)
        assert np.array_equal(ds.data.numpy(), mine[f"{key}_images"])
        assert np.array_equal(ds.targets.numpy(), mine[f"{key}_labels"])


@real_files
def test_verified_arrays_are_cached_once_and_a_changed_file_is_verified_again(tmp_path, home, monkeypatch):
    _require_real()
    root = tmp_path / "copy"
    shutil.copytree(DEBIAN, root)
    fm.load(str(root))
    cached = list((home / "datasets" / "cache").glob("fashion_mnist-*.npz"))
    assert len(cached) == 1
    calls = []
    monkeypatch.setattr(fm, "_read", lambda p, spec: calls.append(p))
    fm.load(str(root))
    assert calls == []   # from the cache: no file read again
    monkeypatch.undo()
    monkeypatch.setenv("VITKD_HOME", str(home))
    # one byte of the test labels altered (and recompressed): a new key, verified again, refused
    p = root / "t10k-labels-idx1-ubyte.gz"
    data = bytearray(gzip.decompress(p.read_bytes()))
    data[100] = (data[100] + 1) % 10
    p.write_bytes(gzip.compress(bytes(data)))
    with pytest.raises(DataError, match="decompressed MD5"):
        fm.load(str(root))


@real_files
def test_data_get_uses_the_debian_files_and_data_list_reports_them(capsys):
    _require_real()
    code, out, err = cli(["data", "get", "fashion_mnist", "--no-install", "--quiet"], capsys)
    assert code == 0, err
    assert json.loads(out) == {"dataset": "fashion_mnist", "found": str(DEBIAN),
                               "where": f"Debian package {fm.DEBIAN_PACKAGE}", "verified": True}
    code, out, err = cli(["data", "list", "--json"], capsys)
    rows = {r["dataset"]: r for r in json.loads(out)}
    assert code == 0 and set(rows) == set(DATASET_NAMES)
    assert rows["fashion_mnist"]["found"] == str(DEBIAN) and rows["fashion_mnist"]["verified"] is True


def _mirror(tmp_path: Path):
    site = tmp_path / "site"
    site.mkdir()
    for f in fm.FILES:
        shutil.copy(DEBIAN / f"{f.name}.gz", site / f"{f.name}.gz")
    return serve(site)


@real_files
def test_data_get_downloads_from_a_loopback_mirror_verifies_and_caches(tmp_path, home, capsys):
    _require_real()
    srv, state, url = _mirror(tmp_path)
    try:
        code, err = run_cli(["data", "get", "fashion_mnist", "--mirror", url, "--quiet"], capsys)
    finally:
        srv.shutdown()
    assert code == 0, err
    folder = home / "datasets" / "fashion_mnist"
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{f.name}.gz" for f in fm.FILES)
    assert sorted(r[0] for r in state.requests) == sorted(f"{f.name}.gz" for f in fm.FILES)
    found = fm.find(None)
    assert found.folder == folder and found.where == "vitkd cache"
    st = fm.status()
    assert st["verified"] and st["found"] == str(folder)


@real_files
def test_a_corrupted_download_is_refused_and_nothing_keeps_a_final_name(tmp_path, home, capsys):
    _require_real()
    srv, state, url = _mirror(tmp_path)
    state.reset(**{"t10k-images-idx3-ubyte.gz": "corrupt"})
    try:
        code, err = run_cli(["data", "get", "fashion_mnist", "--mirror", url, "--quiet"], capsys)
    finally:
        srv.shutdown()
    assert code == 2 and err.count("\n") == 1 and "t10k-images-idx3-ubyte" in err, err
    folder = home / "datasets" / "fashion_mnist"
    names = sorted(p.name for p in folder.iterdir()) if folder.exists() else []
    assert "t10k-images-idx3-ubyte.gz" not in names and not [n for n in names if n.endswith(".part")], names


@real_files
def test_a_stalling_mirror_meets_the_deadline_in_one_line(tmp_path, home, capsys, monkeypatch):
    _require_real()
    srv, state, url = _mirror(tmp_path)
    state.reset(**{f"{f.name}.gz": "drip" for f in fm.FILES})
    monkeypatch.setenv("VITKD_DATA_DEADLINE", "2")
    t0 = time.monotonic()
    try:
        code, err = run_cli(["data", "get", "fashion_mnist", "--mirror", url, "--quiet"], capsys)
    finally:
        srv.shutdown()
    assert code == 2 and err.count("\n") == 1 and "VITKD_DATA_DEADLINE" in err, err
    assert time.monotonic() - t0 < 30
    folder = home / "datasets" / "fashion_mnist"
    assert not folder.exists() or not any(folder.iterdir())


def _offline(tmp_path, monkeypatch):
    """No Debian files, no apt, and a mirror nothing listens on (connection refused, as offline)."""
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "no-debian")
    monkeypatch.setattr(fm, "can_install", lambda: False)
    monkeypatch.setenv("VITKD_DATA_RETRIES", "0")
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    monkeypatch.setattr(fm, "torchvision_mirrors", lambda: [f"http://127.0.0.1:{port}/"])


def test_offline_and_unprivileged_data_get_says_what_to_run_in_one_line(tmp_path, capsys, monkeypatch):
    _offline(tmp_path, monkeypatch)
    code, err = run_cli(["data", "get", "fashion_mnist"], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert f"apt-get install {fm.DEBIAN_PACKAGE}" in err and "--mirror" in err


@real_files
def test_one_epoch_on_512_images_evaluates_on_the_10000_official_test_images(tmp_path, capsys):
    _require_real()
    cfg = _train_cfg(tmp_path, DEBIAN, train_subset=512, eval_batch_size=1000)
    out = tmp_path / "run"
    code, err = run_cli(["train", str(cfg), "--out", str(out)], capsys)
    assert code == 0, err
    meta = yaml.safe_load((out / "run.yaml").read_text())
    assert (meta["train_images"], meta["val_images"], meta["test_images"]) == (512, 5000, 10000)
    code, stdout, err = cli(["eval", str(out), "--json"], capsys)
    assert code == 0, err
    res = json.loads(stdout)
    assert (res["val_images"], res["test_images"]) == (5000, 10000)
    final = json.loads((out / "metrics.json").read_text())["final"]
    assert res["test_top1"] == final["test_top1"]   # the same 10,000 images, the same weights


@real_files
def test_data_get_as_root_installs_the_debian_package_through_apt_get(tmp_path, capsys, monkeypatch):
    """A stand-in ``apt-get`` on the PATH (it records its arguments and "installs" the files into the Debian folder,
    pointed at tmp here): data get calls it with the package's name, then finds and verifies the files."""
    _require_real()
    debian = tmp_path / "debian"
    monkeypatch.setattr(fm, "DEBIAN_DIR", debian)
    monkeypatch.setattr(fm, "can_install", lambda: True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    apt = bin_dir / "apt-get"
    apt.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'apt-args'}\nmkdir -p {debian}\n"
                   f"cp {DEBIAN}/*.gz {debian}/\n")
    apt.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    code, out, err = cli(["data", "get", "fashion_mnist", "--quiet"], capsys)
    assert code == 0, err
    assert (tmp_path / "apt-args").read_text().split() == ["install", "-y", "-q", fm.DEBIAN_PACKAGE]
    assert json.loads(out)["found"] == str(debian)


def test_a_one_channel_student_builds_dry_runs_and_is_costed_with_one_channel():
    """The input spec follows the model's own first conv: vit_fmnist_small takes one grey channel, so the dry
    build, the profile of a config and the data all give it one (a 3-channel probe failed before)."""
    from vitkd.config import parse_config
    from vitkd.engine.build import dry_build
    from vitkd.models import create, data_spec
    raw = {"seed": 0, "model": {"name": "vit_fmnist_small"}, "data": {"name": "digits", "img_size": 28},
           "train": {"epochs": 1, "progress": False}}
    dry_build(parse_config(raw))
    spec = data_spec(create("vit_fmnist_small", 10, {}))
    assert spec.input_size == (1, 28, 28) and len(spec.std) == 1
    spec3 = data_spec(create("resnet10t", 10, {"in_chans": 1}))
    assert spec3.input_size[0] == 1 and len(spec3.mean) == 1


# ---------------------------------------------------------------------- vitkd demo: Fashion-MNIST, else the digits
ROOT = Path(__file__).resolve().parents[1]


def test_demo_falls_back_to_the_digits_in_one_line_without_the_data(tmp_path, capsys, monkeypatch):
    from vitkd.cli import DEMO_FALLBACK, DEMO_SUITE, demo_suite
    _offline(tmp_path, monkeypatch)
    suite, why = demo_suite(str(ROOT / DEMO_SUITE), DEMO_FALLBACK, [], install=True)
    assert suite == DEMO_FALLBACK and why.count("\n") == 0
    assert "no fashion_mnist here" in why and DEMO_FALLBACK in why and "apt-get install" in why
    # through the CLI: the line, then the fallback suite's quick run (a tiny digits suite here)
    (tmp_path / "student.yaml").write_text(yaml.safe_dump({
        "model": {"name": "vit_digits_tiny"}, "data": {"name": "digits", "train_subset": 32, "batch_size": 16},
        "train": {"epochs": 1, "warmup_epochs": 0, "progress": False}}))
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump({
        "name": "tinydemo", "student": "student.yaml", "seeds": [0], "jobs": 1,
        "rows": [{"name": "no_kd", "family": "none", "group": "baseline"}]}))
    capsys.readouterr()
    code = main(["demo", "--suite", str(ROOT / DEMO_SUITE), "--fallback", str(tmp_path / "tiny.yaml"),
                 "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache")])
    out = capsys.readouterr().out
    assert code == 0 and out.splitlines()[0].startswith("vitkd demo: no fashion_mnist here")
    assert (tmp_path / "out" / "results.csv").is_file()


@real_files
def test_demo_runs_fashion_mnist_when_its_files_are_here():
    from vitkd.cli import DEMO_FALLBACK, DEMO_SUITE, demo_suite
    assert demo_suite(str(ROOT / DEMO_SUITE), DEMO_FALLBACK, [], install=False) == (str(ROOT / DEMO_SUITE), None)
