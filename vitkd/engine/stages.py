"""A sequence of runs, each a full run config trained into its own folder (torchdistill's multi-stage box: every
stage a single-stage config): every stage dry-built before the first trains (teachers of earlier stages built
untrained), then each reused (finished, unchanged), resumed (unfinished) or trained in order. A teacher checkpoint
written ``@<stage>`` is that earlier stage's run folder. Run kinds made of stages (a chain of teacher assistants,
m2mKD's pipeline) train through :func:`run_stages`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple

from ..config import ConfigError, parse_config, path_under, raw_teachers, to_dict
from ..rundir import RunDir

__all__ = ["run_stages", "resolve_stage_refs"]


def resolve_stage_refs(name: str, raw: dict, outs: Dict[str, Path]) -> dict:
    """A teacher checkpoint written ``@<stage>`` becomes that earlier stage's run folder."""
    for tname, t in raw_teachers(raw).items():
        ck = t.get("checkpoint") if isinstance(t, dict) else None
        if isinstance(ck, str) and ck.startswith("@"):
            ref = ck[1:]
            if ref not in outs:
                raise ConfigError(f"stage '{name}': teacher '{tname}' refers to '@{ref}', which is not "
                                  f"an earlier stage ({', '.join(outs) or 'none before it'})")
            t["checkpoint"] = str(outs[ref])
    return raw


def run_stages(stages: List[Tuple[str, dict]], out, base: Path, overwrite: bool = False, log=print,
               only: Optional[Set[str]] = None) -> List[dict]:
    """Run ``(name, raw config)`` stages in order into ``<out>/<name>/`` (teacher checkpoints ``@<stage>``
    already resolved or resolved here). Every stage is dry-built (teachers of earlier stages untrained) before
    the first trains; finished stages of an unchanged config are reused, unfinished ones resumed. ``only``:
    train just these stages (the others are built and checked, and must not be needed untrained)."""
    from .build import dry_build, planned_teachers
    from .loop import train
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
            raise ConfigError(f"stage '{name}': {e}") from None
        reads = [s for s, o in outs.items() if any(c is planned.get(str(o)) for c in teachers.values())]
        outs[name] = path_under(out, name, key="stage")
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
            log(f"stage '{name}': reusing {run.path}")
            finals.append(run.final())
            continue
        log(f"stage '{name}' -> {run.path}")
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
        raise ConfigError(f"stage '{name}': {run.path} would be replaced ({why}; use --overwrite)")
    return "train"
