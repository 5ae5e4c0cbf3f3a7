"""The run folder: the one definition of what a training run leaves on disk, and the one reuse rule.

A run folder holds:

==========================  ==========================================================================
``config.yaml``             the validated config the run was started with (resume policy compares it)
``run.yaml``                metadata: classes, input spec, versions, world size, resume history
``metrics.csv/.json``       one row per epoch; ``metrics.json["final"]`` is the last
``checkpoint.pt``           the latest training state (atomic; resume continues from it)
``model.safetensors``       the exported student (and ``model_ema.safetensors`` with EMA)
``predictions_<split>.*``   per-image logits, predictions and targets of the final evaluation
``stamp.json``              written LAST: the run finished; what made it (config digest, versions)
==========================  ==========================================================================

Everything else in vitkd (engine, chain, compare, eval, stats, zoo, logit stores) reads and writes run
folders through :class:`RunDir`; no other module spells these file names.

Reuse rule: a finished run is reused for a config when its stamp equals :meth:`RunDir.stamp_for` of that
config: the digest of the config (keys that cannot change results left out), the vitkd version and
:data:`BEHAVIOUR_VERSION`, which is bumped whenever a default changes what a run computes.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Tuple, Union

import yaml

from .config import ConfigError
from .io import atomic_save_safetensors, atomic_write_csv, atomic_write_json, atomic_write_text

__all__ = ["RunDir", "BEHAVIOUR_VERSION", "NON_RESULT_KEYS", "LATER_KEYS", "config_digest"]

# History of behaviour changes (bump on every default that changes what a run computes):
#   1  the first comparison suites
#   2  ViTKD's deep target and generator input are taken after the final norm (as in cls_KD)
BEHAVIOUR_VERSION = 2

# config keys that never change a run's numbers: left out of the reuse digest
NON_RESULT_KEYS = ("train.progress", "train.threads", "data.num_workers")

# config keys added after runs were already stamped, with the default they had implicitly before: while a
# config holds that default the key is left out of the digest (old stamps stay valid), and a saved config
# that lacks the key reads as having it (an older run resumes)
LATER_KEYS = {"train.sync_bn": False}


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


def _get_dotted(raw: dict, key: str, default=None):
    node: Any = raw
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def config_digest(config: dict) -> str:
    """sha256 of a (validated, dict-form) config, keys in :data:`NON_RESULT_KEYS` left out, and keys of
    :data:`LATER_KEYS` while they hold their implicit default."""
    at_default = [k for k, v in LATER_KEYS.items() if _get_dotted(config, k, v) == v]
    body = json.dumps(_without(config, NON_RESULT_KEYS + tuple(at_default)), sort_keys=True, default=str)
    return hashlib.sha256(body.encode()).hexdigest()


class RunDir:
    CONFIG = "config.yaml"
    META = "run.yaml"
    METRICS_CSV = "metrics.csv"
    METRICS_JSON = "metrics.json"
    CHECKPOINT = "checkpoint.pt"
    WEIGHTS = "model.safetensors"
    EMA_WEIGHTS = "model_ema.safetensors"
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

    def predictions_path(self, split: str) -> Path:
        return self.path / self.PREDICTIONS.format(split=split)

    def run_files(self) -> Tuple[str, ...]:
        """Every file name a run may write (the ones a fresh start clears)."""
        return (self.STAMP, self.WEIGHTS, self.EMA_WEIGHTS, self.CHECKPOINT, self.METRICS_CSV, self.METRICS_JSON,
                self.META, self.CONFIG) + tuple(self.PREDICTIONS.format(split=s) for s in ("val", "test"))

    # ------------------------------------------------------------------ state
    def exists(self) -> bool:
        return self.path.is_dir()

    def has_checkpoint(self) -> bool:
        return self.checkpoint_path.is_file()

    def is_finished(self) -> bool:
        return (self.path / self.STAMP).is_file() and self.weights_path.is_file()

    def holds_a_run(self) -> bool:
        """Anything a run writes is there (finished or not)."""
        return any((self.path / n).exists() for n in (self.STAMP, self.WEIGHTS, self.CHECKPOINT, self.CONFIG))

    def clear(self) -> None:
        """Remove a previous run's files, the stamp and weights first, so an interrupted overwrite can never
        leave a folder that reads as the old, finished run. Stray temp files of killed writes go too."""
        for name in self.run_files():
            with contextlib.suppress(FileNotFoundError):
                (self.path / name).unlink()
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
        return yaml.safe_load(self.config_path.read_text()) or {}

    def write_config(self, config: dict) -> None:
        atomic_write_text(self.config_path, yaml.safe_dump(config, sort_keys=False))

    def read_meta(self) -> dict:
        p = self.path / self.META
        return (yaml.safe_load(p.read_text()) or {}) if p.is_file() else {}

    def write_meta(self, meta: dict) -> None:
        atomic_write_text(self.path / self.META, yaml.safe_dump(meta, sort_keys=False))

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

    def finished_weights(self) -> Path:
        if not self.is_finished():
            raise ConfigError(f"checkpoint: run folder {self.path} holds no finished run "
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
        from . import __version__
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


def ensure_writable(path: Path) -> None:
    """One line naming the folder when it cannot be created or written."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--out {path}: cannot create the folder ({e.strerror})") from None
    if not os.access(path, os.W_OK):
        raise ConfigError(f"--out {path}: the folder is not writable")
