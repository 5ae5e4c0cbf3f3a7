"""Running planned jobs: each job runs in a worker (any executor, :mod:`.executors`), after the jobs it depends
on; what a job of each kind runs is :mod:`.jobs`'s."""
from __future__ import annotations

import sys
import time
from typing import Dict, List, Optional, Tuple


from ..config import ConfigError
from .executors import Executor, LocalPool, schedule
from .jobs import Job, is_done, kind_of

__all__ = ["execute", "run_job", "RunsFailed"]


class RunsFailed(RuntimeError):
    """Some of a suite's runs failed; ``walls``: seconds of each job that finished (0: reused from the cache)."""

    def __init__(self, message: str, walls: Dict[str, float]):
        super().__init__(message)
        self.walls = walls


def run_job(job: Job) -> Tuple[str, float, Optional[str]]:
    """Run one job inside a worker process (imports paid once per worker, not per job)."""
    t0 = time.perf_counter()
    try:
        kind_of(job).run(job)
    except Exception as e:   # reported, and the runs that depend on it are dropped
        return job.key, time.perf_counter() - t0, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return job.key, time.perf_counter() - t0, None


def execute(jobs: List[Job], n_jobs: Optional[int] = None, progress: bool = True, log=print, done_before=(),
            train: bool = True, executor: Optional[Executor] = None,
            seconds: Optional[Dict[str, float]] = None) -> Dict[str, float]:
    """Run the jobs the cache lacks on ``executor`` (default: a local pool of ``n_jobs`` processes), each
    after the jobs it depends on. Returns wall seconds per job (0 for a job reused from the cache).
    ``train=False``: only check that every job is already finished in the cache (report-only runs).
    ``seconds``: what each job took when it last ran, to start the longest first (:func:`.executors.schedule`)."""
    from tqdm import tqdm
    walls: Dict[str, float] = {}
    done = set(done_before)
    for j in jobs:
        if is_done(j):
            done.add(j.key)
            walls[j.key] = 0.0
    pending = [j for j in jobs if j.key not in done]
    if pending and not train:
        raise ConfigError(f"suite: {len(pending)} run(s) are not in the cache yet (first: {pending[0].key}); "
                          f"run the suite without --plan-seeds first")
    if not pending:
        return walls
    bar = tqdm(total=len(jobs), initial=len(done & {j.key for j in jobs}), desc="runs",
               disable=None if progress else True, file=sys.stderr)
    failures: List[str] = []
    finished = [len(jobs) - len(pending)]

    def on_result(job: Job, value, err: Optional[str]) -> Optional[str]:
        key, wall = job.key, 0.0
        if value is not None:
            key, wall, err = value
        if not err:
            walls[key] = wall
        bar.update(1)
        finished[0] += 1
        if err:
            failures.append(f"{key}: {err}")
            log(f"run failed: {key}: {err}")
        else:   # a line per run, also when no terminal shows the bar
            log(f"run {key} done in {wall:.0f}s ({finished[0]}/{len(jobs)})")
        return err

    own = executor is None
    executor = executor or LocalPool(n_jobs or 2)
    try:
        schedule(pending, executor, run_job, done, on_result, seconds)
    finally:
        bar.close()
        if own:
            executor.close()
    if failures:
        raise RunsFailed(f"suite: {len(failures)} run(s) failed, first: {failures[0]}", walls)
    return walls
