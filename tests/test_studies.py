"""The studies' machinery: a suite sweep (data size), per-row stored-logit options (live, K), pipeline rows'
costs, the sweep and teacher-size plots, and the README's evidence block with its claim verdicts."""
import copy
import csv
import json
from pathlib import Path

import pytest
import yaml

from vitkd.cli import main
from vitkd.compare.suite import load_suite
from vitkd.compare.sweep import expand_sweep, held_settings
from vitkd.config import ConfigError

COMMON = {"data": {"name": "digits", "train_subset": 100, "batch_size": 32},
          "train": {"epochs": 300, "warmup_epochs": 10, "progress": False}}
KD = [{"type": "ce", "weight": 0.5}, {"type": "kd", "weight": 0.5}]


def _suite(tmp_path, **extra):
    (tmp_path / "student.yaml").write_text(yaml.safe_dump({"model": {"name": "vit_digits_tiny"}, **COMMON}))
    (tmp_path / "teacher.yaml").write_text(yaml.safe_dump({"model": {"name": "resnet_digits_s"}, **COMMON}))
    suite = {"name": "tiny", "student": "student.yaml", "seeds": [0, 1],
             "teachers": {"cnn": {"config": "teacher.yaml", "label": "CNN"}},
             "rows": [{"name": "no_kd", "family": "none", "size": "S"},
                      {"name": "kd", "family": "logit", "size": "S", "teachers": {"t": "cnn"},
                       "set": {"distill.terms": KD}},
                      {"name": "kd2", "family": "logit", "size": "S", "baseline": "kd", "teachers": {"t": "cnn"},
                       "set": {"distill.terms": KD}}],
             "test_families": {"study": ["kd", "kd2"]}, **extra}
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite, sort_keys=False))
    return load_suite(tmp_path / "suite.yaml")


def _plan(suite, base, cache, **options):
    """Every job kind's plan of ``suite`` (what ``vitkd compare`` plans before it runs anything)."""
    from vitkd.compare.jobs import SuitePlan
    from vitkd.compare.plan import plan_suite
    plan = SuitePlan(suite, base, cache, options=options)
    plan_suite(plan)
    return plan


def _rows_and_stores(suite, base, cache, **options):
    plan = _plan(suite, base, cache, **options)
    return plan.with_role("row"), [j for j in plan.jobs if j.kind == "logits"]


def test_held_steps_rescale_epochs_and_warmup_by_batches_per_epoch():
    raw = {"data": {"train_subset": 100, "batch_size": 32}, "train": {"epochs": 300, "warmup_epochs": 10}}
    # 100 images = 4 batches of 32: 1,200 steps; 200 = 7 batches -> 171 epochs (1,197 steps); 1,197 = 38 -> 32
    assert held_settings(raw, "data.train_subset", 200, "steps") == \
        {"data.train_subset": 200, "train.epochs": 171, "train.warmup_epochs": 5.7}
    assert held_settings(raw, "data.train_subset", 1197, "steps")["train.epochs"] == 32
    assert held_settings(raw, "data.train_subset", 100, "steps")["train.epochs"] == 300
    # under mixup the loader drops the last partial batch: 100 // 32 = 3 batches, 400 // 32 = 12
    mixed = {"data": {**raw["data"], "mixup": 0.8}, "train": raw["train"]}
    assert held_settings(mixed, "data.train_subset", 400, "steps")["train.epochs"] == 75
    assert held_settings(raw, "data.train_subset", 400, "epochs") == {"data.train_subset": 400}
    with pytest.raises(ConfigError, match="train_subset"):
        held_settings({"data": {"batch_size": 32}, "train": {"epochs": 3}}, "data.train_subset", 400, "steps")


