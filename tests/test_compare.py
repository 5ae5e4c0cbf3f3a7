"""The comparison suite end to end on a tiny suite: cached teachers, tuning on val, rows x seeds,
table, plots; plus the teacher-assistant chain."""
import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml

from vitkd.cli import main
from vitkd.compare.suite import load_suite
from vitkd.compare.measure import mean_std

STUDENT = {
    "model": {"name": "vit_digits_tiny"},
    "data": {"name": "digits", "train_subset": 64, "batch_size": 32},
    "train": {"epochs": 1, "warmup_epochs": 0, "progress": False},
}
TEACHER = {
    "model": {"name": "resnet_digits_s"},
    "data": {"name": "digits", "train_subset": 64, "batch_size": 32},
    "train": {"epochs": 1, "warmup_epochs": 0, "progress": False},
}


@pytest.fixture()
def suite_file(tmp_path):
    (tmp_path / "student.yaml").write_text(yaml.safe_dump(STUDENT))
    (tmp_path / "teacher.yaml").write_text(yaml.safe_dump(TEACHER))
    suite = {
        "name": "tiny",
        "student": "student.yaml",
        "seeds": [0, 1],
        "set": {"data.train_subset": 64},
        "tune": {"knobs": {"train.lr": {"values": [0.001, 0.002, 0.004], "scale": "log"}},
                 "seeds": [0, 1], "epochs": [1, 2], "max_extend": 1},
        "quick": {"seeds": [0], "rows": ["kd"]},
        "teachers": {"cnn": {"config": "teacher.yaml", "label": "CNN-S"},
                     "cnn_tuned": {"config": "teacher.yaml", "tuned": True}},
        "rows": [
            {"name": "no_kd", "family": "none", "group": "baseline"},
            {"name": "kd", "family": "logit", "teachers": {"t": "cnn"},
             "set": {"distill.terms": [{"type": "ce", "weight": 0.5}, {"type": "kd", "weight": 0.5, "T": 4.0}]}},
        ],
        "jobs": 2,
    }
    p = tmp_path / "suite.yaml"
    p.write_text(yaml.safe_dump(suite, sort_keys=False))
    return p


