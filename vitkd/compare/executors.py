"""Where a suite's runs execute: one small interface, two executors, one scheduler.

* :class:`LocalPool` (the default): ``jobs`` spawned worker processes on this machine, each with its share
  of the CPU threads.
* :class:`RayExecutor` (``vitkd compare --executor ray [--address HOST:PORT]``): every run is a Ray task
  that asks the cluster for its resources (``num_cpus``; ``num_gpus: 1`` when the run's device is CUDA) and
  runs wherever they are free. Without an address it starts a Ray instance on this machine.

:func:`schedule` submits a job as soon as every job it depends on has finished, drops the jobs that depend
on a failed one, and reports each result; it sees a job only as its ``key``, ``deps`` and config, so every
kind of job the planner produces (teachers, tuning, rows, and kinds added later) runs the same way, and
no executor knows a job kind by name. Run folders are written where the job says (``--cache``): with Ray,
that folder, the suite's configs and its data must be at the same path on every node (a shared file
system), and each task works in the driver's working directory.
"""
from __future__ import annotations

import concurrent.futures as cf
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Set

__all__ = ["Resources", "Executor", "LocalPool", "RayExecutor", "make_executor", "schedule", "longest_paths",
           "job_device", "EXECUTORS"]

EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class Resources:
    """What one run asks for: CPU cores (also its torch threads) and GPUs."""
    num_cpus: int = 1
    num_gpus: int = 0


def job_device(raw: dict) -> str:
    """The device a job's config asks for: ``auto`` (the default), ``cpu`` or ``cuda``."""
    return str(((raw or {}).get("train") or {}).get("device", "auto"))


