"""The comparison suite: many runs of one frozen recipe -> a table and plots in ``results/``.

Protocol (see ``configs/compare/digits.yaml``):
1. teachers are trained once and cached (a run is reused when its config is unchanged);
2. the recipe is tuned for the no-KD student on the validation split beforehand (``vitkd tune``: several
   knobs, several seeds, the main data size; :mod:`.tune`, its own record), then frozen for every row;
3. every row (method) runs with that recipe for every seed; top-1 is read on the held-out test split
   at the last epoch (nothing is selected on test); each row is compared with its baseline paired by
   seed, Holm-corrected within its family of comparisons (:mod:`.verdicts`, :mod:`.stats`);
4. params, MACs, training cost per image and img/s are measured for every student and teacher.

The package is split by job: :mod:`.suite` (the YAML schema), :mod:`.plan` (jobs), :mod:`.jobs` (what each kind
of job does; :mod:`.stored` and :mod:`.from_zoo` register theirs), :mod:`.runner` and :mod:`.executors` (running
them), :mod:`.measure` (costs, accuracies, verdicts), :mod:`.report` and :mod:`.plots` (outputs). Runs go to ``<cache>/<suite>/...`` as ordinary ``vitkd train`` run folders (and
stored-logits folders for the rows that read a teacher's logits only, :mod:`.stored`), executed as separate
processes, ``jobs`` at a time (one thread each), so both cores are used; or, with ``--executor ray``, as
Ray tasks on a cluster (:mod:`vitkd.compare.executors`).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import yaml

from ..config import path_under
from ..io import atomic_write_text
from ..rundir import ensure_writable, exclusive
from .executors import Executor, make_executor
from .from_zoo import teachers_from_zoo
from .measure import summarize
from .plan import check_jobs, plan_rows, plan_synth, plan_teachers, recipe_of
from .reference import QUICK_HOME, check_against_reference, format_checks, reference_dir, write_checks
from .m2mkd import pipeline_costs, pipeline_overrides, pipeline_rows, plan_pipelines, run_checks
from .report import run_walls, update_readme, write_timing
from .runner import execute
from .stored import plan_stored_logits
from .suite import SuiteCfg, load_suite
from .sweep import expand_sweep
from .tune import read_tuned, tune_suite

__all__ = ["SuiteCfg", "load_suite", "run_suite", "summarize", "tune_suite"]


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
    :mod:`vitkd.compare.executors`. ``live_teachers``: run every teacher live, as the suite option
    ``stored_logits: false`` does (:mod:`vitkd.compare.stored`)."""
    suite, base = load_suite(path)
    tuned, sized = read_tuned(suite, tuning)
    suite = expand_sweep(suite, base, quick, tuned, sized)
    if live_teachers:
        suite.stored_logits = False
        for r in suite.rows:
            r.logits.stored = False
    n_jobs = jobs or suite.jobs
    name = suite.name + ("-quick" if quick else "")
    # quick mode (the demo) never writes the committed reference: it is re-made only with an explicit --out
    out_dir = Path(out) if out else (path_under(QUICK_HOME, name, key="suite.name") if quick else reference_dir(name))
    with exclusive(out_dir, "--out"):   # one suite writes a results folder at a time
        runner = make_executor(executor, jobs if executor == "ray" else n_jobs, address, cpus_per_job)
        try:
            return _run_suite(suite, base, path, out_dir, quick, cache, n_jobs, progress, log, readme, plan_seeds,
                              runner, tuned, sized)
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


def _stored(suite, row_jobs, teacher_jobs, cache_dir):
    """(rows, logits jobs): rows read logit-only teachers from stores unless the suite (or the row's
    ``logits.stored``) turns it off."""
    options = {r.name: r.logits for r in suite.rows}
    if not suite.stored_logits and not any(o.stored for o in options.values()):
        return row_jobs, []
    return plan_stored_logits(row_jobs, teacher_jobs, cache_dir, options, default=suite.stored_logits)