@pytest.mark.slow
def test_suite_end_to_end_and_cache(tmp_path, suite_file, capsys):
    out, cache, tuning = tmp_path / "results", tmp_path / "cache", tmp_path / "tuning"
    # the suite reads its recipe from the tuning record: none yet -> one line, exit 2, nothing made
    assert main(["compare", str(suite_file), "--out", str(out), "--cache", str(cache), "--tuning", str(tuning)]) == 2
    assert "run `vitkd tune`" in capsys.readouterr().err and not cache.exists()
    assert main(["tune", str(suite_file), "--out", str(tuning), "--cache", str(cache)]) == 0
    record = json.loads((tuning / "tuning.json").read_text())
    knob = record["knobs"]["train.lr"]
    trows = list(csv.DictReader(open(tuning / "tuning.csv")))
    lr_rows = [r for r in trows if r["stage"] == "knob"]
    # chosen on mean val top-1 over the tuning seeds; the grid grows past an edge that wins
    chosen = [r for r in lr_rows if r["chosen"] == "True"]
    assert len(chosen) == 1 and float(chosen[0]["value"]) == knob["chosen"] == record["chosen"]["train.lr"]
    assert float(chosen[0]["val_top1_mean"]) == max(float(r["val_top1_mean"]) for r in lr_rows)
    assert len(knob["grid"]) in (3, 4) and (knob["interior"] or knob["extended"] == 1)
    assert all(len(r["val_top1_all"].split()) == 2 for r in lr_rows)
    assert [float(r["value"]) for r in trows if r["stage"] == "epochs"] == [1, 2]   # 1x and 2x the epochs
    assert "test" not in (tuning / "tuning.csv").read_text().splitlines()[0]   # nothing read on test
    assert main(["compare", str(suite_file), "--out", str(out), "--cache", str(cache), "--tuning", str(tuning)]) == 0
    for f in ("results.csv", "results.md", "teachers.csv", "pareto.png", "curves.png", "suite.yaml",
              "resolved_configs.yaml", "environment.json", "timing.json"):
        assert (out / f).is_file(), f
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["row"] for r in rows] == ["no_kd", "kd"]
    for r in rows:
        assert int(r["seeds"]) == 2
        tests = [float(x) for x in r["test_top1_all"].split()]
        m, sd = mean_std(tests)
        assert abs(float(r["test_top1_mean"]) - m) < 1e-3 and abs(float(r["test_top1_std"]) - sd) < 1e-3
        assert float(r["macs_m"]) > 0 and float(r["img_per_s"]) > 0
    kd = rows[1]
    assert kd["baseline"] == "no_kd" and kd["verdict"] in ("better", "worse", "n.s.")
    # the verdict rests on the paired t-test of the per-seed numbers (scipy's ttest_rel), Holm within "main"
    from scipy.stats import ttest_rel
    a = [float(x) for x in kd["test_top1_all"].split()]
    b = [float(x) for x in rows[0]["test_top1_all"].split()]
    if a != b and len({x - y for x, y in zip(a, b)}) > 1:
        assert abs(float(kd["p_raw"]) - ttest_rel(a, b).pvalue) < 1e-3
    assert kd["family_test"] == "main" and kd["test"] == "paired_t"
    # per-image views come from the runs' saved predictions on the test split
    assert 0 <= float(kd["fixed_share"]) <= 1 and 0 <= float(kd["broken_share"]) <= 1
    # the KD row pays for the teacher's forward
    assert float(kd["train_mmacs_per_image"]) > float(rows[0]["train_mmacs_per_image"])
    # each reported number is the run's own last-epoch test accuracy
    run = json.loads((cache / "rows" / "kd" / "s1" / "metrics.json").read_text())
    assert f"{run['final']['test_top1']:.2f}" in kd["test_top1_all"].split()
    md = (out / "results.md").read_text()
    assert "| baseline | no_kd |" in md and "CNN-S" in md and "vitkd tune" in md
    env = json.loads((out / "environment.json").read_text())
    assert env["tuned"]["train.lr"] == knob["chosen"] and "timm" in env["versions"]
    import torch
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()   # where its figures repeat
    from vitkd.compare.report import cpu_model
    assert env["cpu_model"] == cpu_model() and env["cpu_model"]   # two AVX512 CPUs can still differ in kernels
    # every row trains with the tuned value; no teacher reads it unless marked `tuned` (none here is read)
    resolved = yaml.safe_load((out / "resolved_configs.yaml").read_text())
    assert resolved["rows/kd/s0"]["train"]["lr"] == knob["chosen"]
    assert "lr" not in resolved["teachers/cnn"]["train"] and "teachers/cnn_tuned" not in resolved
    # quick mode: its rows at seed 0 are the full suite's own runs (reused, nothing trained)
    qout = tmp_path / "quick"
    assert main(["compare", str(suite_file), "--quick", "--out", str(qout), "--cache", str(cache),
                 "--tuning", str(tuning)]) == 0
    q = list(csv.DictReader(open(qout / "results.csv")))
    assert [r["row"] for r in q] == ["kd"] and q[0]["test_top1_all"] == kd["test_top1_all"].split()[0]
    assert json.loads((qout / "timing.json").read_text())["runs_trained_now"] == 0
    # without --out, quick mode (the demo) writes runs/quick/<suite>-quick, never the committed reference in
    # results/compare/<suite>-quick, and prints each row against that reference and its band
    proj = tmp_path / "proj"
    ref = proj / "results" / "compare" / "tiny-quick"
    shutil.copytree(qout, ref)
    (ref / "isa_spread.json").write_text(json.dumps({"quick": {"rows": {"kd": {"band": 0.5}}}}))
    before = {f.name: f.read_bytes() for f in ref.iterdir()}
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(proj)
        assert main(["compare", str(suite_file), "--quick", "--cache", str(cache), "--tuning", str(tuning)]) == 0
    printed = capsys.readouterr().out
    assert {f.name: f.read_bytes() for f in ref.iterdir()} == before
    demo = proj / "runs" / "quick" / "tiny-quick"
    assert (demo / "results.csv").is_file() and "wrote runs/quick/tiny-quick" in printed
    assert "all 1 rows within their bands" in printed
    check = json.loads((demo / "reference_check.json").read_text())
    assert [(r["row"], r["status"]) for r in check["rows"]] == [("kd", "OK")]
    # quick mode from an empty cache: the teacher published in a zoo (from this suite) is restored, not trained,
    # and the quick row is the full suite's seed-0 run to the last digit
    from vitkd.compare.publish import publish_suite
    zoo = tmp_path / "zoo" / "zoo.yaml"
    zoo.parent.mkdir()
    zoo.write_text("version: 1\nmodels: []\n")
    publish_suite(out, zoo, cache=str(cache), suite_file=str(suite_file), log=lambda m: None)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VITKD_ZOO_MANIFEST", str(zoo))
        mp.setenv("VITKD_HOME", str(tmp_path / "home"))
        fresh, qout2 = tmp_path / "fresh", tmp_path / "quick2"
        assert main(["compare", str(suite_file), "--quick", "--out", str(qout2), "--cache", str(fresh),
                     "--tuning", str(tuning)]) == 0
    stamp = json.loads((fresh / "teachers" / "cnn" / "stamp.json").read_text())
    assert stamp["restored_from_zoo"] == "tiny-teacher-cnn"
    from safetensors.torch import load_file
    restored, trained = (load_file(str(c / "teachers" / "cnn" / "model.safetensors")) for c in (fresh, cache))
    assert restored.keys() == trained.keys() and all(restored[k].equal(trained[k]) for k in trained)
    q2 = list(csv.DictReader(open(qout2 / "results.csv")))
    assert q2[0]["test_top1_all"] == kd["test_top1_all"].split()[0]
    # the logit-only row read its teacher from a store, written once per seed by a logits job (issue 15)
    assert set(resolved["rows/kd/s0"]["distill"]["teachers"]["t"]) == {"logits"}
    timing = json.loads((out / "timing.json").read_text())
    assert sum(k.startswith("logits/cnn/") for k in timing["per_run_s"]) == 2
    # --readme fills the marked block from results.md (a second invocation below rewrites it in place)
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- results:start -->\nold\n<!-- results:end -->\ntail\n")
    # a second invocation reuses every finished run (nothing retrained)
    stamp = (cache / "teachers" / "cnn" / "model.safetensors").stat().st_mtime_ns
    row_stamp = (cache / "rows" / "kd" / "s0" / "model.safetensors").stat().st_mtime_ns
    assert main(["compare", str(suite_file), "--out", str(out), "--cache", str(cache), "--readme", str(readme),
                 "--tuning", str(tuning)]) == 0
    assert (cache / "teachers" / "cnn" / "model.safetensors").stat().st_mtime_ns == stamp
    text = readme.read_text()
    assert "old" not in text and text.endswith("<!-- results:end -->\ntail\n")
    assert "| baseline | no_kd |" in text and "](results/pareto.png)" in text
    assert (cache / "rows" / "kd" / "s0" / "model.safetensors").stat().st_mtime_ns == row_stamp
    # --plan-seeds reports from the cache alone (nothing trained) and prints the plan
    capsys.readouterr()
    assert main(["compare", str(suite_file), "--out", str(out), "--cache", str(cache), "--plan-seeds",
                 "--tuning", str(tuning)]) == 0
    assert "family main" in capsys.readouterr().out or "How many seeds" not in (out / "results.md").read_text()
    assert (cache / "rows" / "kd" / "s0" / "model.safetensors").stat().st_mtime_ns == row_stamp
    # a run made under another behaviour version is not reused
    from vitkd.rundir import RunDir
    stamp_file = cache / "rows" / "kd" / "s0" / RunDir.STAMP
    st = json.loads(stamp_file.read_text())
    stamp_file.write_text(json.dumps({**st, "behaviour": st["behaviour"] - 1}))
    assert main(["compare", str(suite_file), "--out", str(out), "--cache", str(cache), "--plan-seeds",
                 "--tuning", str(tuning)]) == 2
    assert "not in the cache" in capsys.readouterr().err


