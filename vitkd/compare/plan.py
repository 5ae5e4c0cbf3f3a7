"""Planning: a suite becomes jobs (teachers, tuning runs, rows x seeds) with their resolved configs,
dependencies and run folders; every job checked before any trains (what a job is, and what each kind of job
does: :mod:`.jobs`)."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Dict, List, Tuple


from ..config import ConfigError, parse_config, path_under, raw_teachers, read_config
from .jobs import Job, is_done, kind_of
from .suite import SuiteCfg

__all__ = ["Job", "recipe_of", "quick_rows", "plan_teachers", "plan_synth", "plan_rows", "row_folder", "check_jobs",
           "strip_checkpoints", "synth_dir", "build_key"]


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


def plan_teachers(suite: SuiteCfg, base: Path, cache: Path, quick: bool, tuned: Dict[str, Any],
                  sized: Dict[str, Any]) -> List[Job]:
    """Teacher jobs: the recipe at the tuned data size (``sized``), the tuned knobs for those marked
    ``tuned``, then the teachers' own settings. Quick mode trains the same teachers as the full suite
    unless it sets anything of its own."""
    recipe, _ = recipe_of(suite, quick)
    tdir = cache / ("teachers" + ("-quick" if quick and (suite.quick.set or suite.quick.teacher_set) else ""))
    out = {name: path_under(tdir, name, key=f"suite.teachers.{name}") for name in suite.teachers}
    jobs = []
    for name, t in suite.teachers.items():
        raw = read_config(t.config, base, recipe, sized, suite.teacher_set, suite.quick.teacher_set if quick else {},
                       tuned if t.tuned else {}, t.set)
        raw["seed"] = 0
        deps = []
        for key, src in t.distill_from.items():   # a teacher assistant distilled from a bigger teacher
            _set_teacher_checkpoint(raw, key, out[src])
            deps.append(f"teachers/{src}")
        jobs.append(Job(f"teachers/{name}", raw, out[name], deps, kind="teacher", row=name))
    return jobs


def plan_synth(suite: SuiteCfg, base: Path, cache: Path, teacher_dirs: Dict[str, Path]) -> List[Job]:
    """Synthetic train sets (``vitkd synthesize`` configs), each after the suite teacher it inverts."""
    jobs = []
    for name, sy in suite.synthetic.items():
        raw = read_config(sy.config, base, sy.set)
        raw.setdefault("teacher", {})["checkpoint"] = str(teacher_dirs[sy.teacher])
        jobs.append(Job(f"synth/{name}", raw, synth_dir(cache, name), [f"teachers/{sy.teacher}"],
                        kind="synth", row=name))
    return jobs


def synth_dir(cache: Path, name: str) -> Path:
    return path_under(cache / "synth", name, key=f"suite.synthetic.{name}")


def plan_rows(suite: SuiteCfg, base: Path, cache: Path, quick: bool, tuned: Dict[str, Any],
              sized: Dict[str, Any], teacher_dirs: Dict[str, Path]) -> List[Job]:
    """Row x seed jobs: the recipe, the tuned size and knobs, then the row's own settings. Quick mode's runs
    are the full suite's runs at its seeds (the same folders) unless it sets anything of its own."""
    recipe, seeds = recipe_of(suite, quick)
    rdir = cache / ("rows" + ("-quick" if quick and suite.quick.set else ""))
    jobs = []
    for r in quick_rows(suite, quick):
        if r.pipeline:   # its runs are planned stage by stage (vitkd.compare.m2mkd)
            continue
        for seed in seeds:
            raw = read_config(r.config or suite.student, base, recipe, sized, tuned, r.set)
            raw["seed"] = seed
            deps = []
            if r.synthetic is not None:   # a data-free row trains on a synthetic set of the suite
                raw.setdefault("data", {})["synthetic"] = str(synth_dir(cache, r.synthetic))
                deps.append(f"synth/{r.synthetic}")
            for key, t in r.teachers.items():
                _set_teacher_checkpoint(raw, key, teacher_dirs[t])
                deps.append(f"teachers/{t}")
            out = path_under(rdir, r.name, f"s{seed}", key=f"suite.rows.{r.name}")
            jobs.append(Job(f"rows/{r.name}/s{seed}", raw, out,
                            deps, kind="row", row=r.name, seed=seed))
    return jobs


def row_folder(cache: Path, row, seed: int) -> Path:
    """The run folder of a (non-quick) row's run at ``seed``: its own, or a pipeline row's last stage."""
    if row.pipeline:
        return path_under(cache / "pipelines", row.name, f"s{seed}", "student", key=f"suite.rows.{row.name}")
    return path_under(cache / "rows", row.name, f"s{seed}", key=f"suite.rows.{row.name}")


def check_jobs(jobs: List[Job]) -> None:
    """Every job's config is validated, and every one not finished in the cache is dry-built (its suite teachers
    built untrained from their configs), before any run trains: a row's bad term argument or model name fails
    here, in one line naming the run."""
    from ..engine.build import dry_build, planned_teachers
    cfgs = {}
    outs = {str(j.out) for j in jobs}
    runs = [j for j in jobs if kind_of(j).check is None]
    for j in runs:
        try:
            cfgs[j.key] = parse_config(strip_checkpoints(_strip_planned_data(j.raw, outs)))
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
        stripped, teachers = planned_teachers(_strip_planned_data(j.raw, outs), planned)
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


def _strip_planned_data(raw: dict, outs) -> dict:
    """A synthetic train set that a planned job writes does not exist yet: check the run on the real data."""
    data = raw.get("data") or {}
    if str(data.get("synthetic")) not in outs:
        return raw
    raw = copy.deepcopy(raw)
    raw["data"].pop("synthetic")
    return raw


def strip_checkpoints(raw: dict) -> dict:
    """Teacher checkpoints (and stores) do not exist before the teachers are trained: validate everything else."""
    raw = copy.deepcopy(raw)
    for t in raw_teachers(raw).values():
        if isinstance(t, dict):
            t.pop("checkpoint", None)
            t.pop("logits", None)
    return raw
