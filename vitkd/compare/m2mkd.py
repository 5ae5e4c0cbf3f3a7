"""Suite rows trained by a pipeline of stages (m2mKD) rather than by one run.

A row with ``pipeline: <file>`` (an ``m2mkd:`` pipeline, :mod:`vitkd.m2m_pipeline`) and ``teachers: {teacher:
<suite teacher>, meta: <suite teacher>}`` becomes jobs with dependencies: the teacher and the meta model are
ordinary suite teachers (cached, trained once); incubation stages (seed 0, shared by the seeds) run unless the
compatibility check passed; per seed, the M module jobs (independent, so they run in parallel), then the
row's run: the assembled student fine-tuned, a job of kind ``row`` like any other row's run. The student
config is the row's own (the suite's recipe, tuned knob and the row's ``set``), the schedules are the
pipeline's. Every job is an ordinary ``vitkd train`` run folder, so the executor, the cache and the
measurements treat them as they treat the others.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..config import ConfigError, path_under, read_config
from .jobs import Job
from .plan import quick_rows, recipe_of, row_folder
from .suite import SuiteCfg

__all__ = ["pipeline_rows", "plan_pipelines", "run_checks"]


def pipeline_rows(suite: SuiteCfg, quick: bool = False):
    return [r for r in quick_rows(suite, quick) if r.pipeline]


def _spec(suite: SuiteCfg, row, base: Path):
    from ..m2m_pipeline import load_pipeline
    p = Path(row.pipeline)
    spec, _ = load_pipeline(p if p.is_absolute() else base / p)
    for key in ("teacher", "meta"):
        if key not in row.teachers:
            raise ConfigError(f"suite.rows.{row.name}.teachers.{key}: a pipeline row names its {key} "
                              f"(a suite teacher)")
    return spec


def check_folder(cache: Path, row: str) -> Path:
    return path_under(cache / "pipelines", row, key=f"suite.rows.{row}")


def run_checks(suite: SuiteCfg, base: Path, cache: Path, quick: bool, teacher_jobs: List[Job]) -> Dict[str, dict]:
    """The compatibility check of every pipeline row (its teacher and meta model are trained by now),
    written beside the row's stages."""
    from ..io import atomic_write_json
    from ..m2m_pipeline import CHECK_FILE, check_of
    tdir = {j.row: j.out for j in teacher_jobs}
    out = {}
    for r in pipeline_rows(suite, quick):
        spec = _spec(suite, r, base)
        out[r.name] = check_of(tdir[r.teachers["meta"]], tdir[r.teachers["teacher"]], spec)
        atomic_write_json(check_folder(cache, r.name) / CHECK_FILE, out[r.name])
    return out


def plan_pipelines(suite: SuiteCfg, base: Path, cache: Path, quick: bool, tuned: Dict[str, Any],
                   sized: Dict[str, Any], teacher_jobs: List[Job],
                   checks: Optional[Dict[str, dict]] = None) -> List[Job]:
    """The jobs of every pipeline row. ``checks`` None (not known yet): incubation is planned (every job
    kind then gets checked before any trains)."""
    from ..m2m_pipeline import stage_configs
    recipe, seeds = recipe_of(suite, quick)
    teachers = {j.row: j for j in teacher_jobs}
    jobs: List[Job] = []
    for r in pipeline_rows(suite, quick):
        spec = _spec(suite, r, base)
        check = (checks or {}).get(r.name)
        incubate = check is None or not check["passed"]
        teacher_raw = copy.deepcopy(teachers[r.teachers["teacher"]].raw)
        for k in ("distill", "m2m"):
            teacher_raw.pop(k, None)
        pdir = check_folder(cache, r.name)
        shared = {"teacher": (teachers[r.teachers["teacher"]].out, f"teachers/{r.teachers['teacher']}"),
                  "meta": (teachers[r.teachers["meta"]].out, f"teachers/{r.teachers['meta']}")}
        seen = set()
        for seed in seeds:
            student_raw = read_config(r.config or suite.student, base, recipe, sized, tuned, r.set)
            student_raw["seed"] = seed

            def where(stage: str, seed=seed):
                if stage in shared:
                    return shared[stage]
                if stage.startswith("incubat"):
                    return path_under(pdir, stage, key=f"suite.rows.{r.name}"), f"pipelines/{r.name}/{stage}"
                if stage == "student":
                    return row_folder(cache, r, seed), f"rows/{r.name}/s{seed}"
                return (path_under(pdir, f"s{seed}", stage, key=f"suite.rows.{r.name}"),
                        f"pipelines/{r.name}/s{seed}/{stage}")

            for name, raw, reads in stage_configs(spec, teacher_raw, student_raw, incubate,
                                                  ref=lambda s: str(where(s)[0])):
                folder, key = where(name)
                if key in seen:
                    continue
                seen.add(key)
                final = name == "student"
                jobs.append(Job(key, raw, folder, [where(s)[1] for s in reads],
                                kind="row" if final else f"m2m_{name.rstrip('0123456789')}",
                                row=r.name if final else f"{r.name}/{name}", seed=seed if final else raw.get("seed")))
    return jobs


