"""Planning: a suite becomes jobs (teachers, tuning runs, rows x seeds) with their resolved configs,
dependencies and run folders; which jobs are already finished; every job checked before any trains."""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple


from ..config import ConfigError, apply_mapping, parse_config, read_yaml, to_dict
from ..rundir import RunDir
from .suite import SuiteCfg


@dataclass
class Job:
    key: str                       # unique id: teachers/<name>, tune/<value>, rows/<row>/s<seed>
    raw: dict                      # the resolved config mapping
    out: Path
    deps: List[str] = field(default_factory=list)
    kind: str = "row"
    row: Optional[str] = None
    seed: Optional[int] = None


def _resolve(config: str, base: Path, *sets: Dict[str, Any]) -> dict:
    p = (base / config) if not Path(config).is_absolute() else Path(config)
    raw = read_yaml(p)
    for s in sets:
        raw = apply_mapping(raw, s)
    return raw


def _set_teacher_checkpoint(raw: dict, key: str, run_dir: Path) -> None:
    """Point the run config's teacher ``key`` at a suite teacher's run folder."""
    raw.setdefault("distill", {}).setdefault("teachers", {}).setdefault(key, {})["checkpoint"] = str(run_dir)


def recipe_of(suite: SuiteCfg, quick: bool) -> Tuple[dict, List[int]]:
    recipe = dict(suite.set)
    if quick:
        recipe.update(suite.quick.set)
        return recipe, list(suite.quick.seeds)
    return recipe, list(suite.seeds)


def _tag(quick: bool) -> str:
    return "-quick" if quick else ""


def plan_teachers(suite: SuiteCfg, base: Path, cache: Path, quick: bool,
                  tuned: Optional[Dict[str, Any]] = None) -> List[Job]:
    """Teacher jobs; those marked ``tuned`` get the tuned knob (``tuned`` None: not known yet)."""
    recipe, _ = recipe_of(suite, quick)
    out = {name: cache / f"teachers{_tag(quick)}" / name for name in suite.teachers}
    jobs = []
    for name, t in suite.teachers.items():
        raw = _resolve(t.config, base, recipe, suite.teacher_set, suite.quick.teacher_set if quick else {}, t.set,
                       (tuned or {}) if t.tuned else {})
        raw["seed"] = 0
        deps = []
        for key, src in t.distill_from.items():   # a teacher assistant distilled from a bigger teacher
            _set_teacher_checkpoint(raw, key, out[src])
            deps.append(f"teachers/{src}")
        jobs.append(Job(f"teachers/{name}", raw, out[name], deps, kind="teacher", row=name))
    return jobs


def plan_tune(suite: SuiteCfg, base: Path, cache: Path, quick: bool) -> List[Job]:
    if not suite.tune or not suite.tune.values or (quick and not suite.quick.tune):
        return []
    recipe, _ = recipe_of(suite, quick)
    jobs = []
    for v in suite.tune.values:
        raw = _resolve(suite.student, base, recipe, {suite.tune.key: v})
        raw["seed"] = suite.tune.seed
        jobs.append(Job(f"tune/{v}", raw, cache / f"tune{_tag(quick)}" / _safe(str(v)), kind="tune", row=str(v)))
    return jobs


def plan_rows(suite: SuiteCfg, base: Path, cache: Path, quick: bool, tuned: Dict[str, Any]) -> List[Job]:
    recipe, seeds = recipe_of(suite, quick)
    recipe = {**recipe, **tuned}
    tdir = cache / f"teachers{_tag(quick)}"
    jobs = []
    for r in suite.rows:
        if r.pipeline:   # its runs are planned stage by stage (vitkd.compare.pipelines)
            continue
        for seed in seeds:
            raw = _resolve(r.config or suite.student, base, recipe, r.set)
            raw["seed"] = seed
            deps = []
            for key, t in r.teachers.items():
                _set_teacher_checkpoint(raw, key, tdir / t)
                deps.append(f"teachers/{t}")
            jobs.append(Job(f"rows/{r.name}/s{seed}", raw, cache / f"rows{_tag(quick)}" / r.name / f"s{seed}",
                            deps, kind="row", row=r.name, seed=seed))
    return jobs


def _safe(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in s)


def _job_config(job: Job) -> Optional[dict]:
    """The validated config a job trains (None while a teacher it reads does not exist yet)."""
    raw = copy.deepcopy(job.raw)
    raw.setdefault("train", {})["progress"] = False
    try:
        cfg = parse_config(raw)
    except ConfigError:
        return None
    cfg.train.threads = None   # the worker's thread count stands (not a result key)
    return to_dict(cfg)


def _is_done(job: Job) -> bool:
    """A finished run of exactly this config, vitkd version and behaviour version (the run folder's one
    reuse rule): teachers and rows are cached across invocations."""
    want = _job_config(job)
    return want is not None and RunDir(job.out).matches(want)


def check_jobs(jobs: List[Job]) -> None:
    """Every job's config is validated, and every one not finished in the cache is dry-built (its suite teachers
    built untrained from their configs), before any run trains: a row's bad term argument or model name fails
    here, in one line naming the run."""
    from ..engine.build import dry_build, planned_teachers
    cfgs = {}
    for j in jobs:
        try:
            cfgs[j.key] = parse_config(_strip_checkpoints(j.raw))
        except ConfigError as e:
            raise ConfigError(f"suite {j.key}: {e}") from None
    planned = {str(j.out): cfgs[j.key] for j in jobs}
    built = set()
    for j in jobs:
        stripped, teachers = planned_teachers(j.raw, planned)
        key = json.dumps({**stripped, "seed": None}, sort_keys=True, default=str)   # seeds build the same
        if key in built or _is_done(j):
            continue
        built.add(key)
        try:
            dry_build(parse_config(stripped), teachers)
        except ConfigError as e:
            raise ConfigError(f"suite {j.key}: {e}") from None


def _strip_checkpoints(raw: dict) -> dict:
    """Teacher checkpoints do not exist before the teachers are trained: validate everything else."""
    raw = copy.deepcopy(raw)
    for t in ((raw.get("distill") or {}).get("teachers") or {}).values():
        if isinstance(t, dict):
            t.pop("checkpoint", None)
    return raw