def test_a_sweep_repeats_rows_and_teachers_per_value_and_pairs_within_a_value(tmp_path):
    suite, base = _suite(tmp_path, sweep={"key": "data.train_subset", "values": [100, 400], "label": "images"})
    out = expand_sweep(suite, base, False, {}, {})
    assert [r.name for r in out.rows] == ["no_kd_100", "kd_100", "kd2_100", "no_kd_400", "kd_400", "kd2_400"]
    assert set(out.teachers) == {"cnn_100", "cnn_400"}
    kd400 = next(r for r in out.rows if r.name == "kd_400")
    assert kd400.teachers == {"t": "cnn_400"} and kd400.size == "S@400" and kd400.sweep_of == "kd"
    assert kd400.set["data.train_subset"] == 400 and kd400.set["train.epochs"] == 92
    assert out.teachers["cnn_400"].set["train.epochs"] == 92 and out.teachers["cnn_400"].sweep_value == 400
    assert next(r for r in out.rows if r.name == "kd2_400").baseline == "kd_400"
    assert out.test_families == {"study": ["kd_100", "kd2_100", "kd_400", "kd2_400"]}
    assert expand_sweep(out, base, False, {}, {}) is out   # expanded once
    # the rows of one value read that value's teacher, and their configs carry the value
    plan = _plan(out, base, tmp_path / "cache", live_teachers=True)   # rows read their teachers themselves
    teachers, rows = plan.with_role("teacher"), plan.with_role("row")
    j = next(r for r in rows if r.key == "rows/kd_400/s1")
    assert j.raw["data"]["train_subset"] == 400 and j.deps == ["teachers/cnn_400"]
    assert next(t for t in teachers if t.row == "cnn_400").raw["data"]["train_subset"] == 400


def test_sweep_errors(tmp_path):
    with pytest.raises(ConfigError, match="suite.sweep.values"):
        _suite(tmp_path, sweep={"key": "data.train_subset", "values": [100]})
    with pytest.raises(ConfigError, match="suite.sweep.hold"):
        _suite(tmp_path, sweep={"key": "train.lr", "values": [1, 2]})
    suite, base = _suite(tmp_path, sweep={"key": "data.train_subset", "values": [100, 200]})
    suite.rows[1].sections["pipeline"] = "m2m.yaml"
    with pytest.raises(ConfigError, match="suite.rows.kd: a swept suite cannot hold rows of job kind 'pipeline'"):
        expand_sweep(suite, base, False, {}, {})


def test_rows_choose_live_or_stored_teachers_and_the_stores_k(tmp_path):
    from vitkd.config import section
    suite, base = _suite(tmp_path)
    section(suite.rows[1], "logits").stored = False     # kd: live
    section(suite.rows[2], "logits").topk = 2           # kd2: stores of the top 2
    cache = tmp_path / "cache"
    rows, stores = _rows_and_stores(suite, base, cache)
    by = {j.key: j for j in rows}
    assert "checkpoint" in by["rows/kd/s0"].raw["distill"]["teachers"]["t"]
    assert "logits" in by["rows/kd2/s0"].raw["distill"]["teachers"]["t"]
    assert sorted(j.args["topk"] for j in stores) == [2, 2]
    # without a K the store keeps the tag it had before K was an option (committed caches stay valid)
    section(suite.rows[2], "logits").topk = None
    _, plain = _rows_and_stores(suite, base, cache)
    assert {j.out.name for j in plain}.isdisjoint({j.out.name for j in stores})
    suite.sections["stored_logits"], section(suite.rows[2], "logits").stored = False, None
    assert _rows_and_stores(suite, base, cache)[1] == []
    # vitkd compare --live-teachers: no row reads a store, whatever the suite and the rows say
    suite.sections["stored_logits"], section(suite.rows[2], "logits").stored = True, True
    assert _rows_and_stores(suite, base, cache, live_teachers=True)[1] == []
    with pytest.raises(ConfigError, match="topk"):
        _suite(tmp_path, rows=[{"name": "a", "family": "none", "logits": {"topk": 0}}])


