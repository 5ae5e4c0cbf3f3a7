"""What both online teacher sources check of their config entry: the one origin key it sets, and its keys."""
from __future__ import annotations

from typing import Any, Dict, Iterable

from ...config import ConfigError, TeacherCfg, key_value
from ...teachers import ORIGINS

__all__ = ["only_origin", "section"]

# the TeacherCfg keys that configure a frozen teacher; every registered origin's key names another origin
FROZEN_KEYS = ("model", "checkpoint")


def only_origin(name: str, cfg: TeacherCfg, origin: str, what: str) -> None:
    """Refuse (one line naming the key) an entry that sets ``origin`` beside another origin or a frozen teacher's
    settings; ``what`` says why in a few words."""
    where = f"distill.teachers.{name}"
    for f in (*FROZEN_KEYS, *ORIGINS):
        if f != origin and key_value(cfg, f) is not None:
            raise ConfigError(f"{where}.{f}: {_a(origin)} teacher ({what}) takes no {f}")
    if cfg.args:
        raise ConfigError(f"{where}.args: {_a(origin)} teacher takes no args (give them under {origin})")
    if cfg.bf16:
        raise ConfigError(f"{where}.bf16: {_a(origin)} teacher runs in the step's precision (train.precision)")


def section(name: str, cfg: TeacherCfg, origin: str, keys: Iterable[str]) -> Dict[str, Any]:
    """The ``origin`` mapping of teacher ``name``, its keys checked against ``keys``."""
    where = f"distill.teachers.{name}.{origin}"
    value = key_value(cfg, origin)
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping ({', '.join(keys)}), got {value!r}")
    unknown = sorted(set(value) - set(keys))
    if unknown:
        raise ConfigError(f"{where}: unknown key '{unknown[0]}' (valid: {', '.join(keys)})")
    return dict(value)


def _a(word: str) -> str:
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"
