"""Claims over the committed comparison (results/compare/digits*): the tuning record, the full suite and
quick mode agree with what the README and the issue promise. These read CSV/JSON files made by
`vitkd tune`, `vitkd compare` and `vitkd compare --quick`; nothing is trained here."""
import csv
import json
from pathlib import Path

import pytest
import yaml

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