def test_a_pipeline_row_is_charged_for_all_its_stages():
    from vitkd.methods.m2m.suite import pipeline_overrides
    from vitkd.compare.plan import Job
    stage = {"macs_per_image": 1e6, "train_images": 100}
    costs = {"m2m": {"total_macs": 3e12, "stages": {
        "teachers/meta": {**stage, "epochs": 300, "phase": None},
        "pipelines/m2m/incubate0": {**stage, "epochs": 50, "phase": "incubation"},
        "pipelines/m2m/s0/module0": {**stage, "epochs": 200, "phase": "module"},
        "pipelines/m2m/s0/module1": {**stage, "epochs": 200, "phase": "module"},
        "rows/m2m/s0": {**stage, "epochs": 100, "phase": "finetune"}}}}
    jobs = [Job(k, {}, Path(k), row="m2m", seed=s, stage=st, phase=ph) for k, s, st, ph in [
        ("pipelines/m2m/s0/module0", 0, "module0", "module"), ("pipelines/m2m/s0/module1", 0, "module1", "module"),
        ("pipelines/m2m/s1/module0", 1, "module0", "module"), ("pipelines/m2m/s1/module1", 1, "module1", "module"),
        ("rows/m2m/s0", 0, "student", "finetune"), ("rows/m2m/s1", 1, "student", "finetune")]]
    walls = {"teachers/meta": 40.0, "pipelines/m2m/incubate0": 20.0, "pipelines/m2m/s0/module0": 10.0,
             "pipelines/m2m/s0/module1": 10.0, "pipelines/m2m/s1/module0": 12.0, "pipelines/m2m/s1/module1": 12.0,
             "rows/m2m/s0": 5.0, "rows/m2m/s1": 7.0}
    out = pipeline_overrides(costs, jobs, walls, [0, 1])["m2m"]
    assert out["train_mmacs_per_image"] == pytest.approx(3e12 / (100 * 300) / 1e6)   # module epochs + fine-tuning
    assert out["wall_s_per_run"] == pytest.approx((25 + 31) / 2 + 60 / 2)


# ------------------------------------------------------------------------------------------------ evidence
ROW_KEYS = ["row", "group", "family", "teachers", "seeds", "test_top1_mean", "test_top1_std", "test_top1_all", "baseline", "delta",
            "ci_low", "ci_high", "p_raw", "p_holm", "verdict", "paired_seeds", "train_mmacs_per_image",
            "wall_s_per_run", "sweep_of", "sweep_value", "size", "student", "macs_m", "curve"]


def _results(folder: Path, rows, teachers=(), wall=600.0):
    folder.mkdir(parents=True)
    with open(folder / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=ROW_KEYS)
        w.writeheader()
        for r in rows:
            w.writerow({"group": "g", "family": "logit", "teachers": "CNN", "seeds": 3, "test_top1_std": 1.0,
                        "train_mmacs_per_image": 20.0, "wall_s_per_run": 40.0, "paired_seeds": 3, **r})
    if teachers:
        with open(folder / "teachers.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["teacher", "label", "test_top1", "sweep_of", "sweep_value",
                                              "macs_m", "distilled_from"])
            w.writeheader()
            for t in teachers:
                w.writerow(t)
    (folder / "timing.json").write_text(json.dumps({"empty_cache_wall_s": wall}))


def _cmp(row, delta, verdict, base="no_kd", p=0.01, **kw):
    return {"row": row, "baseline": base, "delta": delta, "ci_low": delta - 2, "ci_high": delta + 2, "p_raw": p,
            "p_holm": p * 2, "verdict": verdict, "test_top1_mean": 80 + delta, **kw}


def test_claim_verdicts_follow_the_paired_tests(tmp_path):
    from vitkd.compare.evidence import ClaimSpec, Evidence, Suite, judge
    _results(tmp_path / "a", [{"row": "no_kd", "baseline": "", "test_top1_mean": 80},
                              _cmp("up", 5.0, "better"), _cmp("down", -4.0, "worse"), _cmp("flat", 0.5, "n.s.")])
    suites = {str(tmp_path / "a"): Suite(tmp_path / "a")}

    def verdict(expect, *rows):
        return judge(ClaimSpec("c", "direction", expect, [Evidence(str(tmp_path / "a"), list(rows))]), suites)[0]
    assert verdict("better", "up", "flat") == "supported"
    assert verdict("worse", "up") == "contradicted"
    assert verdict("better", "flat").startswith("silent")
    assert verdict("same", "flat").startswith("supported")     # n.s., interval [-1.5, +2.5] within ±5
    assert verdict("same", "flat", "down").startswith("contradicted")
    wide = judge(ClaimSpec("c", "direction", "same", [Evidence(str(tmp_path / "a"), ["flat"])], margin=2.0), suites)
    assert wide[0].startswith("silent") and "flat" in wide[0]
    lines = judge(ClaimSpec("c", "direction", "better", [Evidence(str(tmp_path / "a"), ["up"])]), suites)[1]
    assert lines == ["`up` vs `no_kd` (a, 3 seeds): Δ +5.00 [+3.0, +7.0], p 0.01 / 0.02 (better)"]
    with pytest.raises(ConfigError, match="no row 'nope'"):
        verdict("better", "nope")
    # against another row than its baseline: a paired t over the per-seed values, Holm over the claim's such tests
    _results(tmp_path / "b", [{"row": "real", "baseline": "", "test_top1_all": "80.00 82.00 84.00"},
                              {"row": "fake", "baseline": "", "test_top1_all": "50.00 51.00 53.00"}])
    suites[str(tmp_path / "b")] = Suite(tmp_path / "b")
    v, lines = judge(ClaimSpec("c", "direction", "same", [Evidence(str(tmp_path / "b"), ["fake"], against="real")]),
                     suites)
    assert v.startswith("contradicted") and lines[0].startswith("`fake` vs `real` (b, 3 seeds): Δ -30.67")


