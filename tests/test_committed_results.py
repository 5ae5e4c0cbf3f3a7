"""Claims over the committed comparison (results/compare/digits*): the tuning record, the full suite and
quick mode agree with what the README and the issue promise. These read CSV/JSON files made by
`vitkd tune`, `vitkd compare` and `vitkd compare --quick`; nothing is trained here."""
import csv
import json
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.isa   # CPU-sensitive: .ci/run runs these again under other instruction sets

ROOT = Path(__file__).parents[1]
FULL = ROOT / "results" / "compare" / "digits"
QUICK = ROOT / "results" / "compare" / "digits-quick"
TUNING = FULL / "tuning"
SUITE = ROOT / "configs" / "compare" / "digits.yaml"


def rows(path: Path):
    return {r["row"]: r for r in csv.DictReader(open(path))}


def per_seed(r) -> list:
    return [float(x) for x in r["test_top1_all"].split()]


@pytest.fixture(scope="module")
def record():
    return json.loads((TUNING / "tuning.json").read_text())


def test_every_tuned_value_is_interior_to_its_grid(record):
    suite = yaml.safe_load(SUITE.read_text())
    assert set(record["knobs"]) == set(suite["tune"]["knobs"])
    for key, k in record["knobs"].items():
        assert k["grid"][0] < k["chosen"] < k["grid"][-1], f"{key}: {k['chosen']} on the edge of {k['grid']}"
        assert record["chosen"][key] == k["chosen"]
    # the choice is the best mean validation top-1 of its knob's stage (recomputed from the per-seed values)
    trows = list(csv.DictReader(open(TUNING / "tuning.csv")))
    for key, k in record["knobs"].items():
        stage = [r for r in trows if r["stage"] == "knob" and r["knob"] == key]
        means = {float(r["value"]): sum(map(float, r["val_top1_all"].split())) / len(r["val_top1_all"].split())
                 for r in stage}
        assert max(means.values()) == pytest.approx(means[k["chosen"]], abs=1e-3)
        assert all(len(r["val_top1_all"].split()) >= 2 for r in stage)   # at least 2 seeds per value


def test_the_epochs_and_data_size_are_reported(record):
    trows = list(csv.DictReader(open(TUNING / "tuning.csv")))
    mults = sorted(float(r["multiple"]) for r in trows if r["stage"] == "epochs")
    assert mults == [1.0, 2.0, 4.0]
    size = record["size"]
    sizes = {r["size"]: r for r in size["table"]}
    assert size["size"] in sizes
    # the rule: no-KD seed std <= max_std and the CNN reference >= min_gap above no-KD (val), else the closest
    if size["qualifies"]:
        assert size["no_kd_std"] <= 3.0 and size["gap"] >= 10.0
    else:
        assert size["shortfall"] == min(v["shortfall"] for v in size["table"])
    # the suite's runs use that size (resolved configs of the committed run)
    resolved = yaml.safe_load((FULL / "resolved_configs.yaml").read_text())
    assert resolved["rows/no_kd/s0"]["data"]["train_subset"] == size["size"]


