"""Stored teacher logits in a suite: ``logits`` jobs, and rows that read them instead of running their teacher.

For every row, each suite teacher that the row's terms read for logits only (what a dry build of the row
reports) is served from a store: one ``logits`` job per (suite teacher, seed, data recipe), which depends on
the teacher's job and runs the teacher once over every epoch's augmented images of that recipe
(:mod:`vitkd.methods.stored_logits.save`). The row then reads ``distill.teachers.<key>: {logits: <store>}`` and depends on
that job. A teacher a term reads for tokens, attention or stages stays live. Rows of one seed and recipe share
a store whatever their student, so a store's augmentation stream is the one its rows and their no-KD baseline
see at that seed. The suite option ``stored_logits: false`` (or ``vitkd compare --live-teachers``) turns it off;
a row's ``logits: {stored: false}`` keeps its own teachers live, and so do rows whose train images another job
writes (a synthetic train set): their images are not known when the stores are planned.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ...config import ConfigError, parse_config, path_under, raw_teachers, register_section, section
from ...compare.jobs import Job, SuitePlan, register_kind
from ...compare.plan import build_key, strip_checkpoints
from ...compare.suite import RowSpec, SuiteCfg
from ...data import TRAIN_SPLITS
from .replay import SOURCE_KEY

__all__ = ["plan_stored_logits", "RowLogits", "KIND", "SUITE_KEY", "ROW_KEY"]

KIND = "logits"
SUITE_KEY = "stored_logits"   # the suite's switch (default on)
ROW_KEY = "logits"            # a row's settings (RowLogits)


@dataclass
class RowLogits:
    """How a row's logit-only teachers are served."""
    stored: Optional[bool] = None      # None: the suite's ``stored_logits``; false: live; true: from a store
    topk: Optional[int] = None         # K of the row's stores (None: every class)

    def __post_init__(self):
        if self.topk is not None and self.topk < 1:
            raise ConfigError(f"suite.rows.{ROW_KEY}.topk: must be >= 1, got {self.topk}")


def _logit_only_teachers(job: Job, planned: Dict[str, object], seen: Dict[str, set]) -> set:
    """The teacher keys of a row that its terms read for logits only (dry build with planned teachers)."""
    from ...engine.build import dry_build, planned_teachers
    stripped, teachers = planned_teachers(job.raw, planned)
    key = build_key(stripped)
    if key not in seen:
        try:
            requests = dry_build(parse_config(stripped), teachers)
        except ConfigError:   # the row cannot build: check_jobs reports it, naming the row
            requests = {}
        seen[key] = {k for k, r in requests.items() if not r}
    return seen[key]


