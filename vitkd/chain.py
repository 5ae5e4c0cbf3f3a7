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
from typing import Any, Dict, List, Optional, Set, Tuple

from .rundir import RunDir
from .config import (ConfigError, build_dataclass, check_name, parse_config, path_under, raw_teachers, read_config,
                     read_yaml, to_dict)

__all__ = ["is_chain", "run_chain", "run_stages", "resolve_stage_refs", "ChainStage"]


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
    return resolve_stage_refs(stage.name, read_config(stage.config, base, stage.set, overrides=overrides), outs)


def resolve_stage_refs(name: str, raw: dict, outs: Dict[str, Path]) -> dict:
    """A teacher checkpoint written ``@<stage>`` becomes that earlier stage's run folder."""
    for tname, t in raw_teachers(raw).items():
        ck = t.get("checkpoint") if isinstance(t, dict) else None
        if isinstance(ck, str) and ck.startswith("@"):
            ref = ck[1:]
            if ref not in outs:
                raise ConfigError(f"chain stage '{name}': teacher '{tname}' refers to '@{ref}', which is not "
                                  f"an earlier stage ({', '.join(outs) or 'none before it'})")
            t["checkpoint"] = str(outs[ref])
    return raw


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


def run_stages(stages: List[Tuple[str, dict]], out, base: Path, overwrite: bool = False, log=print,
               only: Optional[Set[str]] = None) -> List[dict]:
    """Run ``(name, raw config)`` stages in order into ``<out>/<name>/`` (teacher checkpoints ``@<stage>``
    already resolved or resolved here). Every stage is dry-built (teachers of earlier stages untrained) before
    the first trains; finished stages of an unchanged config are reused, unfinished ones resumed. ``only``:
    train just these stages (the others are built and checked, and must not be needed untrained)."""
    from .engine import train
    from .engine.build import dry_build, planned_teachers
    out = Path(out)
    outs: Dict[str, Path] = {}
    planned: Dict[str, Any] = {}   # run folder of an earlier stage -> its config
    plans = []
    for name, raw in stages:   # build every stage (teachers of earlier stages untrained) before training any
        raw = resolve_stage_refs(name, raw, outs)
        stripped, teachers = planned_teachers(raw, planned)
        try:
            cfg = parse_config(stripped, base=base)
            dry_build(cfg, teachers)
        except ConfigError as e:
            raise ConfigError(f"chain stage '{name}': {e}") from None
        reads = [s for s, o in outs.items() if any(c is planned.get(str(o)) for c in teachers.values())]
        outs[name] = path_under(out, name, key="chain stage")
        if not RunDir(outs[name]).matches(to_dict(cfg)) or teachers:
            planned[str(outs[name])] = cfg
        plans.append((name, raw, reads))
    actions: Dict[str, str] = {}
    for name, raw, reads in plans:   # what each stage does, refused before anything trains
        actions[name] = _stage_action(name, RunDir(outs[name]), raw, base, overwrite,
                                      [r for r in reads if actions[r] != "reuse"])
    finals = []
    for name, raw, _ in plans:
        if only is not None and name not in only:
            continue
        run = RunDir(outs[name])
        if actions[name] == "reuse":
            log(f"chain stage '{name}': reusing {run.path}")
            finals.append(run.final())
            continue
        log(f"chain stage '{name}' -> {run.path}")
        resume = actions[name] == "resume"
        finals.append(train(parse_config(raw, base=base), run.path, resume=resume, overwrite=not resume, log=log))
    return finals


def _stage_action(name: str, run: RunDir, raw: dict, base: Path, overwrite: bool, retrained: List[str]) -> str:
    """``reuse`` a finished run of this config, ``resume`` an unfinished one, or ``train`` (a folder holding
    any other run, or a run whose teacher stage is trained again, is replaced only with ``overwrite``)."""
    if not run.holds_a_run():
        return "train"
    try:
        want = to_dict(parse_config(raw, base=base))
    except ConfigError:   # a teacher stage's folder is not there: this folder holds a run of something else
        want = None
    if want is not None and not retrained:
        if run.matches(want):
            return "reuse"
        if run.has_checkpoint() and run.config_path.is_file() and not run.is_finished() and run.read_config() == want:
            return "resume"
    if not overwrite:
        why = f"its teacher stage '{retrained[0]}' trains again" if retrained else "it holds a run of another config"
        raise ConfigError(f"chain stage '{name}': {run.path} would be replaced ({why}; use --overwrite)")
    return "train"
