"""Teacher-assistant chains: T -> TA -> S as consecutive distillations.

A chain file has a top-level ``chain:`` list; each stage is ``{name, config, set}`` (a vitkd train config,
relative to the chain file, plus dotted overrides). A teacher checkpoint written ``@<stage>`` means the
run folder of that earlier stage. Every stage is dry-built before the first trains. Stages run in order into
``<out>/<stage>/``; a finished stage whose config and teacher stages are unchanged is reused and an unfinished
one resumed, so an interrupted chain continues where it stopped; any other run in a stage's folder is replaced
only with ``--overwrite``.

Born-again generations (Furlanello et al., ICML 2018) are a shorthand for a chain of one architecture: an entry
``{name: gen, generations: N, config: ..., set: ..., distill: {terms: [...]}}`` expands into the ordinary stages
``gen0 .. gen<N-1>``. ``gen0`` trains as its config (and ``set``) says; generation k+1 is the same config whose
``distill.teachers`` is replaced by the one teacher ``teacher`` (default ``previous``) read from ``@gen<k>``, with
the entry's ``distill`` mapping (its terms, e.g. CE + KD) merged over the config's ``distill`` section, and (with
``reseed``, the default) trained at the config's seed + k: each generation a new network, its own initialisation and
data order, as in the paper (``reseed: false`` keeps one seed). Nothing else is new: the expanded stages are dry-built, reused and resumed as any stage, so a re-run retrains no finished
generation.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ...config import ConfigError, apply_overrides, build_dataclass, check_name, path_under, read_config, read_yaml
from ...engine.stages import resolve_stage_refs, run_stages

__all__ = ["SECTION", "run_chain", "train_chain", "expand_generations", "ChainStage", "ChainCfg"]


@dataclass
class ChainStage:
    name: str
    config: str
    set: Dict[str, Any] = field(default_factory=dict)
    generations: Optional[int] = None                       # born-again: this many stages <name>0 .. <name>N-1
    distill: Dict[str, Any] = field(default_factory=dict)   # born-again: the distill section of generations >= 1
    teacher: str = "previous"                               # born-again: the previous generation's teacher key
    reseed: bool = True                                     # born-again: generation k trains at the seed + k


@dataclass
class ChainCfg:
    chain: List[ChainStage] = field(default_factory=list)
    name: str = "chain"


# the top-level key of a chain file (its run kind is registered under it)
SECTION = "chain"


def _stage_raw(stage: ChainStage, base: Path, outs: Dict[str, Path], overrides: List[str]) -> dict:
    return resolve_stage_refs(stage.name, read_config(stage.config, base, stage.set, overrides=overrides), outs)


def expand_generations(stages: List[ChainStage]) -> List[Tuple[ChainStage, Optional[int], Optional[str]]]:
    """Each entry as ``(stage, None, None)``, a born-again entry as its generations ``(<name>k, k, previous stage
    name)``: generation k+1 reads generation k (see the module docstring)."""
    out: List[Tuple[ChainStage, Optional[int], Optional[str]]] = []
    for i, s in enumerate(stages):
        where = f"chain[{i}]"
        if s.generations is None:
            if s.distill:
                raise ConfigError(f"{where}.distill: the distill section of born-again generations >= 1; it needs "
                                  f"generations: N")
            out.append((s, None, None))
            continue
        if isinstance(s.generations, bool) or not isinstance(s.generations, int) or s.generations < 1:
            raise ConfigError(f"{where}.generations: expected an integer >= 1, got {s.generations!r}")
        if s.generations > 1 and not (s.distill or {}).get("terms"):
            raise ConfigError(f"{where}.distill.terms: generations >= 1 distil from the previous one and need their "
                              f"loss terms (e.g. [{{type: ce, weight: 0.5}}, {{type: kd, weight: 0.5}}])")
        if "teachers" in (s.distill or {}):
            raise ConfigError(f"{where}.distill.teachers: a generation's one teacher is the previous generation "
                              f"(named by teacher: {s.teacher!r}); give the terms only")
        check_name(s.teacher, f"{where}.teacher", "teacher key")
        prev = None
        for k in range(s.generations):
            gen = ChainStage(f"{s.name}{k}", s.config, dict(s.set), None, dict(s.distill), s.teacher, s.reseed)
            out.append((gen, k, prev))
            prev = gen.name
    return out


def _generation_raw(stage: ChainStage, generation: int, previous: Optional[str], base: Path, outs: Dict[str, Path],
                    overrides: List[str]) -> dict:
    """A born-again generation: its config (generations >= 1: with the previous generation as its one teacher and the
    entry's distill section merged over the config's), the ``--set`` overrides, then (``reseed``) the seed + k."""
    raw = read_config(stage.config, base, stage.set)
    if previous is not None:
        distill = dict(raw.get("distill") or {})
        distill.update(copy.deepcopy(stage.distill))
        distill["teachers"] = {stage.teacher: {"checkpoint": f"@{previous}"}}
        raw["distill"] = distill
    raw = apply_overrides(raw, list(overrides)) if overrides else raw
    if stage.reseed and generation:
        seed = raw.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"stage '{stage.name}': seed: expected an integer to add the generation to, got {seed!r}")
        raw["seed"] = seed + generation
    return resolve_stage_refs(stage.name, raw, outs)


def run_chain(path, out, overrides: List[str] = (), overwrite: bool = False, log=print) -> List[dict]:
    path = Path(path)
    chain = build_dataclass(ChainCfg, read_yaml(path), "", path.parent)
    if not chain.chain:
        raise ConfigError("chain: no stages")
    for i, s in enumerate(chain.chain):
        check_name(s.name, f"chain[{i}].name", "stage name")
    expanded = expand_generations(chain.chain)
    names = [s.name for s, _, _ in expanded]
    if len(set(names)) != len(names):
        raise ConfigError(f"chain: duplicate stage names in {names}")
    outs: Dict[str, Path] = {}
    stages = []
    for stage, generation, previous in expanded:
        raw = (_stage_raw(stage, path.parent, outs, list(overrides)) if generation is None
               else _generation_raw(stage, generation, previous, path.parent, outs, list(overrides)))
        stages.append((stage.name, raw))
        outs[stage.name] = path_under(out, stage.name, key="chain stage")
    return run_stages(stages, out, path.parent, overwrite, log)


def train_chain(path, out, overrides: List[str] = (), overwrite: bool = False, log=print) -> dict:
    """The chain's run kind: its stages, then each stage's final val/test top-1 (what ``vitkd train`` prints)."""
    finals = run_chain(path, out, overrides, overwrite=overwrite, log=log)
    return {"stages": [{k: f.get(k) for k in ("val_top1", "test_top1")} for f in finals]}