def test_suite_errors(tmp_path, suite_file, capsys):
    raw = yaml.safe_load(suite_file.read_text())
    raw.pop("tune")   # a suite without a tune block reads no tuning record
    raw["rows"][1]["teachers"] = {"t": "nope"}
    suite_file.write_text(yaml.safe_dump(raw))
    assert main(["compare", str(suite_file), "--out", str(tmp_path / "o"), "--cache", str(tmp_path / "c")]) == 2
    assert "unknown suite teacher 'nope'" in capsys.readouterr().err
    raw["rows"][1]["teachers"] = {"t": "cnn"}
    raw["rows"][1]["set"]["train.lrr"] = 1
    suite_file.write_text(yaml.safe_dump(raw))
    assert main(["compare", str(suite_file), "--out", str(tmp_path / "o"), "--cache", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "rows/kd/s0" in err and "train.lrr" in err
    assert not (tmp_path / "c").exists() and not (tmp_path / "o").exists()


def test_default_suite_parses():
    suite, base = load_suite(Path(__file__).parents[1] / "configs" / "compare" / "digits.yaml")
    assert len(suite.seeds) >= 3
    fams = {r.family for r in suite.rows}
    assert {"none", "logit", "token", "patch", "feature", "minivit", "hetero"} <= fams


def test_teacher_assistant_chain(tmp_path, capsys):
    (tmp_path / "teacher.yaml").write_text(yaml.safe_dump(TEACHER))
    kd = dict(STUDENT)
    kd["distill"] = {"teachers": {"t": {"checkpoint": "@teacher"}},
                     "terms": [{"type": "ce", "weight": 0.5}, {"type": "kd", "weight": 0.5}]}
    (tmp_path / "kd.yaml").write_text(yaml.safe_dump(kd))
    chain = {"chain": [{"name": "teacher", "config": "teacher.yaml"},
                       {"name": "assistant", "config": "kd.yaml", "set": {"model.name": "vit_digits_small"}},
                       {"name": "student", "config": "kd.yaml", "set": {"distill.teachers.t.checkpoint": "@assistant"}}]}
    (tmp_path / "chain.yaml").write_text(yaml.safe_dump(chain, sort_keys=False))
    out = tmp_path / "run"
    assert main(["train", str(tmp_path / "chain.yaml"), "--out", str(out)]) == 0
    for s in ("teacher", "assistant", "student"):
        assert (out / s / "model.safetensors").is_file()
    cfg = yaml.safe_load((out / "student" / "config.yaml").read_text())
    assert cfg["distill"]["teachers"]["t"]["checkpoint"] == str(out / "assistant")
    stamp = (out / "assistant" / "model.safetensors").stat().st_mtime_ns
    assert main(["train", str(tmp_path / "chain.yaml"), "--out", str(out)]) == 0   # reuses finished stages
    assert (out / "assistant" / "model.safetensors").stat().st_mtime_ns == stamp
    bad = {"chain": [{"name": "student", "config": "kd.yaml",
                      "set": {"distill.teachers.t.checkpoint": "@teacher"}}]}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    assert main(["train", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "bad")]) == 2
    assert "refers to '@teacher'" in capsys.readouterr().err


def _tiny_ray_suite(tmp_path):
    (tmp_path / "student.yaml").write_text(yaml.safe_dump(STUDENT))
    (tmp_path / "teacher.yaml").write_text(yaml.safe_dump(TEACHER))
    suite = {
        "name": "tiny_ray", "student": "student.yaml", "seeds": [0], "set": {"data.train_subset": 64},
        "teachers": {"cnn": {"config": "teacher.yaml"}},
        "rows": [{"name": "no_kd", "family": "none", "group": "baseline"},
                 {"name": "kd", "family": "logit", "teachers": {"t": "cnn"},
                  "set": {"distill.terms": [{"type": "ce", "weight": 0.5}, {"type": "kd", "weight": 0.5, "T": 4.0}]}}],
        "jobs": 2,
    }
    p = tmp_path / "suite.yaml"
    p.write_text(yaml.safe_dump(suite, sort_keys=False))
    return p


RAY_DRIVER = """
import os, shutil, socket, subprocess, sys, tempfile, time
if {netns}:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
ray_tmp = tempfile.mkdtemp(prefix="vitkd-ray-")   # Ray's socket paths must stay under 108 characters
log = open({log!r}, "w")
head = subprocess.Popen([{ray!r}, "start", "--head", "--block", "--port={port}", "--node-ip-address=127.0.0.1",
                         "--num-cpus=1", "--num-gpus=0", "--include-dashboard=false",
                         "--object-store-memory=" + str(80 * 1024 ** 2), "--disable-usage-stats",
                         "--temp-dir=" + ray_tmp], stdout=log, stderr=subprocess.STDOUT)
code = 1
try:
    deadline = time.monotonic() + 90
    while True:   # the head is up when its port answers
        assert head.poll() is None, "the Ray head stopped"
        try:
            socket.create_connection(("127.0.0.1", {port}), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "the Ray head did not start"
            time.sleep(0.5)
    from vitkd.cli import main
    code = main(["compare", {suite!r}, "--executor", "ray", "--address", "127.0.0.1:{port}",
                 "--out", {out!r}, "--cache", {cache!r}])
    import ray
    if ray.is_initialized():
        ray.shutdown()
finally:
    head.terminate()   # --block: the head stops its own processes on SIGTERM
    try:
        head.wait(timeout=60)
    except subprocess.TimeoutExpired:
        head.kill()
        head.wait()
    log.close()
    shutil.rmtree(ray_tmp, ignore_errors=True)
sys.exit(code)
"""


def test_suite_on_a_local_ray_cluster_matches_the_local_pool(tmp_path, monkeypatch):
    """A Ray head started on loopback (``ray start --head --block``, one CPU, no dashboard, a small object
    store), in a network namespace that holds only loopback where the machine allows one;
    ``vitkd compare --executor ray --address 127.0.0.1:PORT`` runs every job (the teacher first, then the
    rows that read it) as a Ray task into the shared cache, and the report's accuracies equal the local
    pool's."""
    import os
    import shutil
    import socket
    import subprocess
    import sys
    pytest.importorskip("ray")
    root = Path(__file__).resolve().parents[1]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")   # a throwaway cluster on this machine: no token files
    suite_file = _tiny_ray_suite(tmp_path)
    local, remote = tmp_path / "local", tmp_path / "ray"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # the head's workers inherit PYTHONPATH, so they import this checkout's vitkd; its session files go to a
    # short folder of its own (Ray's socket paths must stay under 108 characters)
    # meanwhile the same suite on the local pool
    assert main(["compare", str(suite_file), "--out", str(local / "results"), "--cache", str(local / "cache"),
                 "--jobs", "1", "--cpus-per-job", "1"]) == 0
    # The Ray head and the driver run in a network namespace of their own that holds only loopback (where
    # this machine allows one: root, util-linux's unshare), so every Ray connection stays on 127.0.0.1;
    # elsewhere they run here, on the loopback head address.
    netns = ["unshare", "-n"] if shutil.which("unshare") and subprocess.run(
        ["unshare", "-n", "true"], capture_output=True).returncode == 0 else []
    script = RAY_DRIVER.format(ray=os.path.join(os.path.dirname(sys.executable), "ray"), port=port,
                               suite=str(suite_file), out=str(remote / "results"), cache=str(remote / "cache"),
                               log=str(tmp_path / "ray_head.log"), netns=bool(netns))
    done = subprocess.run(netns + [sys.executable, "-c", script], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:] + \
        (tmp_path / "ray_head.log").read_text()[-2000:]
    env = json.loads((remote / "results" / "environment.json").read_text())
    assert env["executor"] == "ray"
    # the teacher, its store for the kd row (a logits job, issue 15) and the two rows
    assert json.loads((remote / "results" / "timing.json").read_text())["runs_trained_now"] == 4
    # the teacher had finished (its stamp is written last) before a row that reads it started
    cache = remote / "cache"
    teacher_done = (cache / "teachers" / "cnn" / "stamp.json").stat().st_mtime
    assert all(teacher_done <= (cache / "rows" / r / "s0" / "config.yaml").stat().st_mtime for r in ("kd", "no_kd"))

    def accuracies(folder, name, keys):
        return [{k: r[k] for k in keys} for r in csv.DictReader(open(folder / "results" / name))]
    keys = ("row", "test_top1_mean", "val_top1_mean", "test_top1_all")
    assert accuracies(remote, "results.csv", keys) == accuracies(local, "results.csv", keys)
    assert accuracies(remote, "teachers.csv", ("teacher", "test_top1", "val_top1")) == \
        accuracies(local, "teachers.csv", ("teacher", "test_top1", "val_top1"))


def test_suite_teacher_from_the_zoo_and_a_family_knob_tuned(tmp_path, capsys):
    """A suite teacher declared ``{zoo: ENTRY}`` is restored (verified), never trained, in tuning and in the full
    suite; the tuning record picks the KD row's temperature on val at seed 0 (its default value's run is the
    row's own seed-0 run), and `vitkd compare` trains the row with the chosen value."""
    from vitkd.engine import train
    from vitkd.config import parse_config
    from vitkd.zoo.publish import publish_run
    teacher = tmp_path / "teacher_run"
    train(parse_config({**TEACHER, "seed": 0}), teacher, log=lambda m: None)
    zoo = tmp_path / "zoo" / "zoo.yaml"
    zoo.parent.mkdir()
    zoo.write_text("version: 1\nmodels: []\n")
    publish_run(teacher, "tiny-cnn-teacher", zoo, throughput=False)
    (tmp_path / "student.yaml").write_text(yaml.safe_dump(STUDENT))
    kd_terms = [{"type": "ce", "weight": 0.5}, {"type": "kd", "weight": 0.5, "T": 4.0}]
    suite = {"name": "tinyzoo", "student": "student.yaml", "seeds": [0, 1], "set": {"data.train_subset": 64},
             "tune": {"knobs": {"train.lr": {"values": [0.001, 0.002, 0.004], "scale": "log"}},
                      "seeds": [0, 1], "epochs": [1], "max_extend": 0,
                      "sizes": [32, 64], "size_seeds": [0, 1], "max_std": 100.0, "size_warmup": "steps",
                      "families": {"kd": {"term": "kd", "param": "T", "values": [2, 4, 8]}}},
             "teachers": {"cnn": {"zoo": "tiny-cnn-teacher", "label": "CNN-S"}},
             "rows": [{"name": "no_kd", "family": "none", "group": "baseline"},
                      {"name": "kd", "family": "logit", "teachers": {"t": "cnn"}, "set": {"distill.terms": kd_terms}}],
             "jobs": 2}
    suite_file = tmp_path / "suite.yaml"
    suite_file.write_text(yaml.safe_dump(suite, sort_keys=False))
    out, cache, tuning = tmp_path / "results", tmp_path / "cache", tmp_path / "tuning"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VITKD_ZOO_MANIFEST", str(zoo))
        mp.setenv("VITKD_HOME", str(tmp_path / "home"))
        assert main(["tune", str(suite_file), "--out", str(tuning), "--cache", str(cache)]) == 0
        record = json.loads((tuning / "tuning.json").read_text())
        # without a reference row, the size rule is the std alone; the best no-KD mean among the sizes that meet it
        size = record["size"]
        assert size["qualifies"] and size["no_kd_mean"] == max(v["no_kd_mean"] for v in size["table"])
        assert "best no-KD mean" in record["rule"]
        fam = record["families"]["kd"]
        assert fam["default"] == 4.0 and sorted(map(float, fam["val_top1"])) == [2.0, 4.0, 8.0]
        assert fam["val_top1"][f"{fam['chosen']:g}"] == max(fam["val_top1"].values())
        # the default value's run is the suite row's own seed-0 run (T 4 there); the teacher was restored
        row_cfg = yaml.safe_load((cache / "rows" / "kd" / "s0" / "config.yaml").read_text())
        assert [t.get("T") for t in row_cfg["distill"]["terms"] if t["type"] == "kd"] == [4.0]
        stamp = json.loads((cache / "teachers" / "cnn" / "stamp.json").read_text())
        assert stamp["restored_from_zoo"] == "tiny-cnn-teacher"
        trows = [r for r in csv.DictReader(open(tuning / "tuning.csv")) if r["stage"] == "family"]
        assert len(trows) == 3 and sum(r["chosen"] == "True" for r in trows) == 1
        assert main(["compare", str(suite_file), "--out", str(out), "--cache", str(cache), "--tuning", str(tuning)]) == 0
    resolved = yaml.safe_load((out / "resolved_configs.yaml").read_text())
    for s in (0, 1):
        assert [t["T"] for t in resolved[f"rows/kd/s{s}"]["distill"]["terms"] if t["type"] == "kd"] == [fam["chosen"]]
    timing = json.loads((out / "timing.json").read_text())
    assert timing["per_run_s"].get("teachers/cnn", 0) == 0   # restored by the tuning, reused here
    teachers = list(csv.DictReader(open(out / "teachers.csv")))
    assert [t["teacher"] for t in teachers] == ["cnn"]
    # a teacher given both ways is refused in one line
    suite["teachers"]["cnn"]["config"] = "student.yaml"
    suite_file.write_text(yaml.safe_dump(suite, sort_keys=False))
    capsys.readouterr()
    assert main(["compare", str(suite_file), "--out", str(out), "--cache", str(cache), "--tuning", str(tuning)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "either config" in err[0]


def test_a_sharing_suite_keeps_its_wall_time_after_the_suite_it_shares(tmp_path):
    from vitkd.compare.report import write_timing
    main, methods = tmp_path / "main", tmp_path / "methods"
    main.mkdir(), methods.mkdir()
    write_timing(main / "timing.json", {"teachers/t": 3.0, "rows/a/s0": 10.0}, 13.0)
    assert json.loads((main / "timing.json").read_text())["empty_cache_wall_s"] == 13.0
    # the extension reuses only the main suite's runs: its wall time is the one "right after" the main suite
    write_timing(methods / "timing.json", {"teachers/t": 0, "rows/a/s0": 0, "rows/b/s0": 7.0}, 7.5,
                 shared=main / "timing.json")
    t = json.loads((methods / "timing.json").read_text())
    assert t["empty_cache_wall_s"] is None and t["shared_cache_wall_s"] == 7.5 and t["shared_runs_reused"] == 2
    # a later invocation that also reused one of its own runs keeps that figure, not its own wall time
    write_timing(methods / "timing.json", {"teachers/t": 0, "rows/a/s0": 0, "rows/b/s0": 0}, 0.4,
                 shared=main / "timing.json")
    t = json.loads((methods / "timing.json").read_text())
    assert t["shared_cache_wall_s"] == 7.5 and t["per_run_s"] == {"rows/b/s0": 7.0}
    # a run the suite no longer plans leaves the record; the next scheduling reads both suites' seconds
    write_timing(methods / "timing.json", {"teachers/t": 0, "rows/c/s0": 2.0}, 2.1, shared=main / "timing.json")
    assert json.loads((methods / "timing.json").read_text())["per_run_s"] == {"rows/c/s0": 2.0}
    from vitkd.compare.report import recorded_walls
    assert recorded_walls(methods, "main") == {"teachers/t": 3.0, "rows/a/s0": 10.0, "rows/c/s0": 2.0}
    assert recorded_walls(tmp_path / "nowhere") == {}


def test_an_invocation_stopped_by_a_failed_run_keeps_its_seconds(tmp_path, capsys):
    """A run that fails in its worker (here: a row whose data folder holds no Fashion-MNIST) stops the suite with
    one line naming it, exit 1; ``timing.json`` still records the runs that finished and the invocation's wall under
    ``failed_invocations``; the next invocation (row fixed) keeps that record, as it reused those runs."""
    (tmp_path / "student.yaml").write_text(yaml.safe_dump(STUDENT))
    suite = {"name": "tiny", "student": "student.yaml", "seeds": [0], "jobs": 1,
             "rows": [{"name": "no_kd", "family": "none"},
                      {"name": "broken", "family": "none", "baseline": "no_kd",
                       "set": {"data.name": "fashion_mnist", "data.root": str(tmp_path / "nothing")}}]}
    (tmp_path / "nothing").mkdir()
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    out, cache = tmp_path / "results", tmp_path / "cache"
    argv = ["compare", str(path), "--out", str(out), "--cache", str(cache)]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "rows/broken/s0" in err[0] and "stay in the cache" in err[0], err
    t = json.loads((out / "timing.json").read_text())
    assert list(t["per_run_s"]) == ["rows/no_kd/s0"] and t["per_run_s"]["rows/no_kd/s0"] > 0
    [failed] = t["failed_invocations"]
    assert failed["runs_trained"] == 1 and failed["wall_s"] >= t["per_run_s"]["rows/no_kd/s0"]
    assert "rows/broken/s0" in failed["error"]
    suite["rows"] = suite["rows"][:1]
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    assert main(argv) == 0
    t = json.loads((out / "timing.json").read_text())
    assert t["runs_reused"] == 1 and t["failed_invocations"] == [failed] and t["empty_cache_wall_s"] is None


def test_a_cache_named_two_ways_is_one_cache(tmp_path, monkeypatch, capsys):
    """Run configs record the cache's path (a teacher's run folder, a store), so its spelling once decided which
    runs were reused: ``--cache cache`` then ``--cache $PWD/cache`` (and ``./cache/``) now reuse every run."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "student.yaml").write_text(yaml.safe_dump(STUDENT))
    (tmp_path / "teacher.yaml").write_text(yaml.safe_dump(TEACHER))
    suite = {"name": "tiny", "student": "student.yaml", "seeds": [0], "jobs": 1,
             "teachers": {"cnn": {"config": "teacher.yaml"}},
             "rows": [{"name": "no_kd", "family": "none"},
                      {"name": "kd", "family": "logit", "teachers": {"t": "cnn"},
                       "set": {"distill.terms": [{"type": "ce", "weight": 0.5}, {"type": "kd", "weight": 0.5}]}}]}
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite, sort_keys=False))
    for cache in ("cache", str(tmp_path / "cache"), "./cache/"):
        assert main(["compare", "suite.yaml", "--out", "results", "--cache", cache]) == 0, capsys.readouterr().err
        timing = json.loads((tmp_path / "results" / "timing.json").read_text())
        if cache != "cache":
            assert timing["runs_trained_now"] == 0 and timing["runs_reused"] >= 4, (cache, timing)
