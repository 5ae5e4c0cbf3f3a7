"""The suite's scheduler and executors (issue 14): dependencies first, failures drop what is downstream,
no job kind is known by name, resources come from the job's config."""
from dataclasses import dataclass, field
from typing import List

import pytest

from vitkd.compare.executors import Executor, LocalPool, RayExecutor, Resources, job_device, make_executor, schedule
from vitkd.config import ConfigError


@dataclass
class FakeJob:
    key: str
    deps: List[str] = field(default_factory=list)
    kind: str = "anything"
    raw: dict = field(default_factory=dict)


class Call:
    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg


class Inline(Executor):
    """Runs each call when it is waited on; records the order and the resources asked for."""
    name = "inline"

    def __init__(self, slots=None):
        self.slots, self.started, self.asked = slots, [], []

    def resources(self, raw):
        return Resources(num_cpus=1, num_gpus=1 if job_device(raw) == "cuda" else 0)

    def submit(self, fn, arg, resources):
        self.started.append(arg.key)
        self.asked.append(resources)
        return Call(fn, arg)

    def wait(self, handles):
        return [handles[0]]

    def result(self, handle):
        return handle.fn(handle.arg)


def test_dependencies_first_and_failures_drop_everything_downstream():
    jobs = [FakeJob("rows/a", ["teachers/t"], kind="row"), FakeJob("teachers/t", kind="teacher"),
            FakeJob("zoo/new-kind", ["rows/a"], kind="a kind added later", raw={"train": {"device": "cuda"}}),
            FakeJob("teachers/bad"), FakeJob("rows/b", ["teachers/bad"]), FakeJob("rows/c", ["rows/b"])]
    seen = []

    def fn(job):
        if job.key == "teachers/bad":
            raise RuntimeError("boom")
        return job.key

    def on_result(job, value, err):
        seen.append((job.key, err))
        return err

    ex = Inline()
    done = set()
    failed = schedule(jobs, ex, fn, done, on_result)
    assert failed == ["teachers/bad"]
    assert done == {"teachers/t", "rows/a", "zoo/new-kind"}
    order = [k for k, _ in seen]
    assert order.index("teachers/t") < order.index("rows/a") < order.index("zoo/new-kind")
    assert "rows/b" not in ex.started and "rows/c" not in ex.started   # downstream of the failure
    assert dict(seen)["teachers/bad"] == "RuntimeError: boom"
    assert ex.asked[ex.started.index("zoo/new-kind")] == Resources(num_cpus=1, num_gpus=1)


def test_slots_cap_the_calls_in_flight():
    class Counting(Inline):
        def __init__(self):
            super().__init__(slots=2)
            self.in_flight, self.most = 0, 0

        def submit(self, fn, arg, resources):
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
            return super().submit(fn, arg, resources)

        def result(self, handle):
            self.in_flight -= 1
            return super().result(handle)

    ex = Counting()
    schedule([FakeJob(f"j{i}") for i in range(5)], ex, lambda j: j.key, set(), lambda j, v, e: e)
    assert ex.most == 2 and len(ex.started) == 5


def test_executor_choice_and_resources(monkeypatch):
    assert isinstance(make_executor("local", 3), LocalPool) and make_executor("local", 3).slots == 3
    assert make_executor("local", 2, cpus_per_job=1).threads == 1
    ray_ex = make_executor("ray", None, address="127.0.0.1:1", cpus_per_job=4)
    assert isinstance(ray_ex, RayExecutor) and ray_ex.slots is None and ray_ex.cpus == 4
    with pytest.raises(ConfigError, match="--address"):
        make_executor("local", 2, address="h:1")
    with pytest.raises(ConfigError, match="--executor"):
        make_executor("slurm", 2)
    with pytest.raises(ConfigError, match="--cpus-per-job"):
        make_executor("ray", None, cpus_per_job=0)
    # what a Ray task asks for follows the run's device, never its kind
    ray_ex._ensure = lambda: None
    for device, gpus_on_cluster, want in (("cuda", 0, 1), ("cpu", 8, 0), ("auto", 8, 1), ("auto", 0, 0)):
        ray_ex._gpus = gpus_on_cluster
        assert ray_ex.resources({"train": {"device": device}}) == Resources(num_cpus=4, num_gpus=want)
    ray_ex._gpus = 0
    assert ray_ex.resources({}) == Resources(num_cpus=4, num_gpus=0)   # device auto by default


def test_the_head_of_the_longest_path_starts_first():
    """With one slot, among ready jobs the one the longest chain waits on goes first (a teacher, then its store,
    then the rows reading it), and jobs of equal paths keep the suite's order."""
    from vitkd.compare.executors import longest_paths
    jobs = [FakeJob("rows/plain1"), FakeJob("rows/plain2"), FakeJob("rows/kd", ["logits/t"]),
            FakeJob("logits/t", ["teachers/t"]), FakeJob("teachers/t"), FakeJob("rows/deit", ["logits/t"])]
    assert longest_paths(jobs) == {"rows/plain1": 1, "rows/plain2": 1, "rows/kd": 1, "logits/t": 2,
                                   "teachers/t": 3, "rows/deit": 1}
    ex = Inline(slots=1)
    schedule(jobs, ex, lambda j: j.key, set(), lambda j, v, e: e)
    assert ex.started == ["teachers/t", "logits/t", "rows/plain1", "rows/plain2", "rows/kd", "rows/deit"]


def test_with_recorded_seconds_the_longest_work_starts_first():
    """Given what each job took when the suite last ran, paths are measured in seconds: a long independent run
    starts before a short chain, and a job without a record counts the median of the recorded ones."""
    from vitkd.compare.executors import longest_paths
    jobs = [FakeJob("rows/short"), FakeJob("rows/kd", ["logits/t"]), FakeJob("logits/t"), FakeJob("rows/long"),
            FakeJob("rows/new")]
    seconds = {"rows/short": 10.0, "rows/kd": 20.0, "logits/t": 30.0, "rows/long": 400.0}
    paths = longest_paths(jobs, seconds)
    assert paths == {"rows/short": 10.0, "rows/kd": 20.0, "logits/t": 50.0, "rows/long": 400.0, "rows/new": 30.0}
    ex = Inline(slots=1)
    schedule(jobs, ex, lambda j: j.key, set(), lambda j, v, e: e, seconds)
    assert ex.started == ["rows/long", "logits/t", "rows/new", "rows/kd", "rows/short"]
    assert longest_paths(jobs) == {"rows/short": 1, "rows/kd": 1, "logits/t": 2, "rows/long": 1, "rows/new": 1}
