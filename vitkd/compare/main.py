"""``vitkd compare``: a suite's jobs planned by every job kind, checked, executed, then measured and reported (the
package's docstring says how the comparison is split)."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Dict, Optional

import yaml

from ..config import path_under
from ..io import atomic_write_text
from ..rundir import ensure_writable, exclusive, one_spelling
from .executors import Executor, make_executor
from .jobs import SuitePlan, kinds_in_order
from .measure import summarize
from .plan import check_jobs, plan_suite, recipe_of
from .reference import QUICK_HOME, check_against_reference, format_checks, reference_dir, write_checks
from .report import recorded_walls, run_walls, update_readme, write_failed_timing, write_timing
from .runner import RunsFailed, execute
from .suite import load_suite
from .sweep import expand_sweep
from .tune import read_row_knobs, read_tuned

__all__ = ["run_suite"]


def run_suite(path, out: Optional[str] = None, quick: bool = False, cache: Optional[str] = None,
              jobs: Optional[int] = None, progress: bool = True, log=print, readme: Optional[str] = None,
              plan_seeds: bool = False, executor: str = "local", address: Optional[str] = None,
              cpus_per_job: Optional[int] = None, tuning: Optional[str] = None,
              live_teachers: bool = False) -> Path:
    """Train what the cache lacks, then write the report. ``plan_seeds``: train nothing; report from the
    cache and print how many seeds each family of comparisons needs. ``tuning``: the tuning record's folder
    (default ``results/compare/<suite>/tuning``, written by ``vitkd tune``).

    ``executor``: ``local`` (a pool of ``jobs`` processes, default the suite's ``jobs``) or ``ray`` (every
    run a Ray task on the cluster at ``address``, or on a Ray instance started here; ``jobs`` then caps the
    runs in flight, default none). ``cpus_per_job``: CPU cores (torch threads) per run; see
    :mod:`vitkd.compare.executors`. ``live_teachers``: run every teacher live (an option the job kinds read: no
    teacher is served from a store)."""
    suite, base = load_suite(path)
    tuned, sized = read_tuned(suite, tuning)
    row_knobs = read_row_knobs(suite, tuning)
    suite = expand_sweep(suite, base, quick, tuned, sized)
    n_jobs = jobs or suite.jobs
    name = suite.name + ("-quick" if quick else "")
    # quick mode (the demo) never writes the committed reference: it is re-made only with an explicit --out
    out_dir = Path(out) if out else (path_under(QUICK_HOME, name, key="suite.name") if quick else reference_dir(name))
    with exclusive(out_dir, "--out"):   # one suite writes a results folder at a time
        runner = make_executor(executor, jobs if executor == "ray" else n_jobs, address, cpus_per_job)
        try:
            return _run_suite(suite, base, path, out_dir, quick, cache, n_jobs, progress, log, readme, plan_seeds,
                              runner, tuned, sized, {"live_teachers": live_teachers}, row_knobs)
        finally:
            runner.close()


def _suite_text(path) -> str:
    """The suite file as the results keep it: as written, or, for a suite built on another (``base:``), with
    its bases merged in (a results folder's ``suite.yaml`` loads on its own, e.g. for ``vitkd zoo``)."""
    from ..config import read_yaml
    text = Path(path).read_text()
    raw = yaml.safe_load(text) or {}
    if "base" not in raw:
        return text
    merged = read_yaml(path)
    merged.pop("base", None)
    return (f"# {path} with its base files merged (relative config paths are relative to {Path(path).parent})\n"
            + yaml.safe_dump(merged, sort_keys=False))


def _run_suite(suite, base, path, out_dir: Path, quick, cache, n_jobs, progress, log, readme, plan_seeds,
               runner: Executor, tuned: dict, sized: dict, options: dict, row_knobs: dict) -> Path:
    name = suite.name + ("-quick" if quick else "")
    cache_dir = one_spelling(cache) if cache else path_under(Path("runs") / "compare", suite.home, key="suite.name")
    # every kind plans its jobs, and every job is checked, before any work starts
    plan = SuitePlan(suite, base, cache_dir, quick, tuned, sized, options, log, row_knobs=row_knobs)
    first = plan_suite(plan)
    check_jobs(first + plan.checked_only)
    ensure_writable(cache_dir, "--cache")
    ensure_writable(out_dir, "--out")
    t0 = time.perf_counter()
    walls: Dict[str, float] = {}
    estimates = recorded_walls(out_dir, suite.shares)   # the longest runs start first

    def run_more(jobs, done_before=()):
        """Jobs whose inputs are done (the first ones; then a kind's, planned after the first ones ran)."""
        walls.update(execute(jobs, n_jobs, progress, log, done_before=done_before, train=not plan_seeds,
                             executor=runner, seconds=estimates))
        return walls

    try:
        run_more(first)
        for kind in kinds_in_order():   # kinds that plan more once the first jobs have run (a pipeline's stages)
            if kind.after is not None:
                kind.after(plan, lambda jobs: run_more(jobs, [j.key for j in plan.jobs]))
    except RunsFailed as e:   # the runs that did finish keep their seconds, and the invocation its wall
        walls.update(e.walls)
        write_failed_timing(out_dir / "timing.json", walls, time.perf_counter() - t0, str(e))
        raise
    for kind in kinds_in_order():   # table overrides and files of the kinds' own
        if kind.finish is not None:
            kind.finish(plan, run_walls(out_dir, walls))
    recipe, seeds = recipe_of(suite, quick)
    meta = {"recipe": {**recipe, **sized}, "seeds": seeds, "tuned": tuned, "row_knobs": row_knobs, "quick": quick,
            "executor": runner.name, **plan.meta, "suite_file": str(path), "wall_s_total": time.perf_counter() - t0}
    results = summarize(suite, plan.with_role("teacher"), plan.with_role("row"), walls, meta, out_dir, log,
                        overrides=plan.overrides)
    for fname, data in plan.files.items():
        atomic_write_text(out_dir / fname, json.dumps(data, indent=2))
    atomic_write_text(out_dir / "suite.yaml", _suite_text(path))
    atomic_write_text(out_dir / "resolved_configs.yaml",
                      yaml.safe_dump({j.key: j.raw for j in plan.jobs}, sort_keys=False))
    meta["wall_s_total"] = time.perf_counter() - t0
    write_timing(out_dir / "timing.json", walls, meta["wall_s_total"],
                 shared=out_dir.parent / suite.shares / "timing.json" if suite.shares else None)
    if readme:
        update_readme(readme, out_dir)
    if plan_seeds:
        for p in meta["seed_plan"]:
            log(f"family {p['family']} (m={p['family_size']}): |Δ| {p['delta']:.1f} needs {p['seeds_median_sd']} seeds "
                f"at the median paired SD {p['median_sd']:.2f}, {p['seeds_max_sd']} at the largest {p['max_sd']:.2f}")
    if quick:
        _check_reference(out_dir, reference_dir(name), log)
    log(f"wrote {out_dir} ({len(results)} rows, {meta['wall_s_total']:.0f}s)")
    return out_dir


def _check_reference(out_dir: Path, ref_dir: Path, log) -> None:
    """Print each row beside the committed reference and its cross-instruction-set band (:mod:`.reference`)."""
    if not (ref_dir / "results.csv").is_file() or out_dir.resolve() == ref_dir.resolve():
        return
    checks = check_against_reference(out_dir, ref_dir)
    log(format_checks(checks, ref_dir))
    write_checks(checks, ref_dir, out_dir / "reference_check.json")
