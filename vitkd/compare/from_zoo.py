"""Quick mode's teachers from the model zoo: a suite teacher the run cache lacks, whose published zoo entry
was trained with exactly the planned config, is restored into its run folder instead of being trained.

The entry is the one ``vitkd zoo publish-suite`` names after the suite and the teacher (``<suite>-teacher-<name>``,
citing that teacher's row). The worker downloads it (size and sha256 verified, :mod:`vitkd.zoo.fetch`), compares the
training config shipped with it with the planned one (the run folder's reuse digest), and, when they agree,
writes a run folder from it: the planned config, the published weights (byte for byte), the curve and the
suite figures it cites as metrics, and a stamp naming the entry (``restored_from_zoo``). Anything that reads
the teacher (stores of logits, rows) then sees an ordinary finished run, so a quick row's config, and its
result, are those of the full suite's seed-0 run. When the configs differ (a changed recipe), the teacher is
trained as usual.
"""
from __future__ import annotations

import copy
from typing import List

from ..config import ConfigError, parse_config, path_under, to_dict
from ..rundir import RunDir, config_digest
from .jobs import Job, SuitePlan, is_done, job_config, register_kind, run_is_done, train_job
from .publish import zoo_name

__all__ = ["teachers_from_zoo", "KIND"]

KIND = "zoo_teacher"


def _entry_for(index, home: str, teacher: str):
    name = zoo_name(home, "teacher", teacher)
    return next((e for e in index.models if e.name == name and e.suite is not None and e.suite.row == teacher), None)


def _plan_zoo_teachers(plan: SuitePlan) -> None:
    """The suite teachers declared ``{zoo: ENTRY}``: restore jobs in every mode, the entry's shipped training config
    as the run's config (so the restore never trains; its run folder reads like a finished run)."""
    from ..zoo.load import entry_config, model_folder
    for name, t in plan.suite.teachers.items():
        if t.zoo is None:
            continue
        try:
            entry, folder = model_folder(t.zoo, log=plan.log)
            raw = to_dict(parse_config(entry_config(entry, folder), paths=False))
        except ConfigError as e:
            raise ConfigError(f"suite.teachers.{name}.zoo: {e}") from None
        out = path_under(plan.cache / "teachers", name, key=f"suite.teachers.{name}")
        plan.jobs.append(Job(f"teachers/{name}", raw, out, [], kind=KIND, row=name, role="teacher", source=t.zoo))


def _plan_restores(plan: SuitePlan) -> None:
    """Teachers declared ``{zoo: ENTRY}`` are restored from it (:func:`_plan_zoo_teachers`); in quick mode, the
    teacher jobs the cache lacks and the zoo publishes become restores too (:func:`teachers_from_zoo`)."""
    _plan_zoo_teachers(plan)
    if plan.quick:
        teachers = {j.key for j in plan.with_role("teacher")}
        restored = {j.key: j for j in teachers_from_zoo(plan.suite, plan.with_role("teacher"), plan.log)}
        plan.jobs = [restored[j.key] if j.key in teachers else j for j in plan.jobs]


def teachers_from_zoo(suite, teacher_jobs: List[Job], log=print) -> List[Job]:
    """The teacher jobs; those the cache lacks and the zoo publishes become restores (kind ``zoo_teacher``, the
    entry's name in ``job.source``)."""
    from ..zoo.index import load_index
    try:
        index = load_index()
    except ConfigError:   # no index reachable: train as usual
        return teacher_jobs
    out = []
    for j in teacher_jobs:
        entry = None if j.deps or j.kind == KIND or is_done(j) else _entry_for(index, suite.home, j.row)
        if entry is None:
            out.append(j)
            continue
        j = copy.copy(j)
        j.kind, j.source = KIND, entry.name
        log(f"teacher {j.row}: from the zoo ({entry.name}) unless its config changed")
        out.append(j)
    return out


def _restore(job: Job) -> None:
    from ..io import atomic_write_bytes
    from ..zoo.load import entry_config, model_folder
    from ..zoo.publish import weights_name
    want = job_config(job)
    entry, folder = model_folder(job.source)
    shipped = to_dict(parse_config(entry_config(entry, folder), paths=False))
    if config_digest(shipped) != config_digest(want):   # the recipe changed since it was published: train it
        train_job(job)
        return
    run = RunDir(job.out)
    run.clear()
    run.path.mkdir(parents=True, exist_ok=True)
    run.write_config(want)
    atomic_write_bytes(run.weights_path, (folder / weights_name()).read_bytes())
    figs = entry.suite.figures if entry.suite else {}
    n = max(1, len(entry.curve))
    wall = float(figs.get("wall_s") or 0.0)
    history = [{"epoch": int(e), "train_loss": float(loss), "epoch_time_s": wall / n,
                **({} if v is None else {"val_top1": float(v)})} for e, loss, v in entry.curve]
    if history:
        history[-1].update(test_top1=float(figs.get("test_top1", entry.top1 or 0.0)),
                           val_top1=float(figs.get("val_top1", history[-1].get("val_top1", 0.0))))
    run.write_meta({"num_classes": entry.num_classes, "restored_from_zoo": entry.name})
    run.write_metrics(history, {"restored_from_zoo": entry.name})
    run.write_stamp(want, restored_from_zoo=entry.name)   # last: the run is finished


# after the teachers are planned, before anything reads them
register_kind(KIND, run=_restore, is_done=run_is_done, plan=_plan_restores, only_if_read=True, order=10)