def test_the_baseline_seed_std_is_reported():
    full = rows(FULL / "results.csv")
    base = full["no_kd"]
    xs = per_seed(base)
    assert len(xs) >= 5 and float(base["test_top1_std"]) >= 0
    m = sum(xs) / len(xs)
    sd = (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5
    assert float(base["test_top1_std"]) == pytest.approx(sd, abs=1e-3)


def test_quick_rows_are_the_full_suites_seed_0_runs_and_reach_80_percent():
    full, quick = rows(FULL / "results.csv"), rows(QUICK / "results.csv")
    assert quick and set(quick) <= set(full)
    fams = {r["family"] for r in quick.values()}
    main_fams = {r["family"] for r in full.values() if r["group"] not in ("capacity", "size")}
    assert main_fams - {"module", "datafree"} <= fams | {"capacity"}
    for name, q in quick.items():
        assert per_seed(q) == per_seed(full[name])[:1], name   # the same run: seed 0 of the full suite
        assert float(q["test_top1_mean"]) >= 0.8 * float(full[name]["test_top1_mean"]), name


def test_significant_full_suite_deltas_keep_their_sign_in_quick_mode():
    full, quick = rows(FULL / "results.csv"), rows(QUICK / "results.csv")
    for name, r in full.items():
        if r["verdict"] not in ("better", "worse") or name not in quick:
            continue
        base = r["baseline"]
        d_quick = per_seed(quick[name])[0] - per_seed(quick[base])[0]
        assert (d_quick > 0) == (r["verdict"] == "better"), f"{name}: full {r['verdict']}, quick Δ {d_quick:+.2f}"


def test_the_compute_matched_baseline_matches_the_median_kd_row():
    full = rows(FULL / "results.csv")
    cm = full["no_kd_compute"]
    kd = sorted(float(r["train_mmacs_per_image"]) * int(float(r["epochs"])) for r in full.values()
                if r["teachers"] and r["group"] in ("homomorphic", "heteromorphic"))
    median = kd[len(kd) // 2] if len(kd) % 2 else (kd[len(kd) // 2 - 1] + kd[len(kd) // 2]) / 2
    mine = float(cm["train_mmacs_per_image"]) * int(float(cm["epochs"]))
    assert abs(mine / median - 1) <= 0.1, (mine, median)


def test_the_main_table_fits_its_budget():
    timing = json.loads((FULL / "timing.json").read_text())
    assert timing["empty_cache_wall_s"] is not None and timing["empty_cache_wall_s"] <= 25 * 60


# ------------------------------------------------------------------------------------------------ the studies
STUDIES = ROOT / "results" / "compare"


def test_the_studies_fit_their_budgets_from_an_empty_cache():
    for name in ("digits-datasize", "digits-capacity"):
        t = json.loads((STUDIES / name / "timing.json").read_text())
        # measured when nothing was reused (a later report-only invocation keeps the figure)
        assert t["empty_cache_wall_s"] is not None and t["empty_cache_wall_s"] <= 20 * 60, name


def test_the_data_size_study_holds_steps_on_nested_subsets():
    folder = STUDIES / "digits-datasize"
    res = list(csv.DictReader(open(folder / "results.csv")))
    configs = yaml.safe_load((folder / "resolved_configs.yaml").read_text())
    sizes = sorted({int(float(r["sweep_value"])) for r in res})
    assert sizes == [100, 200, 400, 1197]
    methods = {r["sweep_of"] for r in res} - {"no_kd"}
    assert len(methods) >= 3
    for r in res:
        n = int(float(r["sweep_value"]))
        assert r["row"] == f"{r['sweep_of']}_{n}" and int(r["seeds"]) >= 3
        if r["sweep_of"] != "no_kd":
            assert r["baseline"] == f"no_kd_{n}" and r["p_holm"] and r["family_test"] == "main"
    for key, raw in configs.items():
        if not key.startswith(("rows/", "teachers/")):
            continue
        n, epochs = raw["data"]["train_subset"], raw["train"]["epochs"]
        assert abs(epochs * -(-n // raw["data"]["batch_size"]) - 900) <= -(-n // raw["data"]["batch_size"]), key
        if key.startswith("rows/"):   # every row reads the teacher of its own size
            for t in ((raw.get("distill") or {}).get("teachers") or {}).values():
                assert t["checkpoint"].endswith(f"cnn_s_{n}")
    teachers = list(csv.DictReader(open(folder / "teachers.csv")))
    assert sorted(int(float(t["sweep_value"])) for t in teachers) == sizes


def test_the_capacity_study_has_three_teacher_sizes_and_an_assistant():
    folder = STUDIES / "digits-capacity"
    teachers = {t["teacher"]: t for t in csv.DictReader(open(folder / "teachers.csv"))}
    sizes = [float(teachers[t]["macs_m"]) for t in ("cnn_xs", "cnn_s", "cnn_l")]
    assert sizes == sorted(sizes) and sizes[-1] > 5 * sizes[0]
    assert teachers["ta_s_from_l"]["distilled_from"] == "cnn_l"
    res = rows(folder / "results.csv")
    assert {r: res[r]["baseline"] for r in ("align_s", "align_xs", "align_l", "align_ta")} == \
        {"align_s": "no_kd", "align_xs": "align_s", "align_l": "align_s", "align_ta": "align_l"}
    assert all(res[r]["p_holm"] and int(res[r]["paired_seeds"]) >= 3 for r in ("align_xs", "align_l", "align_ta"))


def test_the_method_rows_are_paired_with_the_main_suites_own_runs():
    main, more = rows(FULL / "results.csv"), rows(STUDIES / "digits-methods" / "results.csv")
    for shared in ("no_kd", "kd_cnn", "cnn_align"):   # reused from the main suite's cache, the same seeds
        assert per_seed(more[shared]) == per_seed(main[shared])
    assert more["dearkd_cnn"]["baseline"] == "cnn_align" and more["m2mkd"]["baseline"] == "no_kd"
    assert more["kd_vit_stored"]["baseline"] == more["kd_vit_top2"]["baseline"] == "kd_vit_live"
    for r in ("dearkd_cnn", "datafree_kd", "m2mkd", "kd_vit_live", "kd_vit_stored", "kd_vit_top2"):
        assert int(more[r]["paired_seeds"]) == 5 and more[r]["p_raw"]
        assert float(more[r]["train_mmacs_per_image"]) > 0 and float(more[r]["wall_s_per_run"]) > 0
    pipes = json.loads((STUDIES / "digits-methods" / "pipelines.json").read_text())
    check = pipes["checks"]["m2mkd"]
    assert isinstance(check["passed"], bool) and len(check["swapped_top1"]) == 3
    macs = pipes["training_macs"]["m2mkd"]   # both pipelines' totals: m2mKD's stages and its scratch baseline's
    assert macs["baseline"]["row"] == "no_kd" and macs["total_macs"] > macs["baseline"]["total_macs"] > 0
    # the row's train cost is its whole pipeline's (module jobs + fine-tuning + meta model), above no-KD's
    assert float(more["m2mkd"]["train_mmacs_per_image"]) > float(more["no_kd"]["train_mmacs_per_image"])


@pytest.mark.parametrize("spec_path", ["configs/compare/readme.yaml", "configs/compare/readme_fmnist.yaml"])
def test_the_readme_results_block_is_the_report_commands_output(spec_path, tmp_path):
    from vitkd.compare.evidence import compose, load_readme_spec
    start, end = load_readme_spec(ROOT / spec_path).markers()
    readme = ROOT / "README.md"
    text = readme.read_text()
    assert text.count(start) == text.count(end) == 1, spec_path
    block = text.split(start, 1)[1].split(end, 1)[0]
    import os
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        want = compose(load_readme_spec(spec_path), Path("README.md"), f"vitkd report {spec_path} --readme README.md",
                       draw_to=tmp_path / "cost.png")   # the committed figure is left alone
    finally:
        os.chdir(cwd)
    assert block == "\n" + want
    pic = load_readme_spec(ROOT / spec_path).picture
    if pic is not None:   # drawn from the same committed results; the block links the committed figure
        assert (tmp_path / "cost.png").stat().st_size > 0 and (ROOT / pic.file).is_file()


def test_the_quick_suite_on_ray_gives_the_local_pools_numbers():
    ray = STUDIES / "digits-quick-ray"
    assert json.loads((ray / "environment.json").read_text())["executor"] == "ray"
    local, remote = rows(QUICK / "results.csv"), rows(ray / "results.csv")
    assert set(local) == set(remote)
    for r in local:
        assert remote[r]["test_top1_all"] == local[r]["test_top1_all"], r
    wall = json.loads((ray / "timing.json").read_text())["wall_s_this_invocation"]
    assert f"{wall:.0f} s on 2 cores" in (ROOT / "docs" / "scale_out.md").read_text()


def test_the_quick_suite_was_timed_with_and_without_stored_logits():
    live_dir = STUDIES / "digits-quick-live"
    stored, live = (json.loads((d / "timing.json").read_text()) for d in (QUICK, live_dir))
    assert json.loads((QUICK / "environment.json").read_text())["stored_logits"] is True
    assert json.loads((live_dir / "environment.json").read_text())["stored_logits"] is False
    assert not any(k.startswith("logits/") for k in live["per_run_s"])
    assert any(k.startswith("logits/") for k in stored["per_run_s"])
    doc = (ROOT / "docs" / "stored_logits.md").read_text()
    readme = (ROOT / "README.md").read_text()
    for t in (stored, live):
        assert f"| {t['wall_s_this_invocation']:.0f} s |" in doc
    assert f"{stored['wall_s_this_invocation']:.0f} s against {live['wall_s_this_invocation']:.0f} s" in readme


def test_the_readme_digits_section_quotes_the_main_tables_wall_and_seed_spread():
    """The short digits section ("the embedded smoke benchmark") quotes the committed main table: its wall time
    from an empty cache and no-KD's seed std."""
    text = (ROOT / "README.md").read_text()
    sec = " ".join(text.split("## Digits: the embedded smoke benchmark", 1)[1].split("<details>", 1)[0].split())
    wall = json.loads((FULL / "timing.json").read_text())["empty_cache_wall_s"]
    assert f"5 seeds, {wall:.0f} s from an empty cache on 2 cores" in sec
    no_kd = {r["row"]: r for r in csv.DictReader(open(FULL / "results.csv"))}["no_kd"]
    assert f"no-KD's seed std is {float(no_kd['test_top1_std']):.1f} points" in sec
    assert "<summary>" in text.split("## Digits: the embedded smoke benchmark", 1)[1].split("<!-- results:start", 1)[0]
