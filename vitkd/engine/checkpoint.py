"""Training state on disk: what a checkpoint holds, per-rank RNG, and the resume policy.

A checkpoint is read with ``torch.load(weights_only=True)``: it holds tensors and plain values only (dicts,
lists, strings, numbers), so loading one runs no code whatever the file holds. The Python and NumPy RNG states
are stored as tensors and plain values for that (:func:`rng_state`). Checkpoints of format 2 (vitkd before
this change) hold NumPy objects the safe loader refuses; ``vitkd convert-checkpoint OLD NEW --trust``
rewrites a copy you trust (it is the one place that loads a pickle with the unsafe loader, and only when told
``--trust``)."""
from __future__ import annotations

import io
import random
import re
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from ..config import ConfigError
from ..io import atomic_torch_save, atomic_write_bytes
from ..rundir import RunDir

__all__ = ["rng_state", "set_rng_state", "save_checkpoint", "load_checkpoint", "convert_checkpoint",
           "RESUME_MAY_CHANGE", "resume_changes", "CHECKPOINT_VERSION", "CHECKPOINT_KEYS"]

# 3: RNG states as tensors and plain values (read with weights_only=True); 2: NumPy's RNG state pickled
CHECKPOINT_VERSION = 3

# what every checkpoint holds (the training loop writes all of them)
CHECKPOINT_KEYS = ("version", "config", "epoch", "epoch_done", "step_in_epoch", "sums", "seen", "student",
                   "connectors", "optimizer", "scheduler", "ema", "rng", "history", "num_classes", "data_order")

CONVERT_HINT = "vitkd convert-checkpoint OLD NEW --trust"

# the only config keys a resume may change; each change is recorded in the run's metadata
RESUME_MAY_CHANGE = ("train.epochs", "train.lr", "train.eval_every", "train.checkpoint_every", "train.threads",
                     "train.progress", "data.num_workers")


def _storable_rng(python: tuple, numpy: tuple, torch_state: torch.Tensor,
                  cuda: Optional[List[torch.Tensor]] = None) -> dict:
    """RNG states as tensors and plain values (what ``weights_only=True`` reads): Python's
    ``random.getstate()``, NumPy's legacy ``np.random.get_state()`` tuple, torch's CPU and CUDA states."""
    py_version, py_words, gauss_next = python
    bit_generator, key, pos, has_gauss, cached_gaussian = numpy
    st = {"python": {"version": int(py_version), "state": torch.tensor(py_words, dtype=torch.int64),
                     "gauss_next": None if gauss_next is None else float(gauss_next)},
          "numpy": {"bit_generator": str(bit_generator), "key": torch.from_numpy(np.asarray(key, dtype=np.int64)),
                    "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
          "torch": torch_state}
    if cuda is not None:
        st["cuda"] = list(cuda)
    return st


def rng_state() -> dict:
    return _storable_rng(random.getstate(), np.random.get_state(), torch.random.get_rng_state(),
                         torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)


def set_rng_state(st: dict) -> None:
    py, npst = st["python"], st["numpy"]
    random.setstate((py["version"], tuple(int(w) for w in py["state"].tolist()), py["gauss_next"]))
    np.random.set_state((npst["bit_generator"], npst["key"].numpy().astype(np.uint32), npst["pos"],
                         npst["has_gauss"], npst["cached_gaussian"]))
    torch.random.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def save_checkpoint(run: RunDir, state: Dict[str, Any]) -> None:
    atomic_torch_save({"version": CHECKPOINT_VERSION, **state}, run.checkpoint_path)


def _safe_load(source, where) -> Any:
    """``torch.load(weights_only=True)`` of a file or buffer: tensors and plain values, no code run. A refusal
    is one line naming the Python object the file asked for, with the way to convert a trusted copy."""
    try:
        with warnings.catch_warnings():   # torch warns about pickle protocols: the error below says it all
            warnings.simplefilter("ignore")
            return torch.load(source, map_location="cpu", weights_only=True)
    except Exception as e:
        import pickle
        if not isinstance(e, pickle.UnpicklingError):
            first = (str(e).strip().splitlines() or [""])[0][:120]
            raise ConfigError(f"checkpoint {where}: cannot be read ({type(e).__name__}: {first})") from None
        named = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"it names the Python object {named.group(1)}" if named else "it is not tensors and plain values"
        raise ConfigError(f"checkpoint {where}: refused by the safe loader ({what}; loading it could run code); "
                          f"a checkpoint of an older vitkd can be converted from a copy you trust: "
                          f"{CONVERT_HINT}") from None


def _checked(ck: Any, where) -> dict:
    """A loaded checkpoint of this format with every key, else one line naming what is wrong."""
    if not isinstance(ck, dict):
        raise ConfigError(f"checkpoint {where}: not a vitkd checkpoint (a {type(ck).__name__}, not a dict)")
    missing = [k for k in CHECKPOINT_KEYS if k not in ck]
    if missing:
        raise ConfigError(f"checkpoint {where}: missing key '{missing[0]}' (not a complete vitkd checkpoint)")
    if ck["version"] != CHECKPOINT_VERSION:
        raise ConfigError(f"checkpoint {where}: format {ck['version']!r}, this vitkd reads format "
                          f"{CHECKPOINT_VERSION}" + (f" (convert a copy you trust: {CONVERT_HINT})"
                                                     if ck["version"] == 2 else ""))
    return ck


def load_checkpoint(path) -> dict:
    """A run folder's checkpoint, or a checkpoint file, read with the safe loader (no code runs)."""
    p = Path(path)
    if p.is_dir():
        p = RunDir(p).checkpoint_path
    if not p.is_file():
        raise ConfigError(f"checkpoint not found: {path}")
    return _checked(_safe_load(p, p), p)


def convert_checkpoint(old, new, trust: bool = False) -> Path:
    """A format-2 checkpoint (NumPy's RNG state pickled) rewritten as format 3, which the safe loader reads.
    Reading ``old`` uses the unsafe loader, which runs whatever code the file holds: only with ``trust``, for
    a file of your own. ``new`` is written atomically, and only once it reads back with the safe loader."""
    old, new = Path(old), Path(new)
    if not trust:
        raise ConfigError(f"convert-checkpoint: reading {old} runs any code it holds: give --trust, and only for "
                          f"a checkpoint you made yourself")
    if not old.is_file():
        raise ConfigError(f"convert-checkpoint: {old} not found")
    try:
        ck = torch.load(old, map_location="cpu", weights_only=False)
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0][:120]
        raise ConfigError(f"convert-checkpoint: {old} cannot be read ({type(e).__name__}: {first})") from None
    if not isinstance(ck, dict) or ck.get("version") not in (2, CHECKPOINT_VERSION) or "rng" not in ck:
        raise ConfigError(f"convert-checkpoint: {old} is not a vitkd checkpoint of format 2 or {CHECKPOINT_VERSION}")
    if ck["version"] == 2:
        rngs = ck["rng"]
        ranks = [_storable_rng(r["python"], r["numpy"], r["torch"], r.get("cuda"))
                 for r in (rngs if isinstance(rngs, list) else [rngs])]
        ck = {**ck, "version": CHECKPOINT_VERSION, "rng": ranks if isinstance(rngs, list) else ranks[0]}
    buf = io.BytesIO()
    torch.save(ck, buf)
    _checked(_safe_load(io.BytesIO(buf.getvalue()), old), old)   # what is written reads back safely
    atomic_write_bytes(new, buf.getvalue())
    return new


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
