"""Born-again generations (Furlanello et al. 2018) as a shorthand of the teacher-assistant chain: ``generations: N``
expands into ordinary stages ``<name>0 .. <name>N-1``, generation k+1 distilling from generation k's finished run
folder; a re-run retrains nothing finished; bad entries are one line."""
from pathlib import Path

import pytest
import yaml

import vitkd  # noqa: F401  (registers the chain's run kind and the digits archs)
from vitkd.cli import main
from vitkd.config import ConfigError
from vitkd.methods.chain.stages import ChainStage, expand_generations
from vitkd.rundir import RunDir

DIGITS = Path(__file__).parents[1] / "configs" / "digits"
STUDENT = {"seed": 0, "model": {"name": "vit_digits_tiny"},
           "data": {"name": "digits", "train_subset": 32, "batch_size": 16},
           "train": {"epochs": 1, "warmup_epochs": 0, "progress": False, "device": "cpu", "threads": 1}}
KD = [{"type": "ce", "weight": 0.5}, {"type": "kd", "weight": 0.5, "T": 4.0}]


def _write(tmp_path, entry) -> Path:
    (tmp_path / "student.yaml").write_text(yaml.safe_dump(STUDENT))
    path = tmp_path / "ban.yaml"
    path.write_text(yaml.safe_dump({"name": "ban", "chain": [entry]}, sort_keys=False))
    return path


def _stamps(out: Path) -> dict:
    return {p.relative_to(out).as_posix(): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(out.rglob("*")) if p.is_file()}


def test_generation_k_plus_1_distils_from_generation_k_and_a_rerun_retrains_nothing(tmp_path):
    chain = _write(tmp_path, {"name": "gen", "config": "student.yaml", "generations": 3, "distill": {"terms": KD}})
    out = tmp_path / "run"
    assert main(["train", str(chain), "--out", str(out)]) == 0
    cfgs = {g: yaml.safe_load((out / g / "config.yaml").read_text()) for g in ("gen0", "gen1", "gen2")}
    assert not (cfgs["gen0"].get("distill") or {}).get("teachers")   # CE alone, as its config says
    for k in (1, 2):   # the one teacher of generation k is generation k-1's finished run folder
        teachers = cfgs[f"gen{k}"]["distill"]["teachers"]
        assert list(teachers) == ["previous"] and teachers["previous"]["checkpoint"] == str(out / f"gen{k - 1}")
    assert [t["type"] for t in cfgs["gen2"]["distill"]["terms"]] == ["ce", "kd"]
    assert [cfgs[g]["seed"] for g in cfgs] == [0, 1, 2]   # each generation a new network (reseed, the default)
    for g in cfgs:   # one architecture, one recipe: only the teacher and the seed differ
        assert cfgs[g]["model"] == cfgs["gen0"]["model"] and cfgs[g]["train"] == cfgs["gen0"]["train"]
        assert (out / g / "model.safetensors").is_file()
    before = _stamps(out)
    assert main(["train", str(chain), "--out", str(out)]) == 0   # every generation finished: all reused
    assert _stamps(out) == before


def test_an_unfinished_last_generation_is_the_only_one_trained_again(tmp_path, capsys):
    chain = _write(tmp_path, {"name": "g", "config": "student.yaml", "generations": 2, "distill": {"terms": KD},
                              "reseed": False})
    out = tmp_path / "run"
    assert main(["train", str(chain), "--out", str(out)]) == 0
    (out / "g1" / RunDir.STAMP).unlink()   # as if killed before its stamp
    kept = _stamps(out / "g0")
    capsys.readouterr()
    assert main(["train", str(chain), "--out", str(out)]) == 0
    log = capsys.readouterr().out
    assert "stage 'g0': reusing" in log and "stage 'g1' ->" in log
    assert _stamps(out / "g0") == kept
    assert yaml.safe_load((out / "g1" / "config.yaml").read_text())["seed"] == 0   # reseed: false keeps the seed


def test_a_generation_entry_expands_into_ordinary_stages():
    entry = ChainStage("ban", "student.yaml", {"train.lr": 0.001}, 3, {"terms": KD}, "prev")
    stages = expand_generations([ChainStage("teacher", "t.yaml"), entry])
    assert [(s.name, k, p) for s, k, p in stages] == [("teacher", None, None), ("ban0", 0, None), ("ban1", 1, "ban0"),
                                                      ("ban2", 2, "ban1")]
    assert all(s.config == "student.yaml" and s.set == {"train.lr": 0.001} for s, _, _ in stages[1:])