def plan_stored_logits(row_jobs: List[Job], teacher_jobs: List[Job], cache: Path,
                       options: Optional[Dict[str, Any]] = None, default: bool = True
                       ) -> Tuple[List[Job], List[Job]]:
    """(the rows, rewritten to read stores where they can, the ``logits`` jobs that write those stores).

    ``options``: {row name: its :class:`RowLogits`}: whether the row reads stores (None: ``default``) and their K
    (None: every class)."""
    from .fingerprint import data_fingerprint
    from ...io import json_digest
    from ...models import student_spec
    by_out = {str(j.out): j for j in teacher_jobs}
    planned = {}
    for j in teacher_jobs:
        try:
            planned[str(j.out)] = parse_config(strip_checkpoints(j.raw), paths=False)
        except ConfigError:   # check_jobs reports it, naming the teacher
            pass
    seen: Dict[str, set] = {}
    specs: Dict[str, object] = {}
    stores: Dict[str, Job] = {}
    rows = []
    for job in row_jobs:
        job = copy.deepcopy(job)
        opt = (options or {}).get(job.row)
        stored = default if opt is None or opt.stored is None else opt.stored
        topk = None if opt is None else opt.topk
        # a row on a set that replaces the train split (vitkd.data.TRAIN_SPLITS) keeps its teachers live: its images
        # are not known before the set is written, so no store can be planned for them (and one of the dataset's
        # split would hold the wrong images)
        if not stored or any(k in (job.raw.get("data") or {}) for k in TRAIN_SPLITS):
            rows.append(job)
            continue
        teachers = raw_teachers(job.raw)
        suite_teachers = {k: by_out[str(Path(t["checkpoint"]))] for k, t in teachers.items()
                          if isinstance(t, dict) and str(Path(t.get("checkpoint", ""))) in by_out}
        if suite_teachers:
            storable = _logit_only_teachers(job, planned, seen) & set(suite_teachers)
            for k in sorted(storable):
                tjob = suite_teachers[k]
                cfg = parse_config(strip_checkpoints(job.raw), paths=False)
                mkey = f"{cfg.model.name}|{cfg.model.args}|{cfg.data.img_size}"
                if mkey not in specs:
                    specs[mkey] = student_spec(cfg)
                fp = {**data_fingerprint(cfg, specs[mkey]), "epochs": cfg.train.epochs, "teacher": tjob.key}
                if topk is not None:   # stores of every class keep the tag they had before K was an option
                    fp["topk"] = topk
                tag = f"s{cfg.seed}-{json_digest(fp)[:10]}"
                name = tjob.row
                lkey = f"{KIND}/{name}/{tag}"
                if lkey not in stores:
                    raw = copy.deepcopy(job.raw)
                    raw["distill"] = {"teachers": {k: copy.deepcopy(teachers[k])},
                                      "terms": [{"type": "kd", "teacher": k}]}
                    folder = path_under(cache / "logits", name, tag, key=f"suite.teachers.{name}")
                    stores[lkey] = Job(lkey, raw, folder, [tjob.key], kind=KIND,
                                       row=name, seed=cfg.seed, like=tjob.key, args={"topk": topk})
                teachers[k] = {SOURCE_KEY: str(stores[lkey].out)}
                job.deps = [d for d in job.deps if d != tjob.key] + [lkey]
        rows.append(job)
    return rows, list(stores.values())


def _store_done(job: Job) -> bool:
    from .replay import store_serves
    try:
        cfg = parse_config(copy.deepcopy(job.raw))
    except ConfigError:   # its teacher is not trained yet
        return False
    (teacher,) = cfg.distill.teachers.values()
    return store_serves(str(job.out), cfg, teacher)


def _write_store(job: Job) -> None:
    from .save import save_logits
    raw = copy.deepcopy(job.raw)
    raw.setdefault("train", {})["progress"] = False
    cfg = parse_config(raw)
    cfg.train.threads = None   # the worker's thread count stands
    (name,) = cfg.distill.teachers
    save_logits(cfg, None, topk=job.args.get("topk"), stores={name: Path(job.out)}, progress=False,
                log=lambda m: None, replace=True)


def _plan(plan: SuitePlan) -> None:
    """The plain rows read logit-only teachers from stores unless the suite (or the row's ``logits.stored``, or
    ``vitkd compare --live-teachers``) turns it off; the stores' jobs join the plan."""
    live = bool(plan.options.get("live_teachers"))
    default = bool(section(plan.suite, SUITE_KEY)) and not live
    plan.meta[SUITE_KEY] = default
    options = {r.name: (RowLogits(stored=False) if live else section(r, ROW_KEY)) for r in plan.suite.rows}
    if not default and not any(o.stored for o in options.values()):
        return
    rows = [j for j in plan.jobs if j.kind == "row"]
    rewritten, stores = plan_stored_logits(rows, plan.with_role("teacher"), plan.cache, options, default=default)
    by_key = {j.key: j for j in rewritten}
    plan.jobs = [by_key.get(j.key, j) for j in plan.jobs] + stores


register_section(SuiteCfg, SUITE_KEY, bool, default=True)
register_section(RowSpec, ROW_KEY, RowLogits, default_factory=RowLogits)
# after the rows and their train sets are planned
register_kind(KIND, run=_write_store, is_done=_store_done, plan=_plan, only_if_read=True, order=40)
