"""A comparison suite's declared selection published as zoo entries (``vitkd zoo publish-suite``): which runs
(:func:`suite_selection`, chosen on nothing measured on test), under which names (:func:`zoo_name`), each through
:func:`vitkd.zoo.publish.export_run` with the suite's figures cited."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from ..config import check_name
from ..rundir import RunDir, exclusive, one_spelling
from ..zoo.index import SuiteRef, ZooEntry, ZooError, load_index
from ..zoo.publish import DEFAULT_MAX_MB, export_run, index_folder, read_results_csv
from .plan import publishable, row_folder, row_kind
from .suite import load_suite
from .sweep import swept_names

__all__ = ["suite_selection", "publish_suite", "zoo_name", "TEACHER_FIGURES", "ROW_FIGURES"]


def _num(v: Optional[str]) -> Optional[float]:
    return float(v) if v not in (None, "") else None


TEACHER_FIGURES = ("test_top1", "val_top1", "params_m", "macs_m", "img_per_s")
ROW_FIGURES = ("seeds", "test_top1_mean", "test_top1_std", "test_top1_all", "val_top1_mean", "params_m", "macs_m",
               "img_per_s")


def suite_selection(results_dir: Path) -> List[Dict[str, Any]]:
    """What a suite publishes, declared in advance and chosen on nothing measured on test: every teacher its
    rows read (those in its ``teachers.csv``); the
    no-distillation baselines (the suite's ``baseline_family``), one per student size; and, for every other
    method family (reference families left out), the row with the best mean *validation* top-1 (ties: the
    first in the suite's order). Each: {kind, key (teacher or row), family, group, teachers, csv row}.

    Rows trained by another job kind (a pipeline of stages) and rows that read what only another job of the suite
    makes (a synthetic train set) are left out: no single run config reproduces them.
    A suite that shares another's runs (``shares:``, an extension of the main suite) publishes only the rows
    and teachers the other's results do not hold: those are the other's own runs, published with it."""
    results_dir = Path(results_dir)
    suite, _ = load_suite(results_dir / "suite.yaml")
    suite = swept_names(suite)
    rows = read_results_csv(results_dir / "results.csv", "row")
    trows = read_results_csv(results_dir / "teachers.csv", "teacher") if suite.teachers else {}
    if suite.shares:
        home = results_dir.parent / suite.shares
        if not (home / "results.csv").is_file():
            raise ZooError(f"zoo publish-suite: {results_dir} shares the runs of suite '{suite.shares}', whose "
                           f"results ({home / 'results.csv'}) are not there")
        rows = {k: v for k, v in rows.items() if k not in read_results_csv(home / "results.csv", "row")}
        theirs = read_results_csv(home / "teachers.csv", "teacher") if (home / "teachers.csv").is_file() else {}
        trows = {k: v for k, v in trows.items() if k not in theirs}
        suite.rows = [r for r in suite.rows if r.name in rows]
    out = []
    for tname, t in suite.teachers.items():
        if tname not in trows or t.zoo is not None:   # not trained by this suite (none of its rows reads it, or
            continue                                  # it is published already)
        out.append({"kind": "teacher", "key": tname, "family": t.family, "group": "teacher",
                    "teachers": dict(t.distill_from), "csv": trows[tname]})
    spec = {r.name: r for r in suite.rows}
    missing = [r for r in spec if r not in rows]
    if missing:
        raise ZooError(f"zoo publish-suite: row {missing[0]} missing from {results_dir / 'results.csv'}")
    best: Dict[str, str] = {}
    for r in suite.rows:
        if row_kind(r) != "row" or not publishable(r):   # trained by another kind's jobs (stages), or reading
            continue                                          # what only a suite job makes: no run config alone
        if r.family == suite.baseline_family:
            out.append({"kind": "row", "key": r.name, "family": r.family, "group": r.group,
                        "teachers": dict(r.teachers), "csv": rows[r.name]})
        elif r.family not in suite.reference_families:
            if r.family not in best or float(rows[r.name]["val_top1_mean"]) > float(rows[best[r.family]]["val_top1_mean"]):
                best[r.family] = r.name
    for fam, rname in best.items():
        r = spec[rname]
        out.append({"kind": "row", "key": rname, "family": fam, "group": r.group, "teachers": dict(r.teachers),
                    "csv": rows[rname]})
    return out


def zoo_name(suite_name: str, kind: str, key: str) -> str:
    return check_name(f"{suite_name}-teacher-{key}" if kind == "teacher" else f"{suite_name}-{key}", "zoo",
                      "model name")


def _float32_mb(pick: Dict[str, Any]) -> float:
    """The megabytes of a selected row's or teacher's weights in float32 (its table's parameter count)."""
    return 4 * float(pick["csv"]["params_m"])


def publish_suite(results_dir, index_path, cache: Optional[str] = None, seed: int = 0,
                  max_mb: float = DEFAULT_MAX_MB, suite_file: Optional[str] = None,
                  half_above_mb: Optional[float] = None, log: Callable[[str], None] = print) -> List[ZooEntry]:
    """Publish :func:`suite_selection` of the suite whose results are in ``results_dir``, from its run cache
    (default ``runs/compare/<suite>``): seed ``seed`` of each row, the teachers (seed 0). Refuses, before writing
    anything, when the weights would pass ``max_mb`` (fp32 parameter bytes). ``half_above_mb``: an entry whose
    float32 weights pass this many MB is stored in float16 where that leaves its top-1 unchanged."""
    results_dir = Path(results_dir)
    suite = swept_names(load_suite(results_dir / "suite.yaml")[0])
    cache_dir = one_spelling(cache) if cache else Path("runs") / "compare" / suite.home
    picks = suite_selection(results_dir)
    spec = {r.name: r for r in suite.rows}
    own = {p["key"] for p in picks if p["kind"] == "teacher"}   # the others: published with the suite it shares
    runs = []
    for p in picks:
        run = cache_dir / "teachers" / p["key"] if p["kind"] == "teacher" else row_folder(cache_dir, spec[p["key"]], seed)
        RunDir(run).finished_weights(f"zoo publish-suite ({p['kind']} {p['key']})")
        runs.append(run)
    est = sum(_float32_mb(p) for p in picks)
    if est > max_mb:
        raise ZooError(f"zoo publish-suite: the selection's weights are about {est:.1f} MB, over --max-mb {max_mb:g}")
    with exclusive(index_folder(index_path), "--index"):
        return _publish_selection(suite, picks, runs, own, results_dir, index_path, seed, max_mb, suite_file,
                                  half_above_mb, log)


def _publish_selection(suite, picks, runs, own, results_dir: Path, index_path, seed: int, max_mb: float,
                       suite_file: Optional[str], half_above_mb: Optional[float],
                       log: Callable[[str], None]) -> List[ZooEntry]:
    """:func:`publish_suite`'s entries, the index folder held by the caller."""
    project = Path(index_path).resolve().parent.parent
    rel = os.path.relpath(results_dir.resolve(), project)
    suite_cmd = f"vitkd compare {suite_file or (results_dir / 'suite.yaml')}"
    entries = []
    for p, run in zip(picks, runs):
        name = zoo_name(suite.name, p["kind"], p["key"])
        lineage = {k: suite.teachers[t].zoo or zoo_name(suite.name if t in own else suite.home, "teacher", t)
                   for k, t in p["teachers"].items()}
        if p["kind"] == "teacher":
            ref = SuiteRef(results=f"{rel}/teachers.csv", key="teacher", row=p["key"], seed=0,
                           figures={k: p["csv"][k] for k in TEACHER_FIGURES if k in p["csv"]})
        else:
            ref = SuiteRef(results=f"{rel}/results.csv", key="row", row=p["key"], seed=seed,
                           figures={k: p["csv"][k] for k in ROW_FIGURES if k in p["csv"]})
        figs = {k: _num(p["csv"].get(k)) for k in ("params_m", "macs_m", "img_per_s")}
        half = half_above_mb is not None and _float32_mb(p) > half_above_mb
        entries.append(export_run(run, name, index_path, method=p["key"], family=p["family"], group=p["group"],
                                    teachers=lineage, suite=ref, figures=figs, half=half, log=log))
        log(f"  (the suite itself: {suite_cmd}; run folder {run})")
    total = sum(e.total_size() for e in load_index(str(index_path)).models) / 1e6
    log(f"zoo: {len(entries)} entries published; the index's files total {total:.1f} MB")
    if total > max_mb:
        log(f"zoo: warning: the zoo's files total {total:.1f} MB, over {max_mb:g} MB")
    return entries
