"""Suite rows trained by a pipeline of stages (m2mKD) rather than by one run: the job kind ``pipeline``.

A row with ``pipeline: <file>`` (an ``m2mkd:`` pipeline, :mod:`.pipeline`) and ``teachers: {teacher: <suite
teacher>, meta: <suite teacher>}`` becomes jobs with dependencies: the teacher and the meta model are ordinary
suite teachers (cached, trained once); incubation stages (seed 0, shared by the seeds) run unless the compatibility
check passed; per seed, the M module jobs (independent, so they run in parallel), then the row's run: the assembled
student fine-tuned, a line of the table like any other row's run. The student config is the row's own (the suite's
recipe, tuned knob and the row's ``set``), the schedules are the pipeline's. Every job is an ordinary ``vitkd
train`` run folder, so the executor, the cache and the measurements treat them as they treat the others; each
names its stage and phase (``Job.stage``, ``Job.phase``).

Planning has two steps: before anything runs, every stage is planned with incubation (so every config is
checked); once the teachers are trained, the check decides, and the stages are planned again and run
(:func:`_after`). The row's line then shows its whole pipeline's cost (:func:`pipeline_overrides`).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, List, Optional

from ...compare.jobs import Job, SuitePlan, register_kind
from ...compare.plan import quick_rows, recipe_of
from ...compare.suite import RowSpec, SuiteCfg
from ...config import ConfigError, path_under, read_config, register_section, section
from .config import SECTION
from .pipeline import FINETUNE, INCUBATION, MODULE

__all__ = ["pipeline_rows", "plan_pipelines", "run_checks", "pipeline_costs", "pipeline_overrides", "KIND", "ROW_KEY"]

KIND = "pipeline"
ROW_KEY = "pipeline"   # a row's pipeline file


def _file(row) -> Optional[str]:
    return section(row, ROW_KEY)


def pipeline_rows(suite: SuiteCfg, quick: bool = False):
    return [r for r in quick_rows(suite, quick) if _file(r)]


def _spec(suite: SuiteCfg, row, base: Path):
    from .pipeline import load_pipeline
    p = Path(_file(row))
    spec, _ = load_pipeline(p if p.is_absolute() else base / p)
    for key in ("teacher", "meta"):
        if key not in row.teachers:
            raise ConfigError(f"suite.rows.{row.name}.teachers.{key}: a pipeline row names its {key} "
                              f"(a suite teacher)")
    return spec


def check_folder(cache: Path, row: str) -> Path:
    return path_under(cache / "pipelines", row, key=f"suite.rows.{row}")


def final_folder(cache: Path, row, seed: int) -> Path:
    """The run folder of a pipeline row's last stage (its fine-tuned student) at ``seed``."""
    return path_under(cache / "pipelines", row.name, f"s{seed}", "student", key=f"suite.rows.{row.name}")


def run_checks(suite: SuiteCfg, base: Path, cache: Path, quick: bool, teacher_jobs: List[Job]) -> Dict[str, dict]:
    """The compatibility check of every pipeline row (its teacher and meta model are trained by now),
    written beside the row's stages."""
    from ...io import atomic_write_json
    from .pipeline import CHECK_FILE, check_of
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
    from .pipeline import stage_configs
    recipe, seeds = recipe_of(suite, quick)
    teachers = {j.row: j for j in teacher_jobs}
    jobs: List[Job] = []
    for r in pipeline_rows(suite, quick):
        spec = _spec(suite, r, base)
        check = (checks or {}).get(r.name)
        incubate = check is None or not check["passed"]
        teacher_raw = copy.deepcopy(teachers[r.teachers["teacher"]].raw)
        for k in ("distill", SECTION):
            teacher_raw.pop(k, None)
        pdir = check_folder(cache, r.name)
        shared = {"teacher": (teachers[r.teachers["teacher"]].out, f"teachers/{r.teachers['teacher']}"),
                  "meta": (teachers[r.teachers["meta"]].out, f"teachers/{r.teachers['meta']}")}
        stages = {}
        for seed in seeds:
            student_raw = read_config(r.config or suite.student, base, recipe, sized, tuned, r.set)
            student_raw["seed"] = seed
            stages = {name: phase for name, _, _, phase in stage_configs(spec, {}, {}, incubate)}

            def where(stage: str, seed=seed):
                if stage in shared:
                    return shared[stage]
                if stages[stage] == INCUBATION:   # shared by the seeds
                    return path_under(pdir, stage, key=f"suite.rows.{r.name}"), f"pipelines/{r.name}/{stage}"
                if stages[stage] == FINETUNE:
                    return final_folder(cache, r, seed), f"rows/{r.name}/s{seed}"
                return (path_under(pdir, f"s{seed}", stage, key=f"suite.rows.{r.name}"),
                        f"pipelines/{r.name}/s{seed}/{stage}")

            for name, raw, reads, phase in stage_configs(spec, teacher_raw, student_raw, incubate,
                                                         ref=lambda s: str(where(s)[0])):
                folder, key = where(name)
                if any(j.key == key for j in jobs):
                    continue
                final = phase == FINETUNE
                jobs.append(Job(key, raw, folder, [where(s)[1] for s in reads], kind=KIND, row=r.name,
                                seed=seed if final or phase == MODULE else raw.get("seed"),
                                role="row" if final else None, stage=name, phase=phase))
    return jobs


