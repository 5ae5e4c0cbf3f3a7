"""What a suite's job is, and the job kinds: one registry (:data:`KINDS`) that ``vitkd compare`` loops over.

A kind says how its jobs are planned from the suite (``plan``; a kind may also rewrite jobs planned before it, as
stored logits rewrite rows to read a store), checked before anything runs (``check``), found done in the cache
(``is_done``), run in a worker (``run``), continued once the first jobs have run (``after``: a pipeline plans its
stages once its compatibility check is known) and costed (``finish``: table overrides and files of its own). The
built-in kinds are the suite's teachers and rows (:mod:`.plan`); :mod:`.from_zoo` adds quick mode's restored
teachers, and each method under :mod:`vitkd.methods` that has suite jobs registers its kinds.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from ..config import ConfigError, parse_config, to_dict
from ..rundir import RunDir

__all__ = ["Job", "JobKind", "SuitePlan", "KINDS", "register_kind", "kind_of", "kinds_in_order", "is_done",
           "job_config", "run_is_done", "train_job"]


@dataclass
class Job:
    key: str                       # unique id: teachers/<name>, tune/<digest>/s<seed>, rows/<row>/s<seed>
    raw: dict                      # the resolved config mapping
    out: Path
    deps: List[str] = field(default_factory=list)
    kind: str = "row"              # its entry in KINDS
    row: Optional[str] = None      # the suite teacher or row it belongs to
    seed: Optional[int] = None
    role: Optional[str] = None     # "teacher" | "row": its run folder is a line of the table (None: a means to one)
    stage: Optional[str] = None    # a stage of a row trained by stages: its name, and the phase it belongs to
    phase: Optional[str] = None
    planned_inputs: Dict[str, str] = field(default_factory=dict)   # {dotted config key: key of the job writing it}
    like: Optional[str] = None     # the job whose config builds the model this job's output stands for (a store:
                                   # its teacher's job), so runs that read the output can be dry-built before it exists
    source: Optional[str] = None   # where the output comes from when it is not computed here (a zoo entry's name)
    args: Dict[str, Any] = field(default_factory=dict)   # its runner's arguments beyond the config (a store's K)


@dataclass
class SuitePlan:
    """What planning knows (the suite, its folder, the run cache, quick mode, the tuned knobs and data size,
    the command's options) and what it builds: the jobs in order, the jobs planned only to be checked (planned for
    real by a kind's ``after``), table overrides {row: {column: value}}, result files {name: JSON data} and entries
    of the results' meta record."""
    suite: Any
    base: Path
    cache: Path
    quick: bool = False
    tuned: Dict[str, Any] = field(default_factory=dict)
    sized: Dict[str, Any] = field(default_factory=dict)
    options: Dict[str, Any] = field(default_factory=dict)
    log: Callable[[str], None] = print
    jobs: List[Job] = field(default_factory=list)
    checked_only: List[Job] = field(default_factory=list)
    overrides: Dict[str, dict] = field(default_factory=dict)
    files: Dict[str, Any] = field(default_factory=dict)
    # {row: [{term, param, value}]}: the family knobs the tuning record chose (applied to the row's loss terms)
    row_knobs: Dict[str, List[dict]] = field(default_factory=dict)
    meta: Dict[str, Any] = field(default_factory=dict)   # what the results' meta.json records of the kinds' settings

    def with_role(self, role: str) -> List[Job]:
        return [j for j in self.jobs if j.role == role]

    @property
    def teacher_dirs(self) -> Dict[str, Path]:
        """{suite teacher: its run folder}."""
        return {j.row: j.out for j in self.with_role("teacher")}


@dataclass(frozen=True)
class JobKind:
    """A kind of suite job (see the module docstring). ``run(job)``: produce its output, in a worker (a
    module-level function: the workers import vitkd, which registers every kind); ``is_done(job)``: the cache holds
    it; ``check(job, planned)``: validate its config before anything runs (None: the job's config is a run config,
    dry-built with its planned teachers by :func:`vitkd.compare.plan.check_jobs`); ``plan(plan)``: add its jobs to
    the :class:`SuitePlan` (kinds plan in ``order``); ``after(plan, execute)``: once the planned jobs have run, plan
    and run more with ``execute(jobs)``; ``finish(plan, walls)``: table overrides and files, after everything ran;
    ``trains_row(row)``: the suite row is trained by this kind's jobs, not the plain row's; ``row_folder(cache, row,
    seed)``: the run folder that stands for such a row at a seed; ``touches_row(row)``: the row sets this kind's
    keys (with ``sweeps`` false, such a row cannot be swept, :mod:`.sweep`; with ``publishable`` false, it is
    not published to the zoo, :mod:`.publish`: its run config alone does not reproduce it); ``only_if_read``: its
    jobs run only when a job that runs reads them."""
    name: str
    run: Callable[[Job], None]
    is_done: Callable[[Job], bool]
    check: Optional[Callable[[Job, Dict[str, Any]], None]] = None
    plan: Optional[Callable[[SuitePlan], None]] = None
    after: Optional[Callable[[SuitePlan, Callable[[List[Job]], Dict[str, float]]], None]] = None
    finish: Optional[Callable[[SuitePlan, Dict[str, float]], None]] = None
    trains_row: Optional[Callable[[Any], bool]] = None
    row_folder: Optional[Callable[[Path, Any, int], Path]] = None
    touches_row: Optional[Callable[[Any], bool]] = None
    sweeps: bool = True
    publishable: bool = True
    only_if_read: bool = False
    order: int = 100


def job_config(job: Job) -> Optional[dict]:
    """The validated config a job trains (None while a teacher it reads does not exist yet)."""
    raw = copy.deepcopy(job.raw)
    raw.setdefault("train", {})["progress"] = False
    try:
        cfg = parse_config(raw)
    except ConfigError:
        return None
    cfg.train.threads = None   # the worker's thread count stands (not a result key)
    return to_dict(cfg)


def run_is_done(job: Job) -> bool:
    """A finished run of exactly this config, vitkd version and behaviour version (the run folder's one
    reuse rule): teachers and rows are cached across invocations."""
    want = job_config(job)
    return want is not None and RunDir(job.out).matches(want)


def train_job(job: Job) -> None:
    from ..engine import train
    raw = copy.deepcopy(job.raw)
    raw.setdefault("train", {})["progress"] = False
    cfg = parse_config(raw)
    cfg.train.threads = None   # the worker's thread count stands
    train(cfg, job.out, overwrite=True, log=lambda m: None)   # not a reusable run (see run_is_done)


# job kind name -> kind, registered by the modules that add one
KINDS: Dict[str, JobKind] = {}


def register_kind(name: str, run: Callable[[Job], None] = train_job, is_done: Callable[[Job], bool] = run_is_done,
                  **hooks) -> None:
    """Register job kind ``name`` (see :class:`JobKind` for ``hooks``); ``run`` and ``is_done`` default to a
    training run's."""
    if name in KINDS:
        raise ValueError(f"register_kind: job kind '{name}' registered twice")
    KINDS[name] = JobKind(name, run, is_done, **hooks)


def kind_of(job: Job) -> JobKind:
    try:
        return KINDS[job.kind]
    except KeyError:
        raise ConfigError(f"suite {job.key}: unknown job kind '{job.kind}' (known: {', '.join(KINDS)})") from None


def kinds_in_order() -> List[JobKind]:
    """Every kind, in the order they plan."""
    return sorted(KINDS.values(), key=lambda k: k.order)


def is_done(job: Job) -> bool:
    """Whether the cache already holds ``job``'s output."""
    return kind_of(job).is_done(job)
