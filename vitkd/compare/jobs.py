"""What a suite's job is, and the job kinds: for each kind, how it runs in a worker, whether the cache already holds
its output, and how its config is checked before anything runs.

One registry (:data:`KINDS`) holds them; the built-in kinds are training runs (teachers, tuning runs, rows and
pipeline stages: every kind not registered) and synthetic sets (``synth``). Modules that add a kind register it
(:mod:`.stored`: ``logits``; :mod:`.from_zoo`: ``zoo_teacher``); the package ``__init__`` imports them.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from ..config import ConfigError, parse_config, to_dict
from ..rundir import RunDir

__all__ = ["Job", "JobKind", "KINDS", "TRAINING", "register_kind", "kind_of", "is_done", "job_config", "run_is_done",
           "train_job"]


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


@dataclass(frozen=True)
class JobKind:
    """``run(job)``: produce its output, in a worker (a module-level function: the workers import its module);
    ``is_done(job)``: the cache holds it; ``check(job, planned)``: validate its config before anything runs
    (None: the job's config is a run config, dry-built with its planned teachers by
    :func:`vitkd.compare.plan.check_jobs`)."""
    run: Callable[[Job], None]
    is_done: Callable[[Job], bool]
    check: Optional[Callable[[Job, Dict[str, Any]], None]] = None


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


def _synth_job(job: Job) -> None:
    from ..synth import parse_synth_config, synthesize
    cfg = parse_synth_config(copy.deepcopy(job.raw))
    cfg.threads = None   # the worker's thread count stands
    synthesize(cfg, job.out, overwrite=True, log=lambda m: None)   # a partial set of the same fingerprint continues


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


# training runs: every kind that is not registered (teacher, row, tuning runs, pipeline stages)
TRAINING = JobKind(run=train_job, is_done=run_is_done)
KINDS: Dict[str, JobKind] = {"synth": JobKind(run=_synth_job, is_done=_synth_is_done, check=_check_synth)}


def register_kind(name: str, run: Callable[[Job], None], is_done: Callable[[Job], bool],
                  check: Optional[Callable[[Job, Dict[str, Any]], None]] = None) -> None:
    """Register job kind ``name`` (see :class:`JobKind`)."""
    KINDS[name] = JobKind(run, is_done, check)


def kind_of(job: Job) -> JobKind:
    return KINDS.get(job.kind, TRAINING)


def is_done(job: Job) -> bool:
    """Whether the cache already holds ``job``'s output."""
    return kind_of(job).is_done(job)