class Executor:
    """Runs module-level calls ``fn(arg)`` with resources and hands back their results.

    ``slots``: how many calls to keep in flight (None: every ready job is submitted and the executor
    queues them by their resources)."""

    name = "?"
    slots: Optional[int] = None

    def resources(self, raw: dict) -> Resources:   # pragma: no cover - interface
        raise NotImplementedError

    def submit(self, fn: Callable[[Any], Any], arg: Any, resources: Resources) -> Any:   # pragma: no cover
        raise NotImplementedError

    def wait(self, handles: Sequence[Any]) -> List[Any]:   # pragma: no cover - interface
        """At least one finished handle among ``handles`` (blocks until there is one)."""
        raise NotImplementedError

    def result(self, handle: Any) -> Any:   # pragma: no cover - interface
        """The call's return value; raises what the call (or its worker) raised."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _init_worker(threads: int):
    import torch
    from ..engine.allocator import keep_freed_memory
    keep_freed_memory()
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)


class LocalPool(Executor):
    """``jobs`` spawned worker processes on this machine, ``threads`` torch threads each (default: the
    machine's cores shared evenly). Workers are reused between runs (imports paid once per worker)."""

    name = "local"

    def __init__(self, jobs: int, threads: Optional[int] = None):
        self.slots = max(1, int(jobs))
        self.threads = threads or max(1, (os.cpu_count() or 2) // self.slots)
        self._pool: Optional[cf.ProcessPoolExecutor] = None

    def resources(self, raw: dict) -> Resources:
        return Resources(num_cpus=self.threads, num_gpus=0)   # the pool places nothing: informative only

    def submit(self, fn, arg, resources: Resources):
        if self._pool is None:
            import multiprocessing as mp
            self._pool = cf.ProcessPoolExecutor(max_workers=self.slots, mp_context=mp.get_context("spawn"),
                                                initializer=_init_worker, initargs=(self.threads,))
        return self._pool.submit(fn, arg)

    def wait(self, handles):
        done, _ = cf.wait(list(handles), return_when=cf.FIRST_COMPLETED)
        return list(done)

    def result(self, handle):
        return handle.result()

    def close(self):
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def _in_driver_dir(cwd: str, threads: int, fn, arg):
    """A Ray task's body: the driver's working directory (relative paths of the suite resolve as on the
    driver) and ``threads`` torch threads, then ``fn(arg)``."""
    import torch
    if not os.path.isdir(cwd):
        raise RuntimeError(f"this node has no {cwd}: the suite's folders must be on a file system every node "
                           f"sees at the same path")
    from ..engine.allocator import keep_freed_memory
    keep_freed_memory()
    before = os.getcwd()
    os.chdir(cwd)
    torch.set_num_threads(threads)
    try:
        return fn(arg)
    finally:
        os.chdir(before)


class RayExecutor(Executor):
    """Each call is a Ray task with ``num_cpus`` (``cpus_per_job``, default 1; also its torch threads) and
    ``num_gpus: 1`` when the run's device is ``cuda``, or ``auto`` on a cluster that has GPUs.

    ``address``: a running cluster (``HOST:PORT`` of its head, or ``auto``); None starts Ray on this
    machine (``num_cpus``/``object_store_memory`` apply only then). A Ray session this process already
    initialised is used as it is and left running. ``slots``: at most this many tasks in flight (None:
    every ready job is submitted and Ray queues them until their resources are free)."""

    name = "ray"

    def __init__(self, address: Optional[str] = None, cpus_per_job: Optional[int] = None,
                 slots: Optional[int] = None, num_cpus: Optional[int] = None,
                 object_store_memory: Optional[int] = None):
        self.address, self.cpus = address, max(1, int(cpus_per_job or 1))
        self.slots = slots
        self._init_kw = {"num_cpus": num_cpus, "object_store_memory": object_store_memory}
        self._ray = None
        self._started = False
        self._remote = None
        self._gpus = 0.0

    def _ensure(self):
        if self._ray is not None:
            return self._ray
        try:
            import ray
        except ImportError:
            from ..config import ConfigError
            raise ConfigError("--executor ray: Ray is not installed (pip install 'vitkd[ray]')") from None
        if not ray.is_initialized():
            kw: Dict[str, Any] = {"address": self.address, "log_to_driver": False}
            host = (self.address or "127.0.0.1").rsplit(":", 1)[0]
            if host in ("127.0.0.1", "localhost", "::1") or host.startswith("127."):
                # a cluster on this machine: the driver's node stays on loopback too (Ray would otherwise pick
                # the address of the default network interface)
                kw["_node_ip_address"] = "127.0.0.1"
            if not self.address:   # a new Ray instance on this machine: keep it small
                kw.update(include_dashboard=False,
                          **{k: v for k, v in self._init_kw.items() if v is not None})
            ray.init(**kw)
            self._started = True
        self._gpus = float(ray.cluster_resources().get("GPU", 0.0))
        self._remote = ray.remote(_in_driver_dir)
        self._ray = ray
        return ray

    def resources(self, raw: dict) -> Resources:
        self._ensure()
        dev = job_device(raw)
        gpu = dev == "cuda" or (dev == "auto" and self._gpus > 0)
        return Resources(num_cpus=self.cpus, num_gpus=1 if gpu else 0)

    def submit(self, fn, arg, resources: Resources):
        ray = self._ensure()
        opts = {"num_cpus": resources.num_cpus, "num_gpus": resources.num_gpus, "max_retries": 0}
        return self._remote.options(**opts).remote(os.getcwd(), resources.num_cpus, fn, arg)

    def wait(self, handles):
        done, _ = self._ray.wait(list(handles), num_returns=1)
        return list(done)

    def result(self, handle):
        return self._ray.get(handle)

    def close(self):
        if self._started and self._ray is not None:
            self._ray.shutdown()
        self._ray, self._started = None, False


def make_executor(kind: str, jobs: Optional[int], address: Optional[str] = None,
                  cpus_per_job: Optional[int] = None) -> Executor:
    """``local``: a pool of ``jobs`` processes; ``ray``: Ray tasks (``jobs`` caps how many run at once)."""
    from ..config import ConfigError
    if kind not in EXECUTORS:
        raise ConfigError(f"--executor: '{kind}' is not one of {', '.join(EXECUTORS)}")
    if address and kind != "ray":
        raise ConfigError("--address: only with --executor ray")
    if cpus_per_job is not None and cpus_per_job < 1:
        raise ConfigError(f"--cpus-per-job: must be >= 1, got {cpus_per_job}")
    if kind == "ray":
        return RayExecutor(address=address, cpus_per_job=cpus_per_job, slots=jobs)
    return LocalPool(jobs or 2, threads=cpus_per_job)


def longest_paths(jobs: Sequence[Any], seconds: Optional[Mapping[str, float]] = None) -> Dict[str, float]:
    """Per job, the longest path of dependent jobs that starts with it, each job counting its estimated seconds
    (``seconds``: what it took when the suite last ran; a job without a record counts the median of those that
    have one) or, with no estimates, 1: a job nothing waits on has its own length, any other its own plus the
    longest among the jobs that depend on it. Started first, the heads of long paths (a teacher, its store, the
    rows that read it) and the longest runs do not end up running alone on one worker at the end while the
    others sit idle."""
    known = sorted(v for v in (seconds or {}).values() if v > 0)
    typical = known[len(known) // 2] if known else 1.0
    cost = {j.key: (seconds or {}).get(j.key) or typical for j in jobs}
    waiting: Dict[str, List[str]] = {}
    for j in jobs:
        for d in j.deps:
            waiting.setdefault(d, []).append(j.key)
    lengths: Dict[str, float] = {}

    def length(key: str) -> float:
        if key not in lengths:
            lengths[key] = cost[key] + max((length(k) for k in waiting.get(key, ())), default=0)
        return lengths[key]

    return {j.key: length(j.key) for j in jobs}


def schedule(jobs: Iterable[Any], executor: Executor, fn: Callable[[Any], Any], done: Set[str],
             on_result: Callable[[Any, Any, Optional[str]], None],
             seconds: Optional[Mapping[str, float]] = None) -> List[str]:
    """Run ``fn(job)`` for every job on ``executor``, each once the jobs in its ``deps`` are in ``done``.

    ``on_result(job, value, error)`` is called as each finishes (``error``: what the call or its worker
    raised, ``value`` then None) and returns the job's error, None when it succeeded (``fn`` may report a
    failure in its value). A successful job's key joins ``done``; the jobs that depend on a failed one,
    directly or not, are dropped. Among ready jobs the head of the longest path (:func:`longest_paths`, in
    ``seconds`` where given) starts first. Returns the keys of the failed jobs."""
    pending = list(jobs)
    depth = longest_paths(pending, seconds)
    running: Dict[Any, Any] = {}
    failed: List[str] = []
    while pending or running:   # among ready jobs, the head of the longest path first (list order breaks ties)
        ready = sorted((j for j in pending if all(d in done for d in j.deps)), key=lambda j: -depth[j.key])
        room = len(ready) if executor.slots is None else max(0, executor.slots - len(running))
        for j in ready[:room]:
            pending.remove(j)
            running[executor.submit(fn, j, executor.resources(j.raw))] = j
        if not running:   # a dependency that is neither done nor planned
            blocked = ", ".join(f"{j.key} (needs {', '.join(d for d in j.deps if d not in done)})" for j in pending[:3])
            raise RuntimeError(f"suite: jobs wait on runs that are not planned: {blocked}")
        for h in executor.wait(list(running)):
            j = running.pop(h)
            try:
                value, err = executor.result(h), None
            except Exception as e:   # the worker itself failed (crashed, killed, lost node)
                value, err = None, f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"
            err = on_result(j, value, err)
            if err:
                failed.append(j.key)
                lost = {j.key}
                while True:   # everything downstream of the failed job
                    more = {p.key for p in pending if lost & set(p.deps)} - lost
                    if not more:
                        break
                    lost |= more
                pending = [p for p in pending if p.key not in lost]
            else:
                done.add(j.key)
    return failed
