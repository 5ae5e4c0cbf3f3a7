"""The run folder: the one definition of what a training run leaves on disk, and the one reuse rule.

A run folder holds:

==========================  ==========================================================================
``config.yaml``             the validated config the run was started with (resume policy compares it)
``run.yaml``                metadata: classes, input spec, versions, world size, resume history
``metrics.csv/.json``       one row per epoch; ``metrics.json["final"]`` is the last
``checkpoint.pt``           the latest training state (atomic; resume continues from it)
``model.safetensors``       the exported student (and ``model_ema.safetensors`` with EMA)
``teachers/<name>.*``       the final weights of each teacher that trained with the student (e.g. a peer)
``predictions_<split>.*``   per-image logits, predictions and targets of the final evaluation
``stamp.json``              written LAST: the run finished; what made it (config digest, versions)
==========================  ==========================================================================

One process writes a run folder at a time: it holds the folder's lock (:func:`exclusive`), a file beside the
folder (``.<name>.vitkd-lock``), never in it.

Everything else in vitkd (engine, chain, compare, eval, stats, zoo, logit stores) reads and writes run
folders through :class:`RunDir`; no other module spells these file names.

Reuse rule: a finished run is reused for a config when its stamp equals :meth:`RunDir.stamp_for` of that
config: the digest of the config (keys that cannot change results left out), the vitkd version and
:data:`BEHAVIOUR_VERSION`, which is bumped whenever a default changes what a run computes.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Tuple, Union

from .config import ConfigError, check_name, load_yaml, yaml_dump
from .io import (LockBusy, atomic_save_safetensors, atomic_write_csv, atomic_write_json, atomic_write_text,
                 held_lock, json_digest)

__all__ = ["RunDir", "BEHAVIOUR_VERSION", "NON_RESULT_KEYS", "config_digest", "ensure_writable", "exclusive",
           "one_spelling", "lock_path"]

# History of behaviour changes (bump on every default that changes what a run computes):
#   1  the first comparison suites
#   2  ViTKD's deep target and generator input are taken after the final norm (as in cls_KD)
#   3  repeated augmentation: each copy of an image draws its own augmentation (copies were identical)
BEHAVIOUR_VERSION = 3

# config keys that never change a run's numbers: left out of the reuse digest
NON_RESULT_KEYS = ("train.progress", "train.threads", "data.num_workers")


def _without(raw: dict, dotted: Iterable[str]) -> dict:
    out = json.loads(json.dumps(raw, default=str))
    for key in dotted:
        node = out
        *parents, last = key.split(".")
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
            if node is None:
                break
        if isinstance(node, dict):
            node.pop(last, None)
    return out


def _non_default(value: Any, schema) -> Any:
    """``value`` (a dict-form config node) without the keys that hold their schema default, so that a
    new config key added with a default does not change the digest of existing runs (a changed default
    is what :data:`BEHAVIOUR_VERSION` records)."""
    import dataclasses
    from .config import schema_keys
    if not (isinstance(value, dict) and dataclasses.is_dataclass(schema)):
        return value
    out, known = {}, set()
    for name, tp, default, _ in schema_keys(schema):
        known.add(name)
        if name not in value:
            continue
        v = value[name]
        if dataclasses.is_dataclass(default):
            default = dataclasses.asdict(default)
        if v == default:
            continue
        out[name] = _non_default_typed(v, tp)
    out.update({k: v for k, v in value.items() if k not in known})
    return out


def _non_default_typed(v: Any, tp) -> Any:
    import dataclasses
    import typing
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if dataclasses.is_dataclass(tp):
        return _non_default(v, tp)
    if typing.get_origin(tp) is typing.Union and args:
        return _non_default_typed(v, args[0])
    if typing.get_origin(tp) in (dict, typing.Dict) and len(args) == 2 and dataclasses.is_dataclass(args[1]) \
            and isinstance(v, dict):
        return {k: _non_default(x, args[1]) for k, x in v.items()}
    return v


def config_digest(config: dict) -> str:
    """sha256 of a (validated, dict-form) config: keys in :data:`NON_RESULT_KEYS` and keys at their
    schema default left out."""
    from .config import RunCfg
    return json_digest(_non_default(_without(config, NON_RESULT_KEYS), RunCfg))


class RunDir:
    CONFIG = "config.yaml"
    META = "run.yaml"
    METRICS_CSV = "metrics.csv"
    METRICS_JSON = "metrics.json"
    CHECKPOINT = "checkpoint.pt"
    WEIGHTS = "model.safetensors"
    EMA_WEIGHTS = "model_ema.safetensors"
    TEACHER_WEIGHTS = "teachers/{name}.safetensors"
    STAMP = "stamp.json"
    PREDICTIONS = "predictions_{split}.safetensors"

    def __init__(self, path: Union[str, Path]):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # ------------------------------------------------------------------ paths
    @property
    def config_path(self) -> Path:
        return self.path / self.CONFIG

    @property
    def checkpoint_path(self) -> Path:
        return self.path / self.CHECKPOINT

    @property
    def weights_path(self) -> Path:
        return self.path / self.WEIGHTS

    @property
    def ema_weights_path(self) -> Path:
        return self.path / self.EMA_WEIGHTS

    def teacher_weights_path(self, name: str) -> Path:
        """The final weights of teacher ``name``, trained with the student."""
        return self.path / self.TEACHER_WEIGHTS.format(name=check_name(name, f"distill.teachers.{name}", "teacher key"))

    def predictions_path(self, split: str) -> Path:
        return self.path / self.PREDICTIONS.format(split=split)

    def run_files(self) -> Tuple[str, ...]:
        """Every file name a run may write (the ones a fresh start clears)."""
        return (self.CONFIG, self.STAMP, self.WEIGHTS, self.EMA_WEIGHTS, self.CHECKPOINT, self.METRICS_CSV,
                self.METRICS_JSON, self.META) + tuple(self.PREDICTIONS.format(split=s) for s in ("val", "test"))

    # ------------------------------------------------------------------ state
    def exists(self) -> bool:
        return self.path.is_dir()

    def has_checkpoint(self) -> bool:
        return self.checkpoint_path.is_file()

    def is_finished(self) -> bool:
        """The stamp, the weights and the config are all there (a clear removes the config first)."""
        return all(p.is_file() for p in (self.path / self.STAMP, self.weights_path, self.config_path))

    def holds_a_run(self) -> bool:
        """Anything a run writes is there (finished or not)."""
        return any((self.path / n).exists() for n in (self.STAMP, self.WEIGHTS, self.CHECKPOINT, self.CONFIG))

    def clear(self) -> None:
        """Remove a previous run's files, the config first and then the stamp and weights, so an overwrite
        killed at any moment leaves a folder that neither reads as a finished run (teachers, reuse) nor as a
        run folder (``vitkd eval``). Stray temp files of killed writes go too."""
        for name in self.run_files():
            with contextlib.suppress(FileNotFoundError):
                (self.path / name).unlink()
        teachers = self.teacher_weights_path("x").parent
        for p in sorted(teachers.glob("*.safetensors")) + sorted(teachers.glob(".*.tmp")):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        with contextlib.suppress(OSError):
            teachers.rmdir()
        self.remove_stray_temp_files()

    def remove_stray_temp_files(self) -> int:
        n = 0
        if self.path.is_dir():
            for p in self.path.glob(".*.tmp"):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                    n += 1
        return n

    # ------------------------------------------------------------------ config and metadata
    def read_config(self) -> dict:
        if not self.config_path.is_file():
            raise ConfigError(f"{self.path}: not a run folder (no {self.CONFIG})")
        return _read_mapping(self.config_path)

    def write_config(self, config: dict) -> None:
        atomic_write_text(self.config_path, yaml_dump(config, sort_keys=False))

    def read_meta(self) -> dict:
        p = self.path / self.META
        return _read_mapping(p) if p.is_file() else {}

    def write_meta(self, meta: dict) -> None:
        atomic_write_text(self.path / self.META, yaml_dump(meta, sort_keys=False))

    def model_spec(self) -> Tuple[Optional[str], Dict[str, Any], Optional[int]]:
        """(model name, args, num_classes) of the run's student."""
        m = self.read_config().get("model", {}) or {}
        return m.get("name"), dict(m.get("args") or {}), int(self.read_meta().get("num_classes", 0)) or None

    # ------------------------------------------------------------------ metrics
    def write_metrics(self, history: list, meta: dict) -> None:
        atomic_write_csv(self.path / self.METRICS_CSV, history)
        atomic_write_json(self.path / self.METRICS_JSON,
                          {**meta, "epochs": history, "final": history[-1] if history else {}})

    def metrics(self) -> dict:
        p = self.path / self.METRICS_JSON
        if not p.is_file():
            raise ConfigError(f"{self.path}: no {self.METRICS_JSON} (did the run start?)")
        return json.loads(p.read_text())

    def final(self) -> dict:
        return self.metrics()["final"]

    # ------------------------------------------------------------------ weights
    def save_weights(self, state_dict: dict, metadata: dict, ema: bool = False) -> None:
        atomic_save_safetensors(state_dict, self.ema_weights_path if ema else self.weights_path, metadata)

    def save_teacher_weights(self, name: str, state_dict: dict, metadata: dict) -> None:
        path = self.teacher_weights_path(name)
        path.parent.mkdir(exist_ok=True)
        atomic_save_safetensors(state_dict, path, metadata)

    def finished_weights(self, key: str = "checkpoint") -> Path:
        """The weights of a finished run; ``key`` names the config key that pointed here in the error."""
        if not self.is_finished():
            raise ConfigError(f"{key}: run folder {self.path} holds no finished run "
                              f"(no {self.STAMP} beside {self.WEIGHTS}: did its training finish?)")
        return self.weights_path

    # ------------------------------------------------------------------ per-image predictions
    def save_predictions(self, split: str, logits, targets, indices) -> None:
        import torch
        atomic_save_safetensors({"logits": logits.float().cpu(), "pred": logits.argmax(-1).to(torch.int64).cpu(),
                                 "target": targets.to(torch.int64).cpu(), "index": indices.to(torch.int64).cpu()},
                                self.predictions_path(split), {"split": split})

    def load_predictions(self, split: str) -> Dict[str, Any]:
        from safetensors.torch import load_file
        p = self.predictions_path(split)
        if not p.is_file():
            raise ConfigError(f"{self.path}: no per-image predictions for '{split}' ({p.name})")
        return load_file(str(p))

    # ------------------------------------------------------------------ the reuse stamp
    @staticmethod
    def stamp_for(config: dict) -> dict:
        from ._version import __version__
        return {"config_sha256": config_digest(config), "vitkd": __version__, "behaviour": BEHAVIOUR_VERSION}

    def write_stamp(self, config: dict, **extra) -> None:
        atomic_write_json(self.path / self.STAMP, {**self.stamp_for(config), **extra})

    def read_stamp(self) -> dict:
        try:
            return json.loads((self.path / self.STAMP).read_text())
        except (OSError, ValueError):
            return {}

    def matches(self, config: dict) -> bool:
        """A finished run made by this config, this vitkd and this behaviour version: safe to reuse."""
        if not self.is_finished():
            return False
        stamp, want = self.read_stamp(), self.stamp_for(config)
        return all(stamp.get(k) == v for k, v in want.items())


