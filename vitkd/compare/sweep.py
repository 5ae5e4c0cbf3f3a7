"""A suite sweep: every row and teacher repeated once per value of one recipe key.

The data-size study (``configs/compare/digits_datasize.yaml``) sweeps ``data.train_subset``. Each value ``v``
gives every teacher ``<name>_<v>`` and every row ``<row>_<v>``, trained on ``v`` images; a row reads the
teachers of its own value, is compared with the baseline of its own value (its size label gains ``@v``), and
the whole study is one family of comparisons unless the suite names others. The subset is the first ``v``
images of one fixed permutation of the train split (:func:`vitkd.data.digits_splits`), so the subsets are
nested, and a row and its baseline see the same images at every seed.

A zoo teacher is the same published model at every value, unless its entry name holds ``{value}``
(``zoo: fmnist-datasize-cnn_s-{value}``): then each value restores its own entry, a teacher trained on that
value's subset outside the suite's budget.

``hold: steps`` keeps the number of optimizer steps at every value (the recipe's, or the sweep's ``steps``):
epochs = steps / ceil(v / batch), and the warmup keeps its share of training; ``hold: epochs`` changes nothing
but the key.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..config import ConfigError, read_config
from .jobs import kinds_in_order
from .plan import recipe_of
from .suite import SuiteCfg, TeacherSpec

__all__ = ["expand_sweep", "held_settings", "per_value", "swept_names", "VALUE_FIELD"]


def _tag(value: float) -> str:
    return f"{value:g}"


def held_settings(raw: dict, key: str, value: float, hold: str, steps: Optional[int] = None) -> Dict[str, Any]:
    """The overrides that put a resolved run config ``raw`` at ``key = value`` (and, for ``hold: steps``,
    the epochs and warmup that keep its optimizer steps, or ``steps`` of them; the warmup keeps its share of
    the epochs)."""
    out: Dict[str, Any] = {key: int(value) if float(value).is_integer() else value}
    if hold != "steps":
        return out
    data, train = raw.get("data") or {}, raw.get("train") or {}
    n0, batch = data.get("train_subset"), int(data.get("batch_size", 64))
    if not n0:
        raise ConfigError("suite.sweep.hold: steps needs data.train_subset in the recipe (the size its epochs are "
                          "set for)")
    # the train loader drops the last partial batch only under mixup/CutMix (vitkd.engine.loop)
    mix = bool((data.get("mixup") or 0) or (data.get("cutmix") or 0))
    per_epoch = (lambda n: n // batch) if mix else (lambda n: math.ceil(n / batch))
    e0 = int(train["epochs"])
    held = steps if steps is not None else e0 * per_epoch(int(n0))
    epochs = max(1, int(round(held / per_epoch(int(value)))))
    out["train.epochs"] = epochs
    if train.get("warmup_epochs"):
        out["train.warmup_epochs"] = round(float(train["warmup_epochs"]) * epochs / e0, 3)
    return out


VALUE_FIELD = "{value}"   # in a zoo teacher's entry name: one published entry per swept value


def per_value(teacher: TeacherSpec) -> bool:
    """A zoo teacher whose entry name holds ``{value}``: the sweep restores ``name.replace("{value}", v)`` at each
    value ``v`` (written as the rows' size tags write it: ``1000``, ``0.5``)."""
    return teacher.zoo is not None and VALUE_FIELD in teacher.zoo


def _row_at(suite: SuiteCfg, r, value: float):
    """Row ``r`` as the sweep makes it at ``value`` (its settings unchanged): named ``<row>_<value>``, reading the
    teachers of that value (a published teacher shared by every value stays as it is), compared with the baseline
    of that value, its size label tagged, off the plot's curves."""
    tag = _tag(value)
    row = copy.deepcopy(r)
    row.name = f"{r.name}_{tag}"
    row.teachers = {k: t if suite.teachers[t].zoo and not per_value(suite.teachers[t]) else f"{t}_{tag}"
                    for k, t in r.teachers.items()}
    row.size = f"{r.size or ''}@{tag}"
    row.baseline = f"{r.baseline}_{tag}" if r.baseline else None
    row.curve = None
    row.sweep_value, row.sweep_of = float(value), r.name
    return row


def expand_sweep(suite: SuiteCfg, base: Path, quick: bool, tuned: Dict[str, Any], sized: Dict[str, Any]) -> SuiteCfg:
    """The suite with its sweep expanded (unchanged when it has none)."""
    sw = suite.sweep
    if sw is None or any(r.sweep_of for r in suite.rows):   # none, or expanded already
        return suite
    recipe, _ = recipe_of(suite, quick)
    for r in suite.rows:
        for kind in kinds_in_order():
            if not kind.sweeps and kind.touches_row is not None and kind.touches_row(r):
                raise ConfigError(f"suite.rows.{r.name}: a swept suite cannot hold rows of job kind '{kind.name}'")
    out = copy.deepcopy(suite)
    out.teachers, out.rows = {}, []
    for v in sw.values:
        tag = _tag(v)
        for name, t in suite.teachers.items():
            if t.zoo is not None and not per_value(t):   # a published teacher: the same one at every value
                out.teachers[name] = t
                continue
            if t.zoo is not None:   # one published teacher per value (trained outside the suite on that value)
                out.teachers[f"{name}_{tag}"] = TeacherSpec(
                    zoo=t.zoo.replace(VALUE_FIELD, tag), label=f"{t.label or name} ({tag})", family=t.family,
                    sweep_value=float(v), sweep_of=name)
                continue
            raw = read_config(t.config, base, recipe, sized, suite.teacher_set, tuned if t.tuned else {}, t.set)
            out.teachers[f"{name}_{tag}"] = TeacherSpec(
                config=t.config, set={**t.set, **held_settings(raw, sw.key, v, sw.hold, sw.steps)},
                distill_from={k: f"{src}_{tag}" for k, src in t.distill_from.items()},
                label=f"{t.label or name} ({tag})", family=t.family, tuned=t.tuned,
                sweep_value=float(v), sweep_of=name)
        for r in suite.rows:
            raw = read_config(r.config or suite.student, base, recipe, sized, tuned, r.set)
            row = _row_at(suite, r, v)
            row.set = {**r.set, **held_settings(raw, sw.key, v, sw.hold, sw.steps)}
            out.rows.append(row)
    out.quick.rows = [f"{m}_{_tag(v)}" for v in sw.values for m in suite.quick.rows]
    out.test_families = {fam: [f"{m}_{_tag(v)}" for v in sw.values for m in members]
                         for fam, members in suite.test_families.items()}
    return out


def swept_names(suite: SuiteCfg) -> SuiteCfg:
    """The suite's rows as its sweep names them (:func:`_row_at`), without the settings a run needs: what reading a swept suite's committed results
    needs (:mod:`.publish`). Unchanged when it has no sweep or is expanded already."""
    sw = suite.sweep
    if sw is None or any(r.sweep_of for r in suite.rows):
        return suite
    out = copy.deepcopy(suite)
    out.rows = [_row_at(suite, r, v) for v in sw.values for r in suite.rows]
    return out


def sweep_points(results: List[dict]) -> Dict[str, List[dict]]:
    """{base row: its result rows in sweep order} for the rows a sweep made."""
    by: Dict[str, List[dict]] = {}
    for r in results:
        if r.get("sweep_of"):
            by.setdefault(r["sweep_of"], []).append(r)
    return {k: sorted(v, key=lambda r: float(r["sweep_value"])) for k, v in by.items()}
