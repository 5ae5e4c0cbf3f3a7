"""Planning: a suite becomes jobs (teachers, tuning runs, rows x seeds) with their resolved configs,
dependencies and run folders; which jobs are already finished; every job checked before any trains."""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple


from ..config import ConfigError, apply_mapping, parse_config, path_under, read_yaml, to_dict
from ..rundir import RunDir
from .suite import SuiteCfg


@dataclass
class Job:
    key: str                       # unique id: teachers/<name>, tune/<digest>/s<seed>, rows/<row>/s<seed>
    raw: dict                      # the resolved config mapping
    out: Path
    deps: List[str] = field(default_factory=list)
    kind: str = "row"
    row: Optional[str] = None
    seed: Optional[int] = None
    like: Optional[str] = None     # the job whose config builds the model this job's output stands for (a store:
                                   # its teacher's job), so runs that read the output can be dry-built before it exists
    source: Optional[str] = None   # where the output comes from when it is not computed here (a zoo entry's name)
    args: Dict[str, Any] = field(default_factory=dict)   # its runner's arguments beyond the config (a store's K)


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
        raw = _resolve(t.config, base, recipe, sized, suite.teacher_set, suite.quick.teacher_set if quick else {},
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
        raw = _resolve(sy.config, base, sy.set)
        raw.setdefault("teacher", {})["checkpoint"] = str(teacher_dirs[sy.teacher])
        jobs.append(Job(f"synth/{name}", raw, _synth_dir(cache, name), [f"teachers/{sy.teacher}"],
                        kind="synth", row=name))
    return jobs


def _synth_dir(cache: Path, name: str) -> Path:
    return path_under(cache / "synth", name, key=f"suite.synthetic.{name}")


def plan_rows(suite: SuiteCfg, base: Path, cache: Path, quick: bool, tuned: Dict[str, Any],
              sized: Dict[str, Any], teacher_dirs: Dict[str, Path]) -> List[Job]:
    """Row x seed jobs: the recipe, the tuned size and knobs, then the row's own settings. Quick mode's runs
    are the full suite's runs at its seeds (the same folders) unless it sets anything of its own."""
    recipe, seeds = recipe_of(suite, quick)
    rdir = cache / ("rows" + ("-quick" if quick and suite.quick.set else ""))
    jobs = []
    for r in quick_rows(suite, quick):
        if r.pipeline:   # its runs are planned stage by stage (vitkd.compare.pipelines)
            continue
        for seed in seeds:
            raw = _resolve(r.config or suite.student, base, recipe, sized, tuned, r.set)
            raw["seed"] = seed
            deps = []
            if r.synthetic is not None:   # a data-free row trains on a synthetic set of the suite
                raw.setdefault("data", {})["synthetic"] = str(_synth_dir(cache, r.synthetic))
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


def _run_is_done(job: Job) -> bool:
    """A finished run of exactly this config, vitkd version and behaviour version (the run folder's one
    reuse rule): teachers and rows are cached across invocations."""
    want = _job_config(job)
    return want is not None and RunDir(job.out).matches(want)


def _synth_is_done(job: Job) -> bool:
    """A complete synthetic set of this teacher's weights and these settings (its fingerprint)."""
    from ..synth import parse_synth_config
    from ..synth.run import is_synthesized
    try:
        cfg = parse_synth_config(copy.deepcopy(job.raw))
    except ConfigError:   # the teacher is not trained yet
        return False
    return is_synthesized(cfg, job.out)


def _check_synth(job: Job, planned: Dict[str, Any]) -> None:
    from ..synth import parse_synth_config
    raw = copy.deepcopy(job.raw)
    if str(Path((raw.get("teacher") or {}).get("checkpoint", ""))) in planned:
        raw["teacher"].pop("checkpoint")
    parse_synth_config(raw)


# job kind -> (is it done in the cache?, check its config before anything runs); kinds not named here are
# training runs (teachers, tuning, rows). The runner of each kind is in run.RUNNERS. Modules that add a kind
# register it in these maps (vitkd.compare.stored: stored-logits jobs).
DONE_CHECKS: Dict[str, Callable[[Job], bool]] = {"synth": _synth_is_done}
CONFIG_CHECKS: Dict[str, Callable[[Job, Dict[str, Any]], None]] = {"synth": _check_synth}


def _is_done(job: Job) -> bool:
    return DONE_CHECKS.get(job.kind, _run_is_done)(job)


def check_jobs(jobs: List[Job]) -> None:
    """Every job's config is validated, and every one not finished in the cache is dry-built (its suite teachers
    built untrained from their configs), before any run trains: a row's bad term argument or model name fails
    here, in one line naming the run."""
    from ..engine.build import dry_build, planned_teachers
    cfgs = {}
    outs = {str(j.out) for j in jobs}
    runs = [j for j in jobs if j.kind not in CONFIG_CHECKS]
    for j in runs:
        try:
            cfgs[j.key] = parse_config(_strip_checkpoints(_strip_planned_data(j.raw, outs)))
        except ConfigError as e:
            raise ConfigError(f"suite {j.key}: {e}") from None
    planned = {str(j.out): cfgs[j.like or j.key] for j in runs}
    for j in jobs:
        if j.kind in CONFIG_CHECKS:
            try:
                CONFIG_CHECKS[j.kind](j, planned)
            except ConfigError as e:
                raise ConfigError(f"suite {j.key}: {e}") from None
    built = set()
    for j in runs:
        stripped, teachers = planned_teachers(_strip_planned_data(j.raw, outs), planned)
        key = json.dumps({**stripped, "seed": None}, sort_keys=True, default=str)   # seeds build the same
        if key in built or _is_done(j):
            continue
        built.add(key)
        try:
            dry_build(parse_config(stripped), teachers)
        except ConfigError as e:
            raise ConfigError(f"suite {j.key}: {e}") from None


def _strip_planned_data(raw: dict, outs) -> dict:
    """A synthetic train set that a planned job writes does not exist yet: check the run on the real data."""
    data = raw.get("data") or {}
    if str(data.get("synthetic")) not in outs:
        return raw
    raw = copy.deepcopy(raw)
    raw["data"].pop("synthetic")
    return raw


def _strip_checkpoints(raw: dict) -> dict:
    """Teacher checkpoints (and stores) do not exist before the teachers are trained: validate everything else."""
    raw = copy.deepcopy(raw)
    for t in ((raw.get("distill") or {}).get("teachers") or {}).values():
        if isinstance(t, dict):
            t.pop("checkpoint", None)
            t.pop("logits", None)
    return raw