def _read_mapping(path: Path) -> dict:
    """The YAML mapping in a run folder's file, read by :func:`vitkd.config.load_yaml` (a file that is not UTF-8,
    not YAML, holds a key twice or is not a mapping: one line naming it); an empty file is ``{}``."""
    data = load_yaml(path)
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data or {}


def ensure_writable(path: Path, option: str = "--out") -> None:
    """One line naming the folder (and the ``option`` that chose it) when it cannot be created or written. It
    is tried for real (mode bits, read-only filesystems, a file in the way, places even root cannot write) by a
    file made and removed in the folder, or in its deepest existing ancestor when it does not exist yet: nothing
    is created, so a run that fails later leaves nothing, and checks of sibling folders running at once (a
    suite's parallel jobs) never remove a folder another has just made."""
    path = Path(path)
    for _ in range(100):   # each retry follows a folder removed in between by another process: a few at most
        probe = path
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if not probe.is_dir():
            raise ConfigError(f"{option} {path}: cannot create the folder ({probe} is not a folder)")
        try:
            fd, tmp = tempfile.mkstemp(prefix=".write-test.", suffix=".tmp", dir=str(probe))
        except FileNotFoundError as e:
            if probe.is_dir():   # the folder is there: the filesystem refuses files in it (e.g. /proc)
                raise ConfigError(f"{option} {path}: cannot write there ({e.strerror})") from None
            continue
        except OSError as e:
            raise ConfigError(f"{option} {path}: cannot write there ({e.strerror or type(e).__name__})") from None
        os.close(fd)
        os.unlink(tmp)
        return
    raise ConfigError(f"{option} {path}: cannot write there (its parent folders keep changing)")