def pipeline_costs(suite: SuiteCfg, jobs: List[Job], teacher_jobs: List[Job], row_jobs: List[Job]) -> Dict[str, dict]:
    """Total training MACs of each pipeline row (one seed) and of its baseline row, stage by stage."""
    from ..m2m_pipeline import training_macs
    by_key = {j.key: j for j in jobs + teacher_jobs + row_jobs}
    out = {}
    for r in pipeline_rows(suite):
        seed = next(j.seed for j in jobs if j.row == r.name)
        keys = [f"teachers/{r.teachers['meta']}"] + [j.key for j in jobs if j.row.startswith(f"{r.name}/incubat")]
        keys += [j.key for j in jobs if j.row.startswith(f"{r.name}/module") and f"/s{seed}/" in j.key]
        keys += [f"rows/{r.name}/s{seed}"]
        stages = {k: training_macs(by_key[k].out) for k in keys if k in by_key}
        entry = {"stages": stages, "total_macs": sum(s["total_macs"] for s in stages.values()),
                 "note": "the teacher's own training is not counted (shared with every row that reads it)"}
        base = suite.baseline_of(r)
        if base and f"rows/{base}/s{seed}" in by_key:
            b = training_macs(by_key[f"rows/{base}/s{seed}"].out)
            entry["baseline"] = {"row": base, **b}
        out[r.name] = entry
    return out


def pipeline_overrides(costs: Dict[str, dict], jobs: List[Job], walls: Dict[str, float], seeds: List[int]
                       ) -> Dict[str, dict]:
    """What a pipeline row's line in the table shows for its whole pipeline rather than its last stage: the
    training MACs of every stage of one seed (meta model and incubation included) per train image and student
    epoch (module jobs' epochs + fine-tuning's), and the wall seconds of its stages per seed (the stages
    shared by the seeds, meta model and incubation, divided among them)."""
    out = {}
    for row, c in costs.items():
        stages = c["stages"]
        images = max((s["train_images"] for s in stages.values()), default=0)
        epochs = sum(s["epochs"] for k, s in stages.items() if "/module0" in k or k.startswith("rows/"))
        shared = sum(walls.get(k, 0.0) for k in stages if k.startswith("teachers/") or "/incubat" in k)
        per_seed = [walls.get(f"rows/{row}/s{s}", 0.0) + sum(walls.get(j.key, 0.0) for j in jobs
                    if j.key.startswith(f"pipelines/{row}/s{s}/")) for s in seeds]
        entry = {"wall_s_per_run": sum(per_seed) / max(1, len(seeds)) + shared / max(1, len(seeds))}
        if images and epochs:
            entry["train_mmacs_per_image"] = c["total_macs"] / (images * epochs) / 1e6
        out[row] = entry
    return out
