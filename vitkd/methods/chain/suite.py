"""Chains in a suite: a row whose teachers are earlier generations (born-again networks, a teacher assistant) costs
what its whole chain costs. A row with ``count_generations: true`` shows, as its training MACs per image, its own
step's cost plus the training of every suite teacher it learns from and, through their ``distill_from``, of every
teacher those learnt from (each counted once), each teacher's per-image cost scaled by its epochs and train images
relative to the row's (per image and student epoch, as a pipeline row). The breakdown is written to
``generations.json`` in the results. A registered suite job kind that plans no jobs: it only costs rows
(``finish``).
"""
from __future__ import annotations

from typing import Dict, List

from ...compare.jobs import Job, SuitePlan, register_kind
from ...compare.plan import quick_rows
from ...compare.suite import RowSpec, register_suite_check
from ...config import ConfigError, key_value, register_section

__all__ = ["ROW_KEY", "KIND", "generation_teachers", "chain_costs"]

ROW_KEY = "count_generations"
KIND = "generations"


def _counts(row: RowSpec) -> bool:
    return bool(key_value(row, ROW_KEY))


def generation_teachers(suite, row: RowSpec) -> List[str]:
    """The suite teachers a row's chain trains: the ones it reads, and those they were distilled from, each once,
    nearest first."""
    out: List[str] = []
    todo = list(row.teachers.values())
    while todo:
        t = todo.pop(0)
        if t in out:
            continue
        out.append(t)
        todo.extend(suite.teachers[t].distill_from.values())
    return out


def _images_epochs(raw: dict):
    data, train = raw.get("data") or {}, raw.get("train") or {}
    return data.get("train_subset"), float(train.get("epochs") or 1)


def chain_costs(suite, row_jobs: List[Job], teacher_jobs: List[Job], cost=None) -> Dict[str, dict]:
    """{row: {own, teachers: {teacher: MACs per row image and epoch}, total}} (MACs per train image) of every row
    that counts its generations; ``cost(raw)`` measures one run's training MACs per image (default
    :func:`vitkd.compare.measure.measure_costs`)."""
    if cost is None:
        from ...compare.measure import measure_costs as cost
    by_teacher = {j.row: j for j in teacher_jobs}
    out = {}
    for name in dict.fromkeys(j.row for j in row_jobs):
        spec = next(r for r in suite.rows if r.name == name)
        if not _counts(spec):
            continue
        raw = next(j for j in row_jobs if j.row == name).raw
        images, epochs = _images_epochs(raw)
        own = cost(raw)["train_macs_per_image"]
        teachers = {}
        for t in generation_teachers(suite, spec):
            if t not in by_teacher:
                raise ConfigError(f"suite.rows.{name}.{ROW_KEY}: teacher '{t}' was not planned")
            traw = by_teacher[t].raw
            t_images, t_epochs = _images_epochs(traw)
            scale = (t_epochs / epochs) * ((t_images / images) if t_images and images else 1.0)
            teachers[t] = cost(traw)["train_macs_per_image"] * scale
        out[name] = {"own": own, "teachers": teachers, "total": own + sum(teachers.values())}
    return out


def _check(suite) -> None:
    for r in suite.rows:
        if _counts(r) and not r.teachers:
            raise ConfigError(f"suite.rows.{r.name}.{ROW_KEY}: the row reads no suite teacher, so it has no "
                              f"earlier generation to count")


def _finish(plan: SuitePlan, walls: Dict[str, float]) -> None:
    rows = {r.name for r in quick_rows(plan.suite, plan.quick) if _counts(r)}
    if not rows:
        return
    from ...compare.measure import measure_costs
    costs = chain_costs(plan.suite, [j for j in plan.with_role("row") if j.row in rows], plan.with_role("teacher"),
                        cost=lambda raw: measure_costs(raw, throughput=False))
    for row, c in costs.items():
        plan.overrides.setdefault(row, {})["train_mmacs_per_image"] = c["total"] / 1e6
    plan.files["generations.json"] = costs


def _no_job(job: Job) -> None:   # pragma: no cover - the kind plans no jobs
    raise ConfigError(f"suite {job.key}: the {KIND} kind runs no job")


register_section(RowSpec, ROW_KEY, bool, False)
register_suite_check(_check)
register_kind(KIND, run=_no_job, is_done=lambda j: True, finish=_finish, order=60)