def _run_suite(suite, base, path, out_dir: Path, quick, cache, n_jobs, progress, log, readme, plan_seeds,
               runner: Executor, tuned: dict, sized: dict) -> Path:
    name = suite.name + ("-quick" if quick else "")
    cache_dir = Path(cache) if cache else path_under(Path("runs") / "compare", suite.home, key="suite.name")
    # check every config before any work starts
    teacher_jobs = plan_teachers(suite, base, cache_dir, quick, tuned, sized)
    if quick:   # published teachers are restored from the zoo, not trained
        teacher_jobs = teachers_from_zoo(suite, teacher_jobs, log)
    teacher_dirs = {j.row: j.out for j in teacher_jobs}
    row_jobs, logits_jobs = _stored(suite, plan_rows(suite, base, cache_dir, quick, tuned, sized, teacher_dirs),
                                    teacher_jobs, cache_dir)
    synth_jobs = plan_synth(suite, base, cache_dir, teacher_dirs)   # data-free rows' train sets, after their teacher
    # pipeline rows (m2mKD): their stages as planned before the compatibility check is known (incubation included)
    pipe_plan = plan_pipelines(suite, base, cache_dir, quick, tuned, sized, teacher_jobs)
    needed = {d for j in row_jobs + pipe_plan for d in j.deps}
    while True:   # the teachers, stores and synthetic sets the rows read, and what those are made from
        more = {d for j in teacher_jobs + synth_jobs + logits_jobs if j.key in needed for d in j.deps} - needed
        if not more:
            break
        needed |= more
    teacher_jobs, synth_jobs = [j for j in teacher_jobs if j.key in needed], [j for j in synth_jobs if j.key in needed]
    check_jobs(teacher_jobs + synth_jobs + logits_jobs + row_jobs + pipe_plan)
    ensure_writable(cache_dir, "--cache")
    ensure_writable(out_dir, "--out")
    t0 = time.perf_counter()
    walls = execute(teacher_jobs + synth_jobs + logits_jobs + row_jobs, n_jobs, progress, log, train=not plan_seeds,
                    executor=runner)
    checks, pipe_jobs = {}, []
    if pipeline_rows(suite, quick):   # rows trained by stages: the check decides on incubation, then their jobs run
        checks = run_checks(suite, base, cache_dir, quick, teacher_jobs)
        for row, c in checks.items():
            log(f"{row}: compatibility check {'passed' if c['passed'] else 'failed'} (teacher {c['teacher_top1']:.2f}, "
                f"swapped {', '.join(f'{s:.2f}' for s in c['swapped_top1'])})")
        pipe_jobs = plan_pipelines(suite, base, cache_dir, quick, tuned, sized, teacher_jobs, checks)
        walls.update(execute(pipe_jobs, n_jobs, progress, log, done_before=[j.key for j in teacher_jobs + row_jobs],
                             train=not plan_seeds, executor=runner))
        row_jobs = row_jobs + [j for j in pipe_jobs if j.kind == "row"]
    recipe, seeds = recipe_of(suite, quick)
    meta = {"recipe": {**recipe, **sized}, "seeds": seeds, "tuned": tuned, "quick": quick, "executor": runner.name,
            "stored_logits": suite.stored_logits,
            "suite_file": str(path), "wall_s_total": time.perf_counter() - t0}
    costs = pipeline_costs(suite, pipe_jobs, teacher_jobs, row_jobs) if checks else {}
    results = summarize(suite, teacher_jobs, row_jobs, walls, meta, out_dir, log,
                        overrides=pipeline_overrides(costs, pipe_jobs + teacher_jobs, run_walls(out_dir, walls), seeds))
    if checks:
        atomic_write_text(out_dir / "pipelines.json", json.dumps({"checks": checks, "training_macs": costs}, indent=2))
    atomic_write_text(out_dir / "suite.yaml", _suite_text(path))
    atomic_write_text(out_dir / "resolved_configs.yaml",
                      yaml.safe_dump({j.key: j.raw for j in teacher_jobs + synth_jobs + logits_jobs + row_jobs + pipe_jobs},
                                     sort_keys=False))
    meta["wall_s_total"] = time.perf_counter() - t0
    write_timing(out_dir / "timing.json", walls, meta["wall_s_total"])
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
