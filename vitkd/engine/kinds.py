"""Run kinds: how a config file trains, when it is not one run.

A plain run config trains one run (:func:`vitkd.engine.train`). A method whose config file is a sequence of runs
(a chain of teacher assistants, m2mKD's pipeline) registers a run kind under the top-level key that marks its files;
``vitkd train`` asks :func:`run_kind_of` and calls the kind's ``train``, never a method by name.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

from ..config import read_yaml

__all__ = ["RunKind", "RUN_KINDS", "register_run_kind", "run_kind_of"]


@dataclass(frozen=True)
class RunKind:
    """``train(path, out, overrides, overwrite, log) -> dict``: trains the file's runs into ``out`` and returns what
    ``vitkd train`` prints besides ``out``. ``one_process``: its runs train one after another in this process (no
    ``--nproc``, not under torchrun; each run's own config can be launched with torchrun). ``takes_resume``: whether
    ``--resume`` is accepted (a kind made of stages reuses finished ones and resumes unfinished ones by itself)."""
    name: str
    key: str
    train: Callable[..., dict]
    one_process: bool = True
    takes_resume: bool = True


# top-level key of a config file -> its run kind (registered by the methods under vitkd.methods)
RUN_KINDS: Dict[str, RunKind] = {}


def register_run_kind(name: str, key: str, train: Callable[..., dict], one_process: bool = True,
                      takes_resume: bool = True) -> None:
    """A config file with the top-level ``key`` trains through ``train`` (see :class:`RunKind`)."""
    if key in RUN_KINDS:
        raise ValueError(f"register_run_kind: '{key}' is already the key of run kind '{RUN_KINDS[key].name}'")
    RUN_KINDS[key] = RunKind(name, key, train, one_process, takes_resume)


def run_kind_of(path) -> Optional[RunKind]:
    """The run kind of a config file (None: a plain run config)."""
    raw = read_yaml(Path(path))
    found: List[RunKind] = [k for key, k in RUN_KINDS.items() if isinstance(raw, dict) and key in raw]
    return found[0] if found else None
