"""Teacher-assistant chains: T -> TA -> S as consecutive distillations.

A chain file has a top-level ``chain:`` list; each stage is ``{name, config, set}`` (a vitkd train config,
relative to the chain file, plus dotted overrides). A teacher checkpoint written ``@<stage>`` means the
run folder of that earlier stage. Stages run in order into ``<out>/<stage>/``; a finished stage whose
config is unchanged is reused, so an interrupted chain continues where it stopped.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List

from .rundir import RunDir
from .config import ConfigError, apply_mapping, apply_overrides, build_dataclass, check_paths, parse_config, read_yaml, to_dict

__all__ = ["is_chain", "run_chain", "ChainStage"]


@dataclass
class ChainStage:
    name: str
    config: str
    set: Dict[str, Any] = field(default_factory=dict)


@dataclass
class ChainCfg:
    chain: List[ChainStage] = field(default_factory=list)
    name: str = "chain"


def is_chain(path) -> bool:
    raw = read_yaml(path)
    return isinstance(raw, dict) and "chain" in raw


def _stage_raw(stage: ChainStage, base: Path, outs: Dict[str, Path], overrides: List[str]) -> dict:
    raw = read_yaml(base / stage.config)
    raw = apply_mapping(raw, stage.set)
    raw = apply_overrides(raw, overrides)
    for tname, t in ((raw.get("distill") or {}).get("teachers") or {}).items():
        ck = t.get("checkpoint") if isinstance(t, dict) else None
        if isinstance(ck, str) and ck.startswith("@"):
            ref = ck[1:]
            if ref not in outs:
                raise ConfigError(f"chain stage '{stage.name}': teacher '{tname}' refers to '@{ref}', which is not "
                                  f"an earlier stage ({', '.join(outs) or 'none before it'})")
            t["checkpoint"] = str(outs[ref])
    return raw


def run_chain(path, out, overrides: List[str] = (), overwrite: bool = False, log=print) -> List[dict]:
    from .engine import train
    path = Path(path)
    chain = build_dataclass(ChainCfg, read_yaml(path), "", path.parent)
    if not chain.chain:
        raise ConfigError("chain: no stages")
    names = [s.name for s in chain.chain]
    if len(set(names)) != len(names):
        raise ConfigError(f"chain: duplicate stage names in {names}")
    out = Path(out)
    outs: Dict[str, Path] = {}
    plans = []
    for stage in chain.chain:   # check every stage's config before training anything
        raw = _stage_raw(stage, path.parent, outs, list(overrides))
        try:
            cfg = parse_config(raw, base=path.parent, paths=False)   # earlier stages are not trained yet
            for t in (cfg.distill.teachers.values() if cfg.distill else []):
                if t.checkpoint is not None and str(t.checkpoint).startswith(str(out)):
                    t.checkpoint = None   # an earlier stage's run folder: it exists once that stage ran
            check_paths(cfg)
        except ConfigError as e:
            raise ConfigError(f"chain stage '{stage.name}': {e}") from None
        outs[stage.name] = out / stage.name
        plans.append((stage, raw))
    finals = []
    for stage, raw in plans:
        run = RunDir(out / stage.name)
        cfg = parse_config(raw, base=path.parent)
        want = to_dict(cfg)
        if run.matches(want):
            log(f"chain stage '{stage.name}': reusing {run.path}")
            finals.append(run.final())
            continue
        resume = run.has_checkpoint() and not run.is_finished() and run.config_path.is_file() \
            and run.read_config() == want
        if run.holds_a_run() and not resume and not overwrite:
            raise ConfigError(f"chain stage '{stage.name}': {run.path} holds a run of another config "
                              f"(use --overwrite to replace it)")
        log(f"chain stage '{stage.name}' -> {run.path}")
        finals.append(train(cfg, run.path, resume=resume, overwrite=not resume, log=log))
    return finals
