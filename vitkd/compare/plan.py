"""Planning: a suite becomes jobs with their resolved configs, dependencies and run folders, every kind of job
planning its own (:func:`plan_suite`; the kinds: :mod:`.jobs`); every job checked before any trains. The suite's
teachers and rows are the built-in kinds planned here."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import List, Tuple


from ..config import ConfigError, parse_config, path_under, raw_teachers, read_config
from .jobs import KINDS, Job, SuitePlan, is_done, kind_of, kinds_in_order, register_kind
from .suite import SuiteCfg

__all__ = ["Job", "SuitePlan", "recipe_of", "quick_rows", "plan_suite", "row_kind", "publishable", "row_folder",
           "check_jobs",
           "strip_checkpoints", "build_key", "set_term_param", "terms_of_type"]


def _set_teacher_checkpoint(raw: dict, key: str, run_dir: Path) -> None:
    """Point the run config's teacher ``key`` at a suite teacher's run folder."""
    raw.setdefault("distill", {}).setdefault("teachers", {}).setdefault(key, {})["checkpoint"] = str(run_dir)


def recipe_of(suite: SuiteCfg, quick: bool) -> Tuple[dict, List[int]]:
    recipe = dict(suite.set)
    if quick:
        recipe.update(suite.quick.set)
        return recipe, list(suite.quick.seeds)
    return recipe, list(suite.seeds)


def quick_rows(suite: SuiteCfg, quick: bool) -> list:
    """The rows a run of the suite trains: quick mode's subset when it names one."""
    if quick and suite.quick.rows:
        keep = set(suite.quick.rows)
        return [r for r in suite.rows if r.name in keep]
    return list(suite.rows)


def plan_suite(plan: SuitePlan) -> List[Job]:
    """Every kind plans its jobs, in order; then the jobs no running job reads are dropped (teachers of rows quick
    mode skips, ...). Returns the jobs to run first (``plan.jobs``); ``plan.checked_only`` holds those planned to
    be checked only."""
    for kind in kinds_in_order():
        if kind.plan is not None:
            kind.plan(plan)
    needed = {j.key for j in plan.jobs + plan.checked_only if not kind_of(j).only_if_read}
    needed |= {d for j in plan.jobs + plan.checked_only if j.key in needed for d in j.deps}
    while True:   # what the running jobs read, and what those are made from
        more = {d for j in plan.jobs if j.key in needed for d in j.deps} - needed
        if not more:
            break
        needed |= more
    plan.jobs = [j for j in plan.jobs if j.key in needed]
    return plan.jobs


def row_kind(row) -> str:
    """The kind whose jobs train a suite row: a registered kind that uses it, else the plain row."""
    return next((k.name for k in kinds_in_order() if k.trains_row is not None and k.trains_row(row)), "row")


def publishable(row) -> bool:
    """Whether a suite row's own run config reproduces it: no registered kind that touches the row says it
    reads what only that kind's jobs make (``JobKind.publishable``)."""
    return all(k.publishable or k.touches_row is None or not k.touches_row(row) for k in kinds_in_order())


def _plan_teachers(plan: SuitePlan) -> None:
    """Teacher jobs: the recipe at the tuned data size (``sized``), the tuned knobs for those marked
    ``tuned``, then the teachers' own settings. Quick mode trains the same teachers as the full suite
    unless it sets anything of its own."""
    suite, base, cache, quick, tuned, sized = plan.suite, plan.base, plan.cache, plan.quick, plan.tuned, plan.sized
    recipe, _ = recipe_of(suite, quick)
    tdir = cache / ("teachers" + ("-quick" if quick and (suite.quick.set or suite.quick.teacher_set) else ""))
    out = {name: path_under(tdir, name, key=f"suite.teachers.{name}") for name in suite.teachers}
    jobs = []
    for name, t in suite.teachers.items():
        if t.zoo is not None:   # restored by the zoo kind (:mod:`.from_zoo`)
            continue
        raw = read_config(t.config, base, recipe, sized, suite.teacher_set, suite.quick.teacher_set if quick else {},
                       tuned if t.tuned else {}, t.set)
        raw["seed"] = 0
        deps = []
        for key, src in t.distill_from.items():   # a teacher assistant distilled from a bigger teacher
            _set_teacher_checkpoint(raw, key, out[src])
            deps.append(f"teachers/{src}")
        jobs.append(Job(f"teachers/{name}", raw, out[name], deps, kind="teacher", row=name, role="teacher"))
    plan.jobs.extend(jobs)