def one_spelling(path: Union[str, Path]) -> Path:
    """The one spelling of a folder's path that run configs (and so run stamps) record: relative to the working
    directory when it lies inside it, else absolute, links resolved. ``--cache runs/x``, ``--cache ./runs/x`` and
    ``--cache $PWD/runs/x`` then name the same cached runs, and a cache inside a project keeps its runs when the
    project folder moves."""
    real, here = os.path.realpath(path), os.path.realpath(os.getcwd())
    return Path(os.path.relpath(real, here)) if real == here or real.startswith(here + os.sep) else Path(real)


def lock_path(path: Union[str, Path]) -> Path:
    """The lock file of the folder ``path`` (links resolved): ``.<name>.vitkd-lock`` beside it, so that nothing
    in the folder changes (a run folder holds run files only) and a folder never made stays absent."""
    real = Path(os.path.realpath(path))
    return real.parent / f".{real.name}.vitkd-lock"


@contextlib.contextmanager
def exclusive(path: Union[str, Path], option: str = "--out"):
    """One writer per folder: an exclusive ``flock`` on its :func:`lock_path` for the block. A folder that
    another process holds is refused in one line naming it (and that process). The kernel drops the lock when
    its process ends, however it ends, so a lock file left by a killed process blocks nobody. On release the
    lock file goes again, and so do the folders made to hold it: a command refused after taking the lock leaves
    everything as it was. The folder is checked writable first (:func:`ensure_writable`)."""
    path = Path(path)
    ensure_writable(path, option)
    lock = lock_path(path)
    held = contextlib.ExitStack()
    try:   # only taking the lock is worded here: errors of the block itself pass through
        held.enter_context(held_lock(lock, wait=False))
    except LockBusy as e:
        raise ConfigError(f"{option} {path}: another process is writing there"
                          f"{f' (pid {e.holder})' if e.holder else ''}; wait for it or choose another folder") from None
    except OSError as e:
        raise ConfigError(f"{option} {path}: cannot make its lock file {lock} "
                          f"({e.strerror or e})") from None
    with held:
        yield path
