"""The model zoo (issue 16): publish -> index -> verified download over a real loopback HTTP server -> timm's
``local-dir:`` -> evaluation, and every way a download can go wrong.

A tiny comparison "suite" is built once per module: a RedNet teacher (``kernel_size: 5``, a model_args that must
round-trip), a no-KD ViT and a KD ViT, one short epoch each, with a results table written like the suite's. It
is published with the same `publish_suite` the integrator runs on the digits suite, into a zoo in tmp_path, and
served by an ``http.server`` on 127.0.0.1 whose misbehaviour each test chooses (Range ignored, a connection cut
halfway, a 503, corrupted bytes). The two checks on the committed zoo (every entry reproduces its top-1; every
card's figures equal the results row it cites) are one function each, run on the tiny zoo and on models/zoo.yaml.
"""
from __future__ import annotations

import csv
import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import timm
import torch
import yaml

import vitkd  # noqa: F401  (registers the archs)
from vitkd.cli import main
from vitkd.config import ConfigError, parse_config
from vitkd.io import sha256_file
from vitkd.rundir import RunDir
from vitkd.zoo import fetch, load_index
from vitkd.zoo.index import ZooError, save_index, update_readme
from vitkd.zoo import evaluate_entry, model_folder
from vitkd.compare.publish import publish_suite
from vitkd.zoo.publish import check_card_figures, halve_entry, publish_run

from loopback import serve

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = RunDir.WEIGHTS
VIT = {"name": "vit_tiny_patch16_224", "args": {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2,
                                                "num_heads": 2}}
DATA = {"name": "digits", "train_subset": 32, "batch_size": 16}
TRAIN = {"epochs": 1, "lr": 2e-3, "warmup_epochs": 0, "progress": False, "threads": 1}


# ---------------------------------------------------------------------- the tiny suite, published
def _train(raw: dict, out: Path) -> Path:
    from vitkd.engine import train
    train(parse_config(raw), out, log=lambda m: None)
    return out