def pipeline_costs(suite: SuiteCfg, jobs: List[Job], teacher_jobs: List[Job], row_jobs: List[Job]) -> Dict[str, dict]:
    """Total training MACs of each pipeline row (one seed) and of its baseline row, stage by stage."""
    from .pipeline import training_macs
    by_key = {j.key: j for j in jobs + teacher_jobs + row_jobs}
    out = {}
    for r in pipeline_rows(suite):
        mine = [j for j in jobs if j.row == r.name]
        seed = next(j.seed for j in mine if j.role == "row")
        keys = [f"teachers/{r.teachers['meta']}"] + [j.key for j in mine if j.phase == INCUBATION]
        keys += [j.key for j in mine if j.phase in (MODULE, FINETUNE) and j.seed == seed]
        stages = {k: {**training_macs(by_key[k].out), "phase": by_key[k].phase} for k in keys if k in by_key}
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
    epoch (one module job's epochs, as the module jobs run side by side, + fine-tuning's), and the wall seconds of
    its stages per seed (the stages shared by the seeds, meta model and incubation, divided among them)."""
    out = {}
    for row, c in costs.items():
        stages = c["stages"]
        images = max((s["train_images"] for s in stages.values()), default=0)
        module = [s["epochs"] for s in stages.values() if s.get("phase") == MODULE][:1]
        epochs = sum(module) + sum(s["epochs"] for s in stages.values() if s.get("phase") == FINETUNE)
        shared = sum(walls.get(k, 0.0) for k, s in stages.items() if s.get("phase") in (None, INCUBATION))
        per_seed = [sum(walls.get(j.key, 0.0) for j in jobs if j.row == row and j.seed == s
                        and j.phase in (MODULE, FINETUNE)) for s in seeds]
        entry = {"wall_s_per_run": sum(per_seed) / max(1, len(seeds)) + shared / max(1, len(seeds))}
        if images and epochs:
            entry["train_mmacs_per_image"] = c["total_macs"] / (images * epochs) / 1e6
        out[row] = entry
    return out


# ---------------------------------------------------------------------- the job kind's hooks
def _plan(plan: SuitePlan) -> None:
    """Before anything runs: every stage, incubation included, to be checked (not run yet)."""
    plan.checked_only.extend(plan_pipelines(plan.suite, plan.base, plan.cache, plan.quick, plan.tuned, plan.sized,
                                            plan.with_role("teacher")))


def _after(plan: SuitePlan, execute) -> None:
    """The teachers are trained: the compatibility check decides on incubation, then the stages run."""
    if not pipeline_rows(plan.suite, plan.quick):
        return
    teachers = plan.with_role("teacher")
    checks = run_checks(plan.suite, plan.base, plan.cache, plan.quick, teachers)
    for row, c in checks.items():
        plan.log(f"{row}: compatibility check {'passed' if c['passed'] else 'failed'} (teacher "
                 f"{c['teacher_top1']:.2f}, swapped {', '.join(f'{s:.2f}' for s in c['swapped_top1'])})")
    jobs = plan_pipelines(plan.suite, plan.base, plan.cache, plan.quick, plan.tuned, plan.sized, teachers, checks)
    execute(jobs)
    plan.jobs.extend(jobs)
    plan.files["pipelines.json"] = {"checks": checks}


def _finish(plan: SuitePlan, walls: Dict[str, float]) -> None:
    """The rows' whole-pipeline costs: in the table and in ``pipelines.json``."""
    if "pipelines.json" not in plan.files:
        return
    jobs = [j for j in plan.jobs if j.kind == KIND]
    costs = pipeline_costs(plan.suite, jobs, plan.with_role("teacher"), [j for j in plan.with_role("row")
                                                                         if j.kind != KIND])
    _, seeds = recipe_of(plan.suite, plan.quick)
    plan.overrides.update(pipeline_overrides(costs, jobs + plan.with_role("teacher"), walls, seeds))
    plan.files["pipelines.json"]["training_macs"] = costs


register_section(RowSpec, ROW_KEY, Optional[str])
register_kind(KIND, plan=_plan, after=_after, finish=_finish, trains_row=lambda r: bool(_file(r)),
              row_folder=final_folder, touches_row=lambda r: bool(_file(r)), sweeps=False, order=50)
