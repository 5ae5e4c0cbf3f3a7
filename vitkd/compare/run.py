"""Running planned jobs: one job trains in a worker (any executor), the scheduler respects dependencies."""
from __future__ import annotations

import copy
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple


from ..config import ConfigError, parse_config
from .execute import Executor, LocalPool, schedule
from .plan import Job, _is_done


# job kind -> what a worker does with a job of that kind (default: train its run); registered by the modules
# that add a kind (see vitkd.compare.stored). Called with the job and its validated config.
RUNNERS: Dict[str, Callable[[Job, object], None]] = {}


def _train_run(job: Job, cfg) -> None:
    from ..engine import train
    train(cfg, job.out, overwrite=True, log=lambda m: None)   # not a reusable run (see _is_done)


def _run_job(job: Job) -> Tuple[str, float, Optional[str]]:
    """Run one job inside a worker process (imports paid once per worker, not per run)."""
    t0 = time.perf_counter()
    try:
        raw = copy.deepcopy(job.raw)
        raw.setdefault("train", {})["progress"] = False
        cfg = parse_config(raw)
        cfg.train.threads = None   # the worker's thread count stands
        RUNNERS.get(job.kind, _train_run)(job, cfg)
    except Exception as e:   # reported, and the runs that depend on it are dropped
        return job.key, time.perf_counter() - t0, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return job.key, time.perf_counter() - t0, None


def execute(jobs: List[Job], n_jobs: Optional[int] = None, progress: bool = True, log=print, done_before=(),
            train: bool = True, executor: Optional[Executor] = None) -> Dict[str, float]:
    """Run the jobs the cache lacks on ``executor`` (default: a local pool of ``n_jobs`` processes), each
    after the jobs it depends on. Returns wall seconds per job (0 for a job reused from the cache).
    ``train=False``: only check that every job is already finished in the cache (report-only runs)."""
    from tqdm import tqdm
    walls: Dict[str, float] = {}
    done = set(done_before)
    for j in jobs:
        if _is_done(j):
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
        schedule(pending, executor, _run_job, done, on_result)
    finally:
        bar.close()
        if own:
            executor.close()
    if failures:
        raise RuntimeError(f"suite: {len(failures)} run(s) failed, first: {failures[0]}")
    return walls