def _plan_rows(plan: SuitePlan) -> None:
    """Row x seed jobs: the recipe, the tuned size and knobs, then the row's own settings. Quick mode's runs
    are the full suite's runs at its seeds (the same folders) unless it sets anything of its own. Rows another
    kind trains (:func:`row_kind`) are planned by that kind."""
    suite, base, cache, quick, tuned, sized = plan.suite, plan.base, plan.cache, plan.quick, plan.tuned, plan.sized
    teacher_dirs = plan.teacher_dirs
    recipe, seeds = recipe_of(suite, quick)
    rdir = cache / ("rows" + ("-quick" if quick and suite.quick.set else ""))
    jobs = []
    for r in quick_rows(suite, quick):
        if row_kind(r) != "row":   # planned by the kind that trains it
            continue
        for seed in seeds:
            raw = read_config(r.config or suite.student, base, recipe, sized, tuned, r.set)
            for k in plan.row_knobs.get(r.sweep_of or r.name, ()):
                set_term_param(raw, k["term"], k["param"], k["value"], f"suite.rows.{r.name}")
            raw["seed"] = seed
            deps = []
            for key, t in r.teachers.items():
                _set_teacher_checkpoint(raw, key, teacher_dirs[t])
                deps.append(f"teachers/{t}")
            out = path_under(rdir, r.name, f"s{seed}", key=f"suite.rows.{r.name}")
            jobs.append(Job(f"rows/{r.name}/s{seed}", raw, out,
                            deps, kind="row", row=r.name, seed=seed, role="row"))
    plan.jobs.extend(jobs)


def terms_of_type(raw: dict, term: str) -> List[dict]:
    """The loss terms of type ``term`` in a run config, in order."""
    return [t for t in (raw.get("distill") or {}).get("terms") or [] if isinstance(t, dict) and t.get("type") == term]


def set_term_param(raw: dict, term: str, param: str, value, where: str) -> None:
    """Set ``param`` of every loss term of type ``term`` in a run config (a family's tuned knob)."""
    terms = terms_of_type(raw, term)
    if not terms:
        raise ConfigError(f"{where}: no loss term of type '{term}' to set {param} on")
    for t in terms:
        t[param] = value


def row_folder(cache: Path, row, seed: int) -> Path:
    """The run folder of a (non-quick) row's run at ``seed``: its own, or the one the kind that trains it names."""
    kind = KINDS[row_kind(row)]
    if kind.row_folder is not None:
        return kind.row_folder(cache, row, seed)
    return path_under(cache / "rows", row.name, f"s{seed}", key=f"suite.rows.{row.name}")


def check_jobs(jobs: List[Job]) -> None:
    """Every job's config is validated, and every one not finished in the cache is dry-built (its suite teachers
    built untrained from their configs), before any run trains: a row's bad term argument or model name fails
    here, in one line naming the run."""
    from ..engine.build import dry_build, planned_teachers
    cfgs = {}
    keys = {j.key for j in jobs}
    runs = [j for j in jobs if kind_of(j).check is None]
    for j in runs:
        try:
            cfgs[j.key] = parse_config(strip_checkpoints(_strip_planned_inputs(j, keys)))
        except ConfigError as e:
            raise ConfigError(f"suite {j.key}: {e}") from None
    planned = {str(j.out): cfgs[j.like or j.key] for j in runs}
    for j in jobs:
        if kind_of(j).check is not None:
            try:
                kind_of(j).check(j, planned)
            except ConfigError as e:
                raise ConfigError(f"suite {j.key}: {e}") from None
    built = set()
    for j in runs:
        stripped, teachers = planned_teachers(_strip_planned_inputs(j, keys), planned)
        key = build_key(stripped)
        if key in built or is_done(j):
            continue
        built.add(key)
        try:
            dry_build(parse_config(stripped), teachers)
        except ConfigError as e:
            raise ConfigError(f"suite {j.key}: {e}") from None


def build_key(raw: dict) -> str:
    """What decides a dry build of a raw config: the config without its seed (seeds build the same)."""
    return json.dumps({**raw, "seed": None}, sort_keys=True, default=str)


def _strip_planned_inputs(job: Job, keys) -> dict:
    """A job's config without the inputs (``job.planned_inputs``) that a planned job writes and that do not exist
    yet (e.g. a train set to be synthesized): the run is checked without them (on the dataset's own split)."""
    missing = [k for k, writer in job.planned_inputs.items() if writer in keys]
    if not missing:
        return job.raw
    raw = copy.deepcopy(job.raw)
    for dotted in missing:
        *parents, last = dotted.split(".")
        node = raw
        for p in parents:
            node = node.get(p) or {}
        node.pop(last, None)
    return raw


def strip_checkpoints(raw: dict) -> dict:
    """Teacher checkpoints (and any other folder a teacher is read from) do not exist before the teachers are
    trained: validate everything else."""
    from ..config import TeacherCfg, path_keys
    raw = copy.deepcopy(raw)
    teacher_paths = path_keys(TeacherCfg)
    for t in raw_teachers(raw).values():
        if isinstance(t, dict):
            for key in teacher_paths:
                t.pop(key, None)
    return raw


# the built-in kinds: the suite's teachers (planned first) and its plain rows
register_kind("teacher", plan=_plan_teachers, only_if_read=True, order=0)
register_kind("row", plan=_plan_rows, order=20)