def _write_csv(path: Path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _row(name, family, group, val, test, seeds="2"):
    return {"row": name, "group": group, "family": family, "size": "S", "student": "vit", "teachers": "",
            "seeds": seeds, "test_top1_mean": f"{test:.4f}", "test_top1_std": "1.2500",
            "test_top1_all": f"{test:.2f} {test:.2f}", "val_top1_mean": f"{val:.4f}", "params_m": "0.0280",
            "macs_m": "0.4500", "img_per_s": "1234.5000"}


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    """(project folder with models/zoo.yaml + results/compare/tiny, the module's HTTP server state, its base URL)."""
    proj = tmp_path_factory.mktemp("proj")
    cache = proj / "runs" / "compare" / "tiny"
    teacher = _train({"seed": 0, "model": {"name": "rednet_digits", "args": {"kernel_size": 5}}, "data": DATA,
                      "train": TRAIN}, cache / "teachers" / "inv")
    _train({"seed": 0, "model": VIT, "data": DATA, "train": TRAIN}, cache / "rows" / "no_kd" / "s0")
    _train({"seed": 0, "model": VIT, "data": DATA, "train": TRAIN,
            "distill": {"teachers": {"t": {"checkpoint": str(teacher)}},
                        "terms": [{"type": "ce", "weight": 0.5}, {"type": "kd", "weight": 0.5, "T": 4.0}]}},
           cache / "rows" / "kd" / "s0")
    res = proj / "results" / "compare" / "tiny"
    res.mkdir(parents=True)
    (res / "suite.yaml").write_text(yaml.safe_dump({
        "name": "tiny", "student": "student.yaml", "seeds": [0, 1], "baseline_family": "none",
        "reference_families": ["cnn"],
        "teachers": {"inv": {"config": "teacher.yaml", "label": "RedNet"}},
        "rows": [{"name": "no_kd", "family": "none", "group": "baseline", "size": "S"},
                 {"name": "cnn_alone", "family": "cnn", "group": "reference"},
                 {"name": "kd_test_best", "family": "logit", "teachers": {"t": "inv"}},
                 {"name": "kd", "family": "logit", "group": "heteromorphic", "teachers": {"t": "inv"}}]}))
    # kd_test_best has the best test mean but not the best val mean: the selection must not pick it
    _write_csv(res / "results.csv", [_row("no_kd", "none", "baseline", 50.0, 40.0),
                                     _row("cnn_alone", "cnn", "reference", 99.0, 99.0),
                                     _row("kd_test_best", "logit", "homomorphic", 55.0, 90.0),
                                     _row("kd", "logit", "heteromorphic", 60.0, 45.0)])
    _write_csv(res / "teachers.csv", [{"teacher": "inv", "label": "RedNet", "model": "rednet_digits",
                                       "test_top1": "12.0000", "val_top1": "11.0000", "params_m": "0.3706",
                                       "macs_m": "7.1613", "img_per_s": "1044.7628", "distilled_from": "",
                                       "wall_s": "1.0"}])
    cwd = os.getcwd()
    os.chdir(proj)
    try:
        publish_suite("results/compare/tiny", "models/zoo.yaml", log=lambda m: None)
    finally:
        os.chdir(cwd)
    srv, state, url = serve(proj / "models")
    yield proj, state, url
    srv.shutdown()


@pytest.fixture
def zoo(tiny_zoo, tmp_path, monkeypatch):
    """The tiny zoo as the environment sees it: its index, its files over HTTP, a fresh cache, fast retries."""
    proj, state, url = tiny_zoo
    state.reset()
    monkeypatch.setenv("VITKD_ZOO_MANIFEST", str(proj / "models" / "zoo.yaml"))
    monkeypatch.setenv("VITKD_ZOO_URL", url)
    monkeypatch.setenv("VITKD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VITKD_ZOO_RETRIES", "2")
    monkeypatch.setenv("VITKD_ZOO_BACKOFF", "0")
    return proj, state, url


def _cache(name):
    return fetch.entry_folder(name)


def _one_line_exit_2(argv, capsys, notes: int = 0):
    """Exit 2 and one error line (after ``notes`` lines saying a retry is coming)."""
    rc = main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(lines) == notes + 1 and lines[-1].startswith("vitkd: error: zoo"), (rc, lines)
    assert all("retrying in" in n for n in lines[:-1])
    return lines[-1]


# ---------------------------------------------------------------------- publish, index, cards
def test_publish_suite_picks_the_declared_selection(zoo):
    proj, _, _ = zoo
    idx = load_index()
    assert [e.name for e in idx.models] == ["tiny-teacher-inv", "tiny-no_kd", "tiny-kd"]   # kd: best on val
    kd = idx.get("tiny-kd")
    assert (kd.family, kd.group, kd.teachers, kd.suite.row, kd.suite.seed) == \
        ("logit", "heteromorphic", {"t": "tiny-teacher-inv"}, "kd", 0)
    shipped = yaml.safe_load((proj / "models" / "tiny-kd" / kd.config).read_text())
    assert shipped["distill"]["teachers"]["t"]["zoo"] == "tiny-teacher-inv"   # the reproduce config needs no run folder
    assert shipped["distill"]["teachers"]["t"]["checkpoint"] is None
    t = idx.get("tiny-teacher-inv")
    assert (t.architecture, t.model_args, t.suite.figures["test_top1"]) == ("rednet_digits", {"kernel_size": 5}, "12.0000")
    for e in idx.models:   # the student alone: the weights hold the student's keys, no teacher, no connector
        from safetensors import safe_open
        with safe_open(str(proj / "models" / e.name / WEIGHTS), "pt") as f:
            keys = set(f.keys())
        model = vitkd.models.create(e.architecture, e.num_classes, e.model_args)
        assert keys == set(model.state_dict())


def check_cards(index_path: Path):
    """Every card's cited suite figures equal the committed results row it cites (and the card shows them)."""
    idx = load_index(str(index_path))
    for e in idx.models:
        card = (idx.folder() / e.name / "README.md").read_text()
        check_card_figures(e, idx.project_root(), card)
    return len(idx.models)


@pytest.mark.isa
def test_every_card_cites_its_results_row_exactly(zoo, tmp_path):
    proj, _, _ = zoo
    assert check_cards(proj / "models" / "zoo.yaml") == 3
    assert check_cards(ROOT / "models" / "zoo.yaml") >= 0   # the committed zoo, however many entries it holds
    # and the check can fail: a figure that differs from the table
    bad = tmp_path / "proj"
    shutil.copytree(proj, bad, ignore=shutil.ignore_patterns("runs"))
    table = bad / "results" / "compare" / "tiny" / "results.csv"
    table.write_text(table.read_text().replace("60.0000", "61.0000"))
    with pytest.raises(ConfigError, match="val_top1_mean"):
        check_cards(bad / "models" / "zoo.yaml")


def check_entries_reproduce(index_path: Path, home: Path, monkeypatch):
    """Every entry, downloaded over loopback HTTP into a fresh cache, loaded through local-dir: and evaluated,
    scores exactly its index top-1."""
    idx = load_index(str(index_path))
    srv, state, url = serve(idx.folder())
    try:
        monkeypatch.setenv("VITKD_ZOO_URL", url)
        monkeypatch.setenv("VITKD_HOME", str(home))
        for e in idx.models:
            r = evaluate_entry(e.name, str(index_path))
            assert r[f"{e.split}_top1"] == e.top1, e.name
        assert {n for n, _, _ in state.requests} == {f.name for e in idx.models for f in e.files} or not idx.models
    finally:
        srv.shutdown()
    return len(idx.models)


@pytest.mark.isa
def test_every_entry_reproduces_its_top1_from_a_fresh_cache(zoo, tmp_path, monkeypatch):
    proj, _, _ = zoo
    assert check_entries_reproduce(proj / "models" / "zoo.yaml", tmp_path / "a", monkeypatch) == 3
    assert check_entries_reproduce(ROOT / "models" / "zoo.yaml", tmp_path / "b", monkeypatch) >= 0


def test_local_dir_round_trips_model_args_and_weights(zoo):
    proj, _, _ = zoo
    folder, _ = model_folder("tiny-teacher-inv")[1], None
    m = timm.create_model(f"local-dir:{folder}", pretrained=True)   # timm's own loader, after `import vitkd`
    assert {blk.conv2.kernel_size for blk in m.modules() if hasattr(blk, "conv2") and hasattr(blk.conv2, "kernel_size")
            and not isinstance(blk.conv2, torch.nn.Conv2d)} == {5}
    ref = vitkd.models.create("rednet_digits", 10, {"kernel_size": 5}, str(proj / "runs/compare/tiny/teachers/inv"))
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(m.eval()(x), ref.eval()(x))
    assert torch.equal(vitkd.zoo.create_model("tiny-teacher-inv").eval()(x), ref(x))


def test_publishing_is_byte_deterministic(zoo, tmp_path):
    proj, _, _ = zoo
    e = publish_run(proj / "runs/compare/tiny/rows/no_kd/s0", "again", tmp_path / "models" / "zoo.yaml",
                    figures={"params_m": 0.0})
    assert e.file(WEIGHTS).sha256 == load_index().get("tiny-no_kd").file(WEIGHTS).sha256
    assert e.file("config.json").sha256 == load_index().get("tiny-no_kd").file("config.json").sha256


def _one_image_off_in_half(real):
    """``evaluate_folder`` as if float16 weights changed one prediction (a quarter point on the tiny test split)."""
    def evaluate(folder, config, split):
        from safetensors import safe_open
        with safe_open(str(Path(folder) / WEIGHTS), "pt") as f:
            halved = any(f.get_tensor(k).dtype == torch.float16 for k in f.keys())
        out = real(folder, config, split)
        return {**out, "top1": out["top1"] - 0.25} if halved else out
    return evaluate


def test_half_precision_weights_where_the_top1_does_not_move(zoo, tmp_path, monkeypatch):
    """``--half``: float16 weights, half the bytes, loading into float32 parameters equal to the run's rounded to
    float16, scoring the float32 weights' top-1 (the card says so); where float16 would move the top-1, the entry
    stays float32 and the log says why."""
    proj, _, _ = zoo
    run = proj / "runs/compare/tiny/teachers/inv"
    full = publish_run(run, "full", tmp_path / "models" / "zoo.yaml", figures={"params_m": 0.0})
    half = publish_run(run, "half", tmp_path / "models" / "zoo.yaml", figures={"params_m": 0.0}, half=True)
    assert (full.weights_dtype, half.weights_dtype) == ("float32", "float16") and half.top1 == full.top1
    assert half.file(WEIGHTS).size < 0.6 * full.file(WEIGHTS).size
    assert "stored in float16" in (tmp_path / "models" / "half" / "README.md").read_text()
    loaded = timm.create_model(f"local-dir:{tmp_path / 'models' / 'half'}", pretrained=True)
    ref = vitkd.models.create("rednet_digits", 10, {"kernel_size": 5}, str(run))
    for (k, a), b in zip(loaded.state_dict().items(), ref.state_dict().values()):
        assert a.dtype == b.dtype and torch.equal(a, b.half().to(b.dtype) if b.is_floating_point() else b), k
    import vitkd.zoo.evaluate as zoo_eval
    monkeypatch.setattr(zoo_eval, "evaluate_folder", _one_image_off_in_half(zoo_eval.evaluate_folder))
    said = []
    kept = publish_run(run, "kept", tmp_path / "models" / "zoo.yaml", figures={"params_m": 0.0}, half=True,
                       log=said.append)
    assert kept.weights_dtype == "float32" and kept.file(WEIGHTS).sha256 == full.file(WEIGHTS).sha256
    assert any("stored in float32" in m for m in said)


def test_halve_turns_a_published_entry_float16_only_where_its_top1_stays(zoo, tmp_path, monkeypatch):
    """``vitkd zoo halve``: a published float32 entry becomes float16 (card, hashes and sizes rewritten, the old
    folder gone) when its top-1 stays exactly the index's; where it would move, nothing changes; an entry whose
    float32 weights no longer score the index's figure is refused."""
    proj, _, _ = zoo
    run = proj / "runs/compare/tiny/teachers/inv"
    index = tmp_path / "models" / "zoo.yaml"
    full = publish_run(run, "full", index, figures={"params_m": 0.0})
    before = (tmp_path / "models" / "full" / WEIGHTS).read_bytes()
    import vitkd.zoo.evaluate as zoo_eval
    real = zoo_eval.evaluate_folder
    with monkeypatch.context() as m:
        m.setattr(zoo_eval, "evaluate_folder", _one_image_off_in_half(real))
        said = []
        kept = halve_entry("full", index, log=said.append)
        assert kept.weights_dtype == "float32" and any("left in float32" in s for s in said)
        assert (tmp_path / "models" / "full" / WEIGHTS).read_bytes() == before
    assert main(["zoo", "halve", "full", "--index", str(index)]) == 0
    e = load_index(str(index)).get("full")
    assert e.weights_dtype == "float16" and e.top1 == full.top1
    assert e.file(WEIGHTS).size < 0.6 * full.file(WEIGHTS).size
    for f in e.files:   # the index describes the files on disk
        assert sha256_file(tmp_path / "models" / "full" / f.name) == f.sha256, f.name
    assert "stored in float16" in (tmp_path / "models" / "full" / "README.md").read_text()
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["full", "zoo.yaml"]
    assert main(["zoo", "halve", "full", "--index", str(index)]) == 2   # float16 already: one line, exit 2
    publish_run(run, "moved", index, figures={"params_m": 0.0})
    with monkeypatch.context() as m:
        m.setattr(zoo_eval, "evaluate_folder", lambda f, c, s: {**real(f, c, s), "top1": 0.0})
        with pytest.raises(ZooError, match="moved: its float32 weights score"):
            halve_entry("moved", index)


def test_publish_suite_refuses_a_selection_over_the_size_limit(zoo, tmp_path):
    proj, _, _ = zoo
    with pytest.raises(ZooError, match="max-mb"):
        publish_suite(proj / "results/compare/tiny", tmp_path / "m" / "zoo.yaml", cache=proj / "runs/compare/tiny",
                      max_mb=1.0, log=lambda m: None)
    assert not (tmp_path / "m").exists()


def test_list_filters_json_and_readme_block(zoo, capsys, tmp_path):
    assert main(["zoo", "list", "--family", "logit", "--json"]) == 0
    import json
    assert [e["name"] for e in json.loads(capsys.readouterr().out)] == ["tiny-kd"]
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- zoo:start -->\nSTALE-BLOCK\n<!-- zoo:end -->\ntail\n")
    assert main(["zoo", "list", "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "STALE-BLOCK" not in text and text.count("\n| tiny-") == 3 and text.endswith("tail\n")


def test_a_config_names_a_zoo_teacher(zoo):
    from vitkd.engine.build import dry_build
    raw = {"model": VIT, "data": DATA, "train": TRAIN,
           "distill": {"teachers": {"t": {"zoo": "tiny-teacher-inv"}},
                       "terms": [{"type": "ce"}, {"type": "kd", "T": 4.0}]}}
    dry_build(parse_config(raw))   # downloads, verifies, loads through local-dir:
    assert (_cache("tiny-teacher-inv") / WEIGHTS).is_file()
    raw["distill"]["teachers"]["t"]["checkpoint"] = str(_cache("tiny-teacher-inv"))
    with pytest.raises(ConfigError, match=r"distill.teachers.t.zoo: give either zoo or"):
        dry_build(parse_config(raw))


# ---------------------------------------------------------------------- downloads
def test_good_download_verifies_and_then_reuses_the_cache(zoo):
    proj, state, _ = zoo
    entry, folder = model_folder("tiny-kd")
    for f in entry.files:
        assert (folder / f.name).read_bytes() == (proj / "models" / "tiny-kd" / f.name).read_bytes()
    assert not list(folder.glob(".*.part"))
    n = len(state.requests)
    model_folder("tiny-kd")   # cached files re-verified, nothing fetched
    assert len(state.requests) == n == len(entry.files)


def test_corrupted_file_refused_and_nothing_left(zoo, capsys):
    _, state, _ = zoo
    state.reset(**{WEIGHTS: "corrupt"})
    err = _one_line_exit_2(["zoo", "download", "tiny-no_kd"], capsys)
    assert "does not match the index" in err
    left = {p.name for p in _cache("tiny-no_kd").iterdir()}
    assert WEIGHTS not in left and not [n for n in left if n.endswith(".part")]


def test_a_refused_download_leaves_the_cache_as_it_was(zoo, capsys):
    """A file that does not match the index is refused, and the cache is left byte-identical: no lock file, no
    .part, no folder made for the download (a fresh cache stays absent). A download that succeeds leaves the
    entry's files alone, its lock gone too."""
    from test_bad_input import snapshot
    _, state, _ = zoo
    home = Path(os.environ["VITKD_HOME"])
    state.reset(**{"config.json": "corrupt"})   # the first file fetched
    assert "does not match the index" in _one_line_exit_2(["zoo", "download", "tiny-no_kd"], capsys)
    assert not home.exists()
    state.reset()
    entry, folder = model_folder("tiny-kd")
    assert _left_in(folder) == sorted(f.name for f in entry.files)
    before = snapshot(home)
    state.reset(**{"config.json": "corrupt"})
    assert "does not match the index" in _one_line_exit_2(["zoo", "download", "tiny-no_kd"], capsys)
    assert snapshot(home) == before
    assert not (_cache("tiny-no_kd")).exists()


def test_cut_connection_resumes_with_range_to_the_exact_bytes(zoo, monkeypatch):
    proj, state, _ = zoo
    state.reset(**{WEIGHTS: "cut_once"})
    monkeypatch.setenv("VITKD_ZOO_RETRIES", "0")
    with pytest.raises(ZooError, match="connection"):
        model_folder("tiny-no_kd")
    part = _cache("tiny-no_kd") / f".{WEIGHTS}.part"
    size = (proj / "models" / "tiny-no_kd" / WEIGHTS).stat().st_size
    assert part.stat().st_size == size // 2 and not (_cache("tiny-no_kd") / WEIGHTS).exists()
    model_folder("tiny-no_kd")   # the next download resumes where the cut left it
    assert (WEIGHTS, f"bytes={size // 2}-", 206) in state.requests
    assert (_cache("tiny-no_kd") / WEIGHTS).read_bytes() == (proj / "models" / "tiny-no_kd" / WEIGHTS).read_bytes()


def test_cut_connection_retried_within_one_download(zoo):
    proj, state, _ = zoo
    state.reset(**{WEIGHTS: "cut_once"})
    model_folder("tiny-no_kd")
    size = (proj / "models" / "tiny-no_kd" / WEIGHTS).stat().st_size
    assert [r for r in state.requests if r[0] == WEIGHTS] == [(WEIGHTS, None, 200),
                                                            (WEIGHTS, f"bytes={size // 2}-", 206)]


def test_server_without_range_support(zoo, monkeypatch):
    proj, state, _ = zoo
    state.reset(**{WEIGHTS: "cut_once"})
    monkeypatch.setenv("VITKD_ZOO_RETRIES", "0")
    with pytest.raises(ZooError):
        model_folder("tiny-no_kd")
    state.reset(**{WEIGHTS: "no_range"})
    model_folder("tiny-no_kd")
    size = (proj / "models" / "tiny-no_kd" / WEIGHTS).stat().st_size
    assert (WEIGHTS, f"bytes={size // 2}-", 200) in state.requests   # asked for a range, got the whole file
    assert (_cache("tiny-no_kd") / WEIGHTS).read_bytes() == (proj / "models" / "tiny-no_kd" / WEIGHTS).read_bytes()


def test_404_is_one_line_exit_2(zoo, capsys, tmp_path, monkeypatch):
    proj, _, url = zoo
    monkeypatch.setenv("VITKD_ZOO_URL", url + "nowhere/")
    assert "HTTP 404" in _one_line_exit_2(["zoo", "download", "tiny-kd"], capsys)


def test_unreachable_port_is_one_line_exit_2(zoo, capsys, monkeypatch):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()   # nothing listens there now
    monkeypatch.setenv("VITKD_ZOO_URL", f"http://127.0.0.1:{port}/")
    assert "Connection refused (after 3 tries)" in _one_line_exit_2(["zoo", "download", "tiny-kd"], capsys, notes=2)


def test_503_then_success_is_retried(zoo):
    _, state, _ = zoo
    state.reset(**{"config.json": "503_once"})
    model_folder("tiny-kd")
    assert [s for n, _, s in state.requests if n == "config.json"] == [503, 200]


def test_two_concurrent_downloads_leave_one_valid_file(zoo):
    proj, state, _ = zoo
    errors = []

    def go():
        try:
            model_folder("tiny-teacher-inv")
        except Exception as e:   # pragma: no cover - reported below
            errors.append(e)
    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert [n for n, _, _ in state.requests].count(WEIGHTS) == 1   # the second waited, then found it verified
    folder = _cache("tiny-teacher-inv")
    assert (folder / WEIGHTS).read_bytes() == (proj / "models" / "tiny-teacher-inv" / WEIGHTS).read_bytes()
    assert not list(folder.glob(".*.part")) and not (folder / ".lock").exists()


def test_tampered_cache_is_reverified_and_refused(zoo, capsys):
    proj, state, _ = zoo
    _, folder = model_folder("tiny-kd")
    w = folder / WEIGHTS
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(ZooError, match="fails verification"):   # offline use: refused, removed
        vitkd.zoo.model_folder("tiny-kd", download=False)
    assert not w.exists()
    w.write_bytes(bytes(data))
    vitkd.zoo.create_model("tiny-kd")   # the loader re-verifies: the tampered file is replaced, never loaded
    assert w.read_bytes() == (proj / "models" / "tiny-kd" / WEIGHTS).read_bytes()


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_pickle_refused_without_being_read(zoo, tmp_path, capsys):
    proj, state, url = zoo
    marker = tmp_path / "pwned"
    evil = pickle.dumps(_Evil(str(marker)))
    served = proj / "models" / "evil"
    served.mkdir(exist_ok=True)
    (served / "model.pth").write_bytes(evil)
    idx = load_index()
    e = idx.get("tiny-kd")
    raw = yaml.safe_load(Path(idx.path).read_text())
    bad = dict(raw["models"][2], name="evil", files=[{"name": "model.pth", "url": "evil/model.pth",
                                                      "sha256": sha256_file(served / "model.pth"),
                                                      "size": len(evil)}])
    manifest = tmp_path / "zoo.yaml"
    manifest.write_text(yaml.safe_dump({"models": [bad]}))
    err = _one_line_exit_2(["zoo", "download", "evil", "--manifest", str(manifest)], capsys)
    assert "pickle" in err and not marker.exists() and not state.requests
    # a pickle planted in a cache folder is removed before timm's local-dir loader could pick it
    _, folder = model_folder(e.name)
    (folder / "pytorch_model.bin").write_bytes(evil)
    model_folder(e.name, download=False)
    assert not (folder / "pytorch_model.bin").exists() and not marker.exists()


def test_names_with_traversal_and_bad_schemes_are_refused(zoo, capsys, tmp_path):
    _one_line_exit_2(["zoo", "download", "../etc"], capsys)
    _one_line_exit_2(["zoo", "info", "a/b"], capsys)
    raw = yaml.safe_load(Path(load_index().path).read_text())
    for change, what in [({"name": "../up"}, "invalid model name"),
                         ({"files": [dict(raw["models"][0]["files"][0], name="../x.json")]}, "invalid file name"),
                         ({"files": [dict(raw["models"][0]["files"][0], url="ftp://h/x")]}, "scheme 'ftp'")]:
        manifest = tmp_path / "zoo.yaml"
        manifest.write_text(yaml.safe_dump({"models": [dict(raw["models"][0], **change)]}))
        assert what in _one_line_exit_2(["zoo", "list", "--manifest", str(manifest)], capsys)


def test_an_index_without_a_base_is_one_line_exit_2(zoo, capsys, monkeypatch, tmp_path):
    from vitkd.zoo import index as index_mod
    shipped = tmp_path / "site" / "vitkd" / "zoo" / "zoo.yaml"   # as installed: the index without its weights
    shipped.parent.mkdir(parents=True)
    shipped.write_text(Path(load_index().path).read_text())
    monkeypatch.setattr(index_mod, "PACKAGED_INDEX", shipped)
    monkeypatch.delenv("VITKD_ZOO_MANIFEST")
    monkeypatch.delenv("VITKD_ZOO_URL")
    assert main(["zoo", "list"]) == 0
    capsys.readouterr()
    assert "VITKD_ZOO_URL" in _one_line_exit_2(["zoo", "download", "tiny-kd"], capsys)


def test_the_clone_default_base_is_the_index_folder(zoo, monkeypatch):
    proj, state, _ = zoo
    monkeypatch.delenv("VITKD_ZOO_URL")
    _, folder = model_folder("tiny-no_kd")   # file:// URLs into the index's own folder
    assert not state.requests and (folder / WEIGHTS).is_file()


def test_the_committed_zoo_stays_under_50_mb_and_its_files_are_what_the_index_says():
    index = load_index(str(ROOT / "models" / "zoo.yaml"))
    assert sum(e.total_size() for e in index.models) < 50e6
    on_disk = sum(p.stat().st_size for p in (ROOT / "models").rglob("*") if p.is_file() and p.name != "zoo.yaml")
    assert on_disk == sum(e.total_size() for e in index.models)   # no file left behind that the index omits


def test_readme_zoo_block_matches_the_committed_index(tmp_path):
    readme = tmp_path / "README.md"
    shutil.copy(ROOT / "README.md", readme)
    update_readme(readme, load_index(str(ROOT / "models" / "zoo.yaml")).models)
    assert readme.read_text() == (ROOT / "README.md").read_text()


def test_save_index_round_trips(tmp_path, zoo):
    idx = load_index()
    save_index(idx, tmp_path / "zoo.yaml")
    again = load_index(str(tmp_path / "zoo.yaml"))
    assert [e.to_dict() for e in again.models] == [e.to_dict() for e in idx.models]


def test_the_reproduce_config_retrains_the_same_bytes_with_its_zoo_teacher(zoo, tmp_path):
    """The shipped config names its teacher by zoo entry (downloaded over HTTP here); training it again gives
    weights with the published sha256."""
    proj, _, _ = zoo
    e = load_index().get("tiny-kd")
    assert e.reproduce == f"vitkd train models/tiny-kd/{e.config} --out runs/zoo/tiny-kd"
    _train(yaml.safe_load((proj / "models" / "tiny-kd" / e.config).read_text()), tmp_path / "again")
    shutil.copytree(proj / "models", tmp_path / "models")   # lineage must resolve in the index published into
    again = publish_run(tmp_path / "again", "tiny-kd", tmp_path / "models" / "zoo.yaml", figures={"params_m": 0.0})
    assert again.file(WEIGHTS).sha256 == e.file(WEIGHTS).sha256
    assert again.teachers == {"t": "tiny-teacher-inv"}   # lineage read from the config's zoo teacher


# ---------------------------------------------------------------------- hostile servers, indexes and caches (issue 26)
def _left_in(folder: Path):
    """What an entry's cache folder holds (nothing when the folder was never made or is gone again)."""
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def _listener():
    """A loopback TCP port that accepts nothing by itself: a connection to it shows up in accept()."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(4)
    s.setblocking(False)
    return s


def _connections(s: socket.socket) -> int:
    n = 0
    while True:
        try:
            s.accept()[0].close()
            n += 1
        except BlockingIOError:
            return n


@pytest.mark.parametrize("mode,hops", [("redirect", 1), ("redirect_twice", 2)])
def test_a_redirect_to_ftp_is_refused_at_every_hop_without_retries(zoo, capsys, mode, hops):
    _, state, _ = zoo
    ftp = _listener()
    try:
        state.reset(redirect_to=f"ftp://127.0.0.1:{ftp.getsockname()[1]}/model.safetensors", **{WEIGHTS: mode})
        err = _one_line_exit_2(["zoo", "download", "tiny-no_kd"], capsys)
        assert "scheme 'ftp' not allowed" in err and "redirected to ftp://" in err
        assert [r for r in state.requests if r[0] == WEIGHTS] == [(WEIGHTS, None, 302)] * hops   # one try
        assert _connections(ftp) == 0   # the ftp: URL was never opened
    finally:
        ftp.close()
    assert WEIGHTS not in _left_in(_cache("tiny-no_kd")) and not [n for n in _left_in(_cache("tiny-no_kd"))
                                                                   if n.endswith(".part")]


def test_a_server_dripping_bytes_meets_the_download_deadline(zoo, capsys, monkeypatch):
    _, state, _ = zoo
    state.reset(**{WEIGHTS: "drip"})
    monkeypatch.setenv("VITKD_ZOO_DEADLINE", "1.5")
    t0 = time.monotonic()
    err = _one_line_exit_2(["zoo", "download", "tiny-no_kd"], capsys)
    assert time.monotonic() - t0 < 15 and "download deadline of 1.5s" in err and "VITKD_ZOO_DEADLINE" in err
    assert 0 < state.sent < 10
    assert WEIGHTS not in _left_in(_cache("tiny-no_kd"))
    assert not [n for n in _left_in(_cache("tiny-no_kd")) if n.endswith(".part")]


def test_sizes_above_the_ceiling_are_refused_before_any_request(zoo, capsys, monkeypatch, tmp_path):
    proj, state, _ = zoo
    size = (proj / "models" / "tiny-no_kd" / WEIGHTS).stat().st_size
    monkeypatch.setenv("VITKD_ZOO_MAX_BYTES", str(size - 1))
    assert "download ceiling" in _one_line_exit_2(["zoo", "download", "tiny-no_kd"], capsys)
    monkeypatch.delenv("VITKD_ZOO_MAX_BYTES")
    raw = yaml.safe_load(Path(load_index().path).read_text())   # a hostile index: 8 TiB of weights
    entry = raw["models"][1]
    entry["files"] = [dict(f, size=8 << 40) if f["name"] == WEIGHTS else f for f in entry["files"]]
    manifest = tmp_path / "zoo.yaml"
    manifest.write_text(yaml.safe_dump({"models": [entry]}))
    err = _one_line_exit_2(["zoo", "download", entry["name"], "--manifest", str(manifest)], capsys)
    total = sum(f["size"] for f in entry["files"])
    assert f"entry {entry['name']}: {total} bytes exceed the download ceiling of {2 << 30} bytes" in err
    assert not state.requests and not _cache(entry["name"]).exists()


@pytest.mark.parametrize("mode,said", [("oversize", "sends more than"), ("oversize_declared", "announces")])
def test_a_server_sending_more_than_declared_is_cut_off(zoo, capsys, mode, said):
    proj, state, _ = zoo
    state.reset(**{WEIGHTS: mode})   # the file, then 256 MiB of zeros
    err = _one_line_exit_2(["zoo", "download", "tiny-no_kd"], capsys)
    assert said in err
    for _ in range(100):   # the server notices the hang-up on its next writes
        sent = state.sent
        time.sleep(0.05)
        if state.sent == sent:
            break
    assert state.sent < 64 << 20   # reading stopped: the 256 MiB were not taken
    assert [r for r in state.requests if r[0] == WEIGHTS] == [(WEIGHTS, None, 200)]
    assert WEIGHTS not in _left_in(_cache("tiny-no_kd"))
    assert not [n for n in _left_in(_cache("tiny-no_kd")) if n.endswith(".part")]


def test_a_full_disk_ends_the_download_in_one_line_and_removes_the_part(zoo, tmp_path):
    """The disk refuses the bytes half way through the weights. Simulated with a real kernel refusal: the download
    runs in a child process whose file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored) makes the write past it fail
    with EFBIG, the same OSError path as ENOSPC (no small filesystem can be mounted here)."""
    proj, state, _ = zoo
    files = {p.name: p.stat().st_size for p in (proj / "models" / "tiny-no_kd").iterdir()}
    limit = files[WEIGHTS] // 2
    assert all(n < limit for name, n in files.items() if name != WEIGHTS)   # the other files fit
    code = ("import resource, signal, sys\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
            "from vitkd.cli import main\n"
            "sys.exit(main(['zoo', 'download', 'tiny-no_kd']))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "cannot write" in lines[0] and "File too large" in lines[0] and f".{WEIGHTS}.part" in lines[0]
    assert [r for r in state.requests if r[0] == WEIGHTS] == [(WEIGHTS, None, 200)]   # not retried
    left = _left_in(_cache("tiny-no_kd"))
    assert WEIGHTS not in left and not [n for n in left if n.endswith(".part")]


def _as_root_without_dac_override():
    """Root passes mode bits through CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH. Dropped from the bounding set
    before exec, the child is root that a read-only folder really stops (EACCES), as any other user; no mount
    rights are needed, and nothing in vitkd is patched."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):   # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:   # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _read_only_child(args, env):
    pre = _as_root_without_dac_override if os.geteuid() == 0 else None
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=300,
                          preexec_fn=pre)


def _tree_mode(root: Path, folders: int, files: int):
    for p in [root, *root.rglob("*")]:
        p.chmod(folders if p.is_dir() else files)


def test_a_read_only_cache_holding_a_verified_download_is_used(zoo, tmp_path):
    from test_bad_input import snapshot
    proj, state, _ = zoo
    model_folder("tiny-kd")
    _, broken = model_folder("tiny-no_kd")
    (broken / "README.md").unlink()   # an incomplete download: refused below, since nothing can be fetched into it
    home = Path(os.environ["VITKD_HOME"])
    requests = len(state.requests)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    _tree_mode(home, 0o555, 0o444)
    try:
        try:
            probe = _read_only_child(["-c", f"open({str(home / 'probe')!r}, 'w')"], env).stderr
        except subprocess.SubprocessError as e:   # root without the right to drop its capabilities
            probe = str(e)
        if "PermissionError" not in probe:
            pytest.skip(f"no read-only folder can be made here ({probe.strip()[-200:] or 'writable'})")
        before = snapshot(home)
        out = []
        for args in (["-m", "vitkd", "zoo", "download", "tiny-kd"], ["-m", "vitkd", "zoo", "eval", "tiny-kd", "--json"],
                     ["-c", "import vitkd.zoo; print(type(vitkd.zoo.create_model('tiny-kd')).__name__)"]):
            proc = _read_only_child(args, env)
            assert proc.returncode == 0 and not proc.stderr.strip(), (args, proc.stderr)
            out.append(proc.stdout.strip().splitlines()[-1])
        assert json.loads(out[0])["folder"] == str(_cache("tiny-kd"))
        e = load_index().get("tiny-kd")
        assert json.loads(out[1])[f"{e.split}_top1"] == e.top1 and out[2] == "VisionTransformer"
        proc = _read_only_child(["-m", "vitkd", "zoo", "download", "tiny-no_kd"], env)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert "cannot be written" in lines[0] and "README.md" in lines[0] and "VITKD_HOME" in lines[0]
        assert len(state.requests) == requests and snapshot(home) == before
    finally:
        _tree_mode(home, 0o755, 0o644)


def _files(folder: Path):
    """Every file and folder under ``folder`` with its sha256 (None: ``folder`` is absent). An entry's lock file
    goes on release, with the folders made to hold it: a refused download leaves nothing."""
    from test_bad_input import snapshot
    return snapshot(folder)


def _refused(argv, capsys, *expect):
    """Exit 2, one line holding every piece of ``expect``, the cache home and the served zoo unchanged."""
    home, served = Path(os.environ["VITKD_HOME"]), Path(load_index().path).parent
    before = _files(home), _files(served)
    err = _one_line_exit_2(argv, capsys)
    for piece in expect:
        assert piece in err, (piece, err)
    assert (_files(home), _files(served)) == before
    return err


@pytest.mark.parametrize("url,said", [("http://[::1/", "Invalid IPv6 URL"), ("http://127.0.0.1:port/", "port"),
                                      ("http:///models/", "no host")])
def test_a_malformed_zoo_url_is_one_line(zoo, capsys, monkeypatch, url, said):
    _, state, _ = zoo
    monkeypatch.setenv("VITKD_ZOO_URL", url)
    _refused(["zoo", "download", "tiny-kd"], capsys, "VITKD_ZOO_URL", "malformed URL", said)
    assert not state.requests


def test_a_vitkd_home_that_is_a_file_is_one_line(zoo, capsys, monkeypatch, tmp_path):
    home = tmp_path / "home-file"
    home.write_text("not a folder\n")
    monkeypatch.setenv("VITKD_HOME", str(home))
    _refused(["zoo", "download", "tiny-kd"], capsys, str(home), "VITKD_HOME", "not a folder")
    assert home.read_text() == "not a folder\n"


def _manifest(tmp_path: Path, change) -> str:
    """The tiny index with ``change(raw)`` applied, written beside the served one (its relative URLs resolve
    against VITKD_ZOO_URL)."""
    raw = yaml.safe_load(Path(load_index().path).read_text())
    change(raw)
    path = tmp_path / "changed" / "zoo.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_an_entry_whose_config_names_another_architecture_is_refused(zoo, capsys, tmp_path):
    _, state, _ = zoo
    manifest = _manifest(tmp_path, lambda raw: raw["models"][2].update(architecture="resnet_digits_s"))
    err = _refused(["zoo", "download", "tiny-kd", "--manifest", manifest], capsys, "architecture 'resnet_digits_s'",
                   "'vit_tiny_patch16_224' in its config.json")
    assert err and {n for n, _, _ in state.requests} == {"config.json"}   # checked before the weights come
    assert _left_in(_cache("tiny-kd")) == []


@pytest.mark.parametrize("change,said", [
    (lambda raw: raw.update(version=2), "index version 2 is newer than this vitkd reads (1)"),
    (lambda raw: raw.update(version="one"), "version must be a positive integer"),
    (lambda raw: raw["models"][0]["files"].append(raw["models"][0]["files"][0]), "duplicate file 'config.json'"),
], ids=["version from the future", "version not a number", "a file listed twice"])
def test_bad_indexes_are_one_line(zoo, capsys, tmp_path, change, said):
    _, state, _ = zoo
    manifest = _manifest(tmp_path, change)
    for argv in (["zoo", "list"], ["zoo", "download", "tiny-teacher-inv"]):
        _refused([*argv, "--manifest", manifest], capsys, said)
    assert not state.requests