@pytest.mark.parametrize("entry,match", [
    ({"generations": 0, "distill": {"terms": KD}}, r"chain\[0\].generations: expected an integer >= 1"),
    ({"generations": 2}, r"chain\[0\].distill.terms: generations >= 1 distil"),
    ({"generations": 2, "distill": {"terms": KD, "teachers": {"t": {}}}}, r"chain\[0\].distill.teachers"),
    ({"distill": {"terms": KD}}, r"chain\[0\].distill: .* needs generations"),
    ({"generations": 2, "distill": {"terms": [{"type": "kd", "TT": 1}]}}, r"stage 'gen1'.*'TT'"),
])
def test_bad_generation_entries_are_one_line(tmp_path, capsys, entry, match):
    chain = _write(tmp_path, {"name": "gen", "config": "student.yaml", **entry})
    assert main(["train", str(chain), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and pytest.importorskip("re").search(match, err), err
    assert not (tmp_path / "run" / "gen0" / "model.safetensors").exists()   # refused before anything trained


def test_the_digits_born_again_file_expands_to_one_architecture():
    raw = yaml.safe_load((DIGITS / "born_again.yaml").read_text())
    stages = expand_generations([ChainStage(**s) for s in raw["chain"]])
    assert [p for _, _, p in stages] == [None] + [s.name for s, _, _ in stages[:-1]]
    assert len(stages) >= 2


# ---------------------------------------------------------------------- the suite: configs/compare/digits_online.yaml
def _online_plan():
    from vitkd.compare.jobs import SuitePlan
    from vitkd.compare.plan import check_jobs, plan_suite
    from vitkd.compare.suite import load_suite
    from vitkd.compare.tune import read_tuned
    suite, base = load_suite(Path(__file__).parents[1] / "configs" / "compare" / "digits_online.yaml")
    tuned, sized = read_tuned(suite, None)
    plan = SuitePlan(suite, base, Path("runs/compare") / suite.home, False, tuned, sized, {}, lambda m: None)
    first = plan_suite(plan)
    check_jobs(first + plan.checked_only)   # every run dry-built (nothing trains)
    return suite, plan


def test_the_online_suite_plans_its_generations_and_counts_their_training():
    from vitkd.methods.chain.suite import chain_costs, generation_teachers
    suite, plan = _online_plan()
    assert suite.home == "digits" and suite.seeds == [0, 1, 2, 3, 4]
    teachers = {j.row: j for j in plan.with_role("teacher")}
    rows = {(j.row, j.seed): j for j in plan.with_role("row")}
    # generation 0 is the no-KD student at seed 0; generation 1's teacher is generation 0
    assert teachers["vit_s"].raw == rows[("no_kd", 0)].raw
    assert teachers["ban_g1"].deps == ["teachers/vit_s"]
    assert generation_teachers(suite, next(r for r in suite.rows if r.name == "ban_gen2")) == ["ban_g1", "vit_s"]
    assert {r for r, _ in rows} == {"no_kd", "kd_cnn", "dml_vit", "dml_cnn_vit", "ema_self", "byot", "kd_vit_static",
                                    "ban_gen2"}

    def cost(raw):   # a stand-in: 10 per distilled run, 4 per run alone
        return {"train_macs_per_image": 10.0 if (raw.get("distill") or {}).get("teachers") else 4.0}
    costs = chain_costs(suite, plan.with_role("row"), plan.with_role("teacher"), cost=cost)
    assert set(costs) == {"kd_vit_static", "ban_gen2"}   # the rows with count_generations
    assert costs["kd_vit_static"]["total"] == 10.0 + 4.0
    assert costs["ban_gen2"]["teachers"] == {"ban_g1": 10.0, "vit_s": 4.0} and costs["ban_gen2"]["total"] == 24.0


def test_count_generations_needs_a_suite_teacher(tmp_path):
    from vitkd.compare.suite import load_suite
    (tmp_path / "student.yaml").write_text(yaml.safe_dump(STUDENT))
    suite = {"name": "s", "student": "student.yaml", "rows": [{"name": "no_kd", "family": "none",
                                                               "count_generations": True}]}
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    with pytest.raises(ConfigError, match=r"suite.rows.no_kd.count_generations: the row reads no suite teacher"):
        load_suite(tmp_path / "suite.yaml")