def test_sweep_claims_ask_where_a_gain_stops_being_significant(tmp_path):
    from vitkd.compare.evidence import ClaimSpec, Evidence, Suite, judge
    fades = [_cmp(f"kd_{n}", d, v, base=f"no_kd_{n}", sweep_of="kd", sweep_value=n)
             for n, d, v in [(100, 8.0, "better"), (400, 3.0, "n.s."), (1197, 0.5, "n.s.")]]
    flat = [_cmp(f"fit_{n}", 1.0, "n.s.", base=f"no_kd_{n}", sweep_of="fit", sweep_value=n) for n in (100, 400, 1197)]
    _results(tmp_path / "s", fades + flat)
    suites = {str(tmp_path / "s"): Suite(tmp_path / "s")}
    verdict, lines = judge(ClaimSpec("c", "sweep", evidence=[Evidence(str(tmp_path / "s"), ["kd", "fit"])]), suites)
    assert verdict.startswith("supported by kd")
    assert lines[0].startswith("`kd` (significant at 100 images)") and "significant at no size" in lines[1]
    verdict, _ = judge(ClaimSpec("c", "sweep", evidence=[Evidence(str(tmp_path / "s"), ["fit"])]), suites)
    assert verdict.startswith("silent")


def test_grows_claims_test_the_gain_at_the_last_step_against_the_first_paired_by_seed(tmp_path):
    """``grows``: per seed, (last row - its baseline) - (first row - its baseline), a paired t-test: written out
    here with scipy on the same numbers."""
    from scipy import stats as sps
    from vitkd.compare.evidence import ClaimSpec, Evidence, Suite, judge
    base1, kd1 = [80.0, 81.0, 82.0], [80.5, 81.2, 82.6]            # gains +0.5 +0.2 +0.6
    base4, kd4 = [84.0, 84.5, 85.0], [86.1, 86.4, 87.3]            # gains +2.1 +1.9 +2.3
    fmt = lambda v: " ".join(f"{x:.2f}" for x in v)   # noqa: E731
    _results(tmp_path / "s", [{"row": "no_kd", "baseline": "", "test_top1_all": fmt(base1)},
                              {"row": "no_kd_4x", "baseline": "no_kd", "test_top1_all": fmt(base4)},
                              _cmp("kd", 0.43, "n.s.", test_top1_all=fmt(kd1)),
                              _cmp("kd_4x", 2.1, "better", base="no_kd_4x", test_top1_all=fmt(kd4))])
    suites = {str(tmp_path / "s"): Suite(tmp_path / "s")}
    verdict, lines = judge(ClaimSpec("c", "grows", evidence=[Evidence(str(tmp_path / "s"), ["kd", "kd_4x"])]), suites)
    diff = [(b - a) - (d - c) for a, b, c, d in zip(base4, kd4, base1, kd1)]
    want = sps.ttest_1samp(diff, 0.0).pvalue
    assert verdict.startswith("supported")
    assert lines[-1].startswith(f"gain of `kd_4x` minus gain of `kd` (s, 3 seeds): {sum(diff) / 3:+.2f}")
    assert f"p {want:.3g} (grows)" in lines[-1]
    # the other way round: it shrinks; one row alone is refused
    verdict, _ = judge(ClaimSpec("c", "grows", evidence=[Evidence(str(tmp_path / "s"), ["kd_4x", "kd"])]), suites)
    assert verdict.startswith("contradicted")
    with pytest.raises(ConfigError, match="2\\+ rows"):
        judge(ClaimSpec("c", "grows", evidence=[Evidence(str(tmp_path / "s"), ["kd"])]), suites)


