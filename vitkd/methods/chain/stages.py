"""Teacher-assistant chains: T -> TA -> S as consecutive distillations.

A chain file has a top-level ``chain:`` list; each stage is ``{name, config, set}`` (a vitkd train config,
relative to the chain file, plus dotted overrides). A teacher checkpoint written ``@<stage>`` means the
run folder of that earlier stage. Every stage is dry-built before the first trains. Stages run in order into
``<out>/<stage>/``; a finished stage whose config and teacher stages are unchanged is reused and an unfinished
one resumed, so an interrupted chain continues where it stopped; any other run in a stage's folder is replaced
only with ``--overwrite``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List

from ...config import ConfigError, build_dataclass, check_name, path_under, read_config, read_yaml
from ...engine.stages import resolve_stage_refs, run_stages

__all__ = ["SECTION", "run_chain", "train_chain", "ChainStage", "ChainCfg"]


@dataclass
class ChainStage:
    name: str
    config: str
    set: Dict[str, Any] = field(default_factory=dict)


@dataclass
class ChainCfg:
    chain: List[ChainStage] = field(default_factory=list)
    name: str = "chain"


# the top-level key of a chain file (its run kind is registered under it)
SECTION = "chain"


def _stage_raw(stage: ChainStage, base: Path, outs: Dict[str, Path], overrides: List[str]) -> dict:
    return resolve_stage_refs(stage.name, read_config(stage.config, base, stage.set, overrides=overrides), outs)


def run_chain(path, out, overrides: List[str] = (), overwrite: bool = False, log=print) -> List[dict]:
    path = Path(path)
    chain = build_dataclass(ChainCfg, read_yaml(path), "", path.parent)
    if not chain.chain:
        raise ConfigError("chain: no stages")
    names = [check_name(s.name, f"chain[{i}].name", "stage name") for i, s in enumerate(chain.chain)]
    if len(set(names)) != len(names):
        raise ConfigError(f"chain: duplicate stage names in {names}")
    outs: Dict[str, Path] = {}
    stages = []
    for stage in chain.chain:
        stages.append((stage.name, _stage_raw(stage, path.parent, outs, list(overrides))))
        outs[stage.name] = path_under(out, stage.name, key="chain stage")
    return run_stages(stages, out, path.parent, overwrite, log)


def train_chain(path, out, overrides: List[str] = (), overwrite: bool = False, log=print) -> dict:
    """The chain's run kind: its stages, then each stage's final val/test top-1 (what ``vitkd train`` prints)."""
    finals = run_chain(path, out, overrides, overwrite=overwrite, log=log)
    return {"stages": [{k: f.get(k) for k in ("val_top1", "test_top1")} for f in finals]}
