"""Training state on disk: what a checkpoint holds, per-rank RNG, and the resume policy."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import torch

from ..config import ConfigError
from ..io import atomic_torch_save
from ..rundir import RunDir

__all__ = ["rng_state", "set_rng_state", "save_checkpoint", "load_checkpoint", "RESUME_MAY_CHANGE",
           "resume_changes", "CHECKPOINT_VERSION"]

CHECKPOINT_VERSION = 2

# the only config keys a resume may change; each change is recorded in the run's metadata
RESUME_MAY_CHANGE = ("train.epochs", "train.lr", "train.eval_every", "train.checkpoint_every", "train.threads",
                     "train.progress", "data.num_workers")


def rng_state() -> dict:
    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.random.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.random.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def save_checkpoint(run: RunDir, state: Dict[str, Any]) -> None:
    atomic_torch_save({"version": CHECKPOINT_VERSION, **state}, run.checkpoint_path)


def load_checkpoint(path) -> dict:
    """A run folder's checkpoint, or a checkpoint file."""
    p = Path(path)
    if p.is_dir():
        p = RunDir(p).checkpoint_path
    if not p.is_file():
        raise ConfigError(f"checkpoint not found: {path}")
    try:
        return torch.load(p, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ConfigError(f"checkpoint {p}: cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None


def _flatten(d: Any, prefix: str = "") -> Dict[str, Any]:
    if isinstance(d, dict) and d:
        out = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: d}


def resume_changes(saved: dict, wanted: dict) -> Dict[str, Tuple[Any, Any]]:
    """The allowed differences between a run's own config and the one it is resumed with, as
    ``{key: (old, new)}``. A difference outside :data:`RESUME_MAY_CHANGE` is refused in one line."""
    from ..config import parse_config, to_dict
    try:   # read through today's schema: a key added since the run was saved takes its default
        saved = to_dict(parse_config(saved, paths=False))
    except ConfigError:
        pass   # a key since removed: compare as saved (the removed key is then named as differing)
    a, b = _flatten(saved), _flatten(wanted)
    changed: List[str] = [k for k in list(a) + [k for k in b if k not in a] if a.get(k, _MISSING) != b.get(k, _MISSING)]
    for key in changed:
        if key not in RESUME_MAY_CHANGE:
            raise ConfigError(f"--resume: {key} differs from the run's own config ({_show(a.get(key, _MISSING))} "
                              f"-> {_show(b.get(key, _MISSING))}); only {', '.join(RESUME_MAY_CHANGE)} may change "
                              f"on resume (start a new run, or --overwrite)")
    return {k: (a.get(k), b.get(k)) for k in changed}


class _Missing:
    def __repr__(self):
        return "<absent>"


_MISSING = _Missing()


def _show(v: Any) -> str:
    return repr(v) if not isinstance(v, _Missing) else "absent"
