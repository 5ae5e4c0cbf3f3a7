"""A fresh machine with another CPU: the demo's reference check, the measured cross-instruction-set spread it
rests on, and the small promises of the command line (several pairs after one --set, p-values written with
significant digits)."""
import csv
import json
import subprocess
from pathlib import Path

import pytest

from vitkd.cli import build_parser
from vitkd.compare.reference import SPREAD_FILE, check_against_reference, format_checks
from vitkd.io import atomic_write_csv

ROOT = Path(__file__).resolve().parents[1]
# the committed quick references whose bands the demos check against (`make demo`, `make demo-digits`)
QUICKS = [ROOT / "results" / "compare" / name for name in ("fmnist-quick", "digits-quick")]


def _results(folder: Path, rows: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(folder / "results.csv", [{"row": r, "test_top1_mean": v} for r, v in rows.items()], "{:.4f}")
    return folder


def test_a_row_five_points_off_is_outside_its_band(tmp_path):
    ref = _results(tmp_path / "ref", {"no_kd": 75.5, "kd": 84.25})
    (ref / SPREAD_FILE).write_text(json.dumps({"quick": {"rows": {"no_kd": {"band": 2.0}, "kd": {"band": 1.25}}}}))
    ok = check_against_reference(_results(tmp_path / "a", {"no_kd": 77.5, "kd": 83.0}), ref)
    assert [c.status for c in ok] == ["OK", "OK"]            # on the edge of each band
    off = check_against_reference(_results(tmp_path / "b", {"no_kd": 80.5, "kd": 84.25, "new": 50.0}), ref)
    assert [(c.row, c.status) for c in off] == [("no_kd", "OUTSIDE"), ("kd", "OK"), ("new", "no reference")]
    text = format_checks(off, ref)
    assert "1 of 2 rows OUTSIDE their band (no_kd)" in text and "+5.00" in text


def test_without_a_measured_band_a_row_is_not_judged(tmp_path):
    ref = _results(tmp_path / "ref", {"no_kd": 75.5})
    checks = check_against_reference(_results(tmp_path / "a", {"no_kd": 90.0}), ref)
    assert [c.status for c in checks] == ["no band"] and "within" not in format_checks(checks, ref)


@pytest.mark.isa
@pytest.mark.parametrize("quick", QUICKS, ids=lambda p: p.name)
def test_the_committed_bands_come_from_the_committed_spread_measurement(quick):
    spread = json.loads((quick / SPREAD_FILE).read_text())
    committed = {r["row"]: float(r["test_top1_mean"]) for r in csv.DictReader(open(quick / "results.csv"))}
    rows = spread["quick"]["rows"]
    assert set(rows) == set(committed)
    isas = list(spread["machine"])
    assert len(isas) == 3 and len({spread["machine"][i]["aten_capability"] for i in isas}) == 3
    for row, r in rows.items():
        assert r["reference"] == committed[row], row
        diffs = [abs(r[i] - r["reference"]) for i in isas]
        assert r["max_abs_diff_from_reference"] == pytest.approx(max(diffs), abs=1e-6)
        assert r["spread_across_isas"] == pytest.approx(max(r[i] for i in isas) - min(r[i] for i in isas), abs=1e-6)
        assert r["band"] == pytest.approx(max(diffs) + spread["quick"]["margin"], abs=1e-6)
    if "zoo_eval" not in spread:   # measured with the digits reference (`make isa-spread-digits`)
        return
    # evaluation of fixed weights: the same top-1 under every instruction set, for every published entry
    zoo = spread["zoo_eval"]["entries"]
    assert zoo and spread["zoo_eval"]["all_top1_equal"]
    assert all(len(set(e["top1"].values())) == 1 and e["top1"]["native"] == e["index_top1"] for e in zoo.values())


@pytest.mark.parametrize("quick", QUICKS, ids=lambda p: p.name)
def test_the_readme_states_the_measured_spread(quick):
    spread = json.loads((quick / SPREAD_FILE).read_text())
    text = (ROOT / "README.md").read_text()
    assert "python tools/isa_spread.py" in text
    # the table that follows the first mention of this record
    where = f"results/compare/{quick.name}/isa_spread.json"
    assert where in text, where
    after = text.split(where, 1)[1].splitlines()
    start = next(i for i, ln in enumerate(after) if ln.startswith("| row |"))
    table = after[start:next((i for i in range(start, len(after)) if not after[i].startswith("|")), len(after))]
    for row, r in spread["quick"]["rows"].items():
        line = next((ln for ln in table if ln.startswith(f"| {row} |")), None)
        assert line is not None, row
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[1:] == [f"{r['reference']:.2f}"] + [f"{r[i]:.2f}" for i in spread["machine"]] + \
            [f"{r['spread_across_isas']:.2f}", f"±{r['band']:.2f}"], row


@pytest.mark.parametrize("quick", QUICKS, ids=lambda p: p.name)
def test_the_demo_output_folder_is_untracked(quick):
    out = subprocess.run(["git", "check-ignore", "-q", f"runs/quick/{quick.name}/results.csv"], cwd=ROOT)
    assert out.returncode == 0


def test_several_pairs_after_one_set():
    p = build_parser()
    args = p.parse_args(["train", "c.yaml", "--set", "train.lr=1e-3", "train.epochs=2", "--set", "seed=1",
                         "--out", "o"])
    assert args.set == ["train.lr=1e-3", "train.epochs=2", "seed=1"] and args.out == "o"
    for cmd in (["eval", "run"], ["synthesize", "c.yaml"], ["logits", "save", "c.yaml"]):
        assert p.parse_args(cmd + ["--set", "a=1", "b=2"]).set == ["a=1", "b=2"]
    assert p.parse_args(["zoo", "eval", "name", "--json"]).json


def test_set_without_an_equals_sign_is_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["train", "c.yaml", "--set", "train.lr=1", "oops"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["vitkd: error: --set oops: expected KEY=VALUE"]


def test_p_values_keep_significant_digits(tmp_path):
    atomic_write_csv(tmp_path / "r.csv", [{"row": "a", "delta": 1.23456, "p_raw": 0.000581, "p_holm": 3.2e-07,
                                           "mcnemar_p": 0.5, "t": float("nan")}], "{:.4f}")
    r = next(csv.DictReader(open(tmp_path / "r.csv")))
    assert r == {"row": "a", "delta": "1.2346", "p_raw": "0.000581", "p_holm": "3.2e-07", "mcnemar_p": "0.5",
                 "t": "nan"}