def test_the_cost_picture_charges_each_row_its_images_seen_and_its_teachers_training(tmp_path, monkeypatch):
    """Training MACs = the row's MACs per image seen x (train subset, else the split) x epochs; the second figure
    adds each teacher's own run (its suite's row of the same architecture); anchors count 3x forward per image."""
    from vitkd.compare.landscape import Anchor, PictureSpec, points, table, draw
    monkeypatch.chdir(tmp_path)
    _results(tmp_path / "t", [{"row": "big", "baseline": "", "family": "cnn", "student": "resnet_x", "size": "L",
                               "test_top1_mean": 90, "macs_m": 50.0, "train_mmacs_per_image": 150.0}])
    (tmp_path / "t" / "resolved_configs.yaml").write_text(yaml.safe_dump(
        {"rows/big/s0": {"data": {}, "train": {"epochs": 4}}}))
    _results(tmp_path / "s", [{"row": "no_kd", "baseline": "", "family": "none", "teachers": "", "size": "S",
                               "test_top1_mean": 80, "macs_m": 5.0, "train_mmacs_per_image": 15.0},
                              _cmp("kd", 2.0, "better", size="S", macs_m=5.0, train_mmacs_per_image=65.0,
                                   teachers="Big")])
    with open(tmp_path / "s" / "teachers.csv", "w") as f:
        f.write("teacher,label,model\nbig,Big,resnet_x\n")
    (tmp_path / "s" / "resolved_configs.yaml").write_text(yaml.safe_dump(
        {"rows/no_kd/s0": {"data": {"train_subset": 1000}, "train": {"epochs": 2}},
         "rows/kd/s0": {"data": {"train_subset": 1000}, "train": {"epochs": 2}}}))
    spec = PictureSpec(file="pic.png", suites=["s"], teachers="t", train_images=500,
                       anchors=[Anchor("paper", 91.0, macs_m=10.0, epochs=100, images=60000), Anchor("level", 95.0)])
    pts = {p.row: p for p in points(spec)}
    assert pts["no_kd"].train_tmacs == pytest.approx(15e6 * 1000 * 2 / 1e12) and pts["no_kd"].teacher_tmacs == 0
    assert pts["kd"].train_tmacs == pytest.approx(65e6 * 2000 / 1e12)
    assert pts["kd"].teacher_tmacs == pytest.approx(150e6 * 500 * 4 / 1e12)   # the split's 500 images x 4 epochs
    assert spec.anchors[0].train_tmacs() == pytest.approx(3 * 10e6 * 60000 * 100 / 1e12)
    lines = table(spec, list(pts.values()))
    assert any(line.startswith("| s | kd | S | logit | Big | 82.00 ± 1.00 | 5.00 | 0.13 | 0.43 |") for line in lines)
    assert any("| published | level |" in line for line in lines)
    draw(spec, list(pts.values()), {"none": "k", "logit": "b"}, tmp_path / "pic.png")
    assert (tmp_path / "pic.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ConfigError, match="train_images"):
        PictureSpec(file="x.png")


def test_vitkd_report_fills_the_readme_block_and_refuses_bad_input(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _results(tmp_path / "results" / "main", [{"row": "no_kd", "baseline": "", "test_top1_mean": 80},
                                             _cmp("kd", 5.0, "better")], wall=1452.0)
    _results(tmp_path / "results" / "more", [{"row": "no_kd", "baseline": "", "test_top1_mean": 80},
                                             _cmp("two_stage", -1.0, "n.s.", base="kd")], wall=0)
    _results(tmp_path / "results" / "cap", [_cmp("big", -3.0, "worse", base="kd", teachers="Big")],
             teachers=[{"teacher": "big", "label": "Big", "test_top1": 97.5}])
    spec = {"main": "results/main", "more": ["results/more"],
            "studies": [{"results": "results/cap", "title": "Capacity", "plot": "teachers.png"}],
            "claims": [{"title": "A big teacher distils worse", "kind": "direction", "expect": "worse",
                        "evidence": [{"results": "results/cap", "rows": ["big"]}]}]}
    (tmp_path / "readme.yaml").write_text(yaml.safe_dump(spec))
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- results:start -->\nold\n<!-- results:end -->\ntail\n")
    assert main(["report", "readme.yaml", "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "old" not in text and text.endswith("<!-- results:end -->\ntail\n")
    assert "| more | g | two_stage | logit | CNN | 3 | 79.00 ± 1.00 | -1.00 [-3.0, +1.0] vs `kd` |" in text
    assert text.count("| no_kd |") == 1   # a row the main table has is not repeated
    assert "`main`: 1452 s (24.2 min) from an empty cache" in text
    assert "| big | Big | 97.50 | 77.00 ± 1.00 | -3.00 [-5.0, -1.0] vs `kd` |" in text
    assert "- **A big teacher distils worse.** Verdict: supported." in text
    assert "![teachers](results/cap/teachers.png)" in text
    capsys.readouterr()
    spec["claims"][0]["kind"] = "vibes"
    (tmp_path / "readme.yaml").write_text(yaml.safe_dump(spec))
    before = readme.read_text()
    assert main(["report", "readme.yaml", "--readme", str(readme)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "kind" in err[0] and readme.read_text() == before
    # a second spec fills its own block of the same README, the first block untouched; a block that is not there,
    # or a bad block name, is one line and exit 2
    spec["claims"][0]["kind"] = "direction"
    other = {**spec, "block": "other", "heading": "Other table", "test_split": "the other test split"}
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    assert main(["report", "other.yaml", "--readme", str(readme)]) == 2
    assert "<!-- other:start -->" in capsys.readouterr().err and readme.read_text() == before
    readme.write_text(before + "<!-- other:start -->\n<!-- other:end -->\n")
    assert main(["report", "other.yaml", "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith(before) and "### Other table" in text and "on the other test split" in text
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**spec, "block": "../x"}))
    assert main(["report", "bad.yaml", "--readme", str(readme)]) == 2
    assert "readme.block" in capsys.readouterr().err and readme.read_text() == text


def test_the_study_plots_are_drawn_from_result_rows(tmp_path):
    from vitkd.compare.plots import plots
    suite, base = _suite(tmp_path, sweep={"key": "data.train_subset", "values": [100, 400], "label": "images"})
    rows = [{"row": f"no_kd_{n}", "family": "none", "group": "baseline", "macs_m": 5.0, "test_top1_mean": 80.0,
             "test_top1_std": 2.0, "delta": None, "sweep_of": "no_kd", "sweep_value": float(n)} for n in (100, 400)]
    rows += [{"row": f"kd_{n}", "family": "logit", "group": "capacity", "macs_m": 5.0, "test_top1_mean": 85.0,
              "test_top1_std": 1.0, "delta": 5.0, "ci_low": 1.0, "ci_high": 9.0, "verdict": v, "teachers": "CNN",
              "sweep_of": "kd", "sweep_value": float(n)} for n, v in ((100, "better"), (400, "n.s."))]
    teachers = [{"teacher": "cnn", "label": "CNN", "macs_m": 6.0, "test_top1": 97.0, "distilled_from": "",
                 "sweep_of": "cnn", "sweep_value": 100.0},
                {"teacher": "ta", "label": "TA", "macs_m": 6.0, "test_top1": 96.0, "distilled_from": "cnn"}]
    drawn = plots(suite, teachers, rows, {}, tmp_path)
    assert drawn == ["pareto.png", "curves.png", "sweep.png", "teachers.png"]
    assert all((tmp_path / f).stat().st_size > 10_000 for f in drawn)
    assert plots(suite, teachers[:1], [dict(r, group="g", sweep_of=None) for r in rows], {}, tmp_path) == \
        ["pareto.png", "curves.png"]


def test_rows_on_a_synthetic_set_keep_their_teachers_live_and_a_real_store_refuses_them(tmp_path):
    """A row trained on a synthetic set may not read a store of the real train split (other images): the suite
    keeps its teachers live, and the store's fingerprint names the synthetic set, so a direct run is refused."""
    from vitkd.config import parse_config
    from vitkd.methods.stored_logits.fingerprint import check_fingerprint, data_fingerprint
    from vitkd.methods.stored_logits.format import StoreError
    from vitkd.methods.datafree.store import SyntheticStore
    suite, base = _suite(tmp_path)
    suite.rows[1].set = {**suite.rows[1].set, "data.synthetic": str(tmp_path)}
    cache = tmp_path / "cache"
    rows, stores = _rows_and_stores(suite, base, cache)
    assert "checkpoint" in next(j for j in rows if j.key == "rows/kd/s0").raw["distill"]["teachers"]["t"]
    assert "logits" in next(j for j in rows if j.key == "rows/kd2/s0").raw["distill"]["teachers"]["t"]
    real = parse_config({"model": {"name": "vit_digits_tiny"}, **COMMON})
    from vitkd.models import student_spec
    spec = student_spec(real)
    fp = data_fingerprint(real, spec)
    assert "synthetic" not in fp   # stores of the real split keep the fingerprint they were written with
    (tmp_path / SyntheticStore.MANIFEST).write_text(json.dumps({"fingerprint": "abc"}))
    synth = parse_config({"model": {"name": "vit_digits_tiny"}, **COMMON,
                          "data": {**COMMON["data"], "synthetic": str(tmp_path)}}, paths=False)
    assert data_fingerprint(synth, spec)["synthetic"] == "abc"
    with pytest.raises(StoreError, match="synthetic = None, this run has 'abc'"):
        check_fingerprint({"fingerprint": {**fp, "epochs": 300}}, synth, spec, "store")
    check_fingerprint({"fingerprint": {**fp, "epochs": 300}}, real, spec, "store")   # the real run is served


def test_awaiting_claims_wait_for_their_suite_then_are_judged(tmp_path, monkeypatch):
    """A claim under ``awaiting`` names a suite that has not run: the report lists it as awaiting that folder's
    results (and still works from what is there); once the folder holds results it is judged like any claim."""
    from vitkd.compare.evidence import compose, load_readme_spec
    monkeypatch.chdir(tmp_path)
    _results(tmp_path / "results" / "main", [{"row": "no_kd", "baseline": "", "test_top1_mean": 80}], wall=100.0)
    spec = {"main": "results/main",
            "awaiting": [{"title": "Peers help", "kind": "direction", "expect": "better",
                          "evidence": [{"results": "results/new", "rows": ["peer"]}]}],
            "studies": [{"results": "results/new", "title": "Peers"}],
            "picture": {"file": "cost.png", "suites": ["results/main", "results/new"], "train_images": 100}}
    (tmp_path / "readme.yaml").write_text(yaml.safe_dump(spec))
    text = compose(load_readme_spec(tmp_path / "readme.yaml"), tmp_path / "README.md", "vitkd report")
    assert "- **Peers help.** Verdict: awaiting results (`results/new` has none yet)." in text
    assert "### Peers\n\nAwaiting results: `results/new` has none yet." in text   # a study, and the picture
    assert "### Accuracy against cost\n\nAwaiting results: `results/new` has none yet." in text
    _results(tmp_path / "results" / "new", [{"row": "no_kd", "baseline": "", "test_top1_mean": 80},
                                            _cmp("peer", 4.0, "better")])
    del spec["picture"]   # drawn from resolved configs, which these hand-written results lack
    (tmp_path / "readme.yaml").write_text(yaml.safe_dump(spec))
    text = compose(load_readme_spec(tmp_path / "readme.yaml"), tmp_path / "README.md", "vitkd report")
    assert "- **Peers help.** Verdict: supported." in text and "| peer | CNN |" in text and "`peer` vs `no_kd` (new, 3 seeds)" in text


def test_a_zoo_teacher_named_per_value_is_restored_per_value_and_a_plain_one_is_shared(tmp_path):
    suite, base = _suite(tmp_path, sweep={"key": "data.train_subset", "values": [100, 400], "label": "images"},
                         teachers={"cnn": {"zoo": "study-cnn-{value}", "label": "CNN"},
                                   "big": {"zoo": "study-big", "label": "Big"}})
    suite.rows.append(copy.deepcopy(suite.rows[1]))
    suite.rows[-1].name, suite.rows[-1].teachers = "kd_big", {"t": "big"}
    out = expand_sweep(suite, base, False, {}, {})
    assert {k: t.zoo for k, t in out.teachers.items()} == \
        {"cnn_100": "study-cnn-100", "cnn_400": "study-cnn-400", "big": "study-big"}
    assert out.teachers["cnn_400"].sweep_of == "cnn" and out.teachers["cnn_400"].label == "CNN (400)"
    rows = {r.name: r for r in out.rows}
    assert rows["kd_400"].teachers == {"t": "cnn_400"} and rows["kd_big_400"].teachers == {"t": "big"}
