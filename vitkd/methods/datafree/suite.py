"""Synthetic train sets in a suite: ``synthetic: {NAME: {config, teacher, set}}`` declares sets inverted from a suite
teacher (``vitkd synthesize`` configs, cached like a teacher), and a row's ``synthetic: NAME`` trains it on one (its
``data.synthetic``; the val/test splits stay the real dataset's). The set's job runs after the teacher it inverts, the
row's after the set."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

from ...compare.jobs import Job, SuitePlan, register_kind
from ...compare.suite import RowSpec, SuiteCfg, register_suite_check
from ...config import ConfigError, check_name, path_under, read_config, register_section, section
from .config import DATA_KEY
from ...teachers import ORIGINS

__all__ = ["SynthSpec", "KIND", "SUITE_KEY", "synth_dir"]

KIND = "synth"
SUITE_KEY = "synthetic"   # the suite's sets, and a row's set


@dataclass
class SynthSpec:
    """A synthetic train set inverted from a suite teacher (``vitkd synthesize``), cached like a teacher."""
    config: str                                         # a vitkd synthesize config (relative to the suite file)
    teacher: str                                        # the suite teacher it is inverted from
    set: Dict[str, Any] = field(default_factory=dict)   # overrides, dotted keys


def synth_dir(cache: Path, name: str) -> Path:
    return path_under(cache / "synth", name, key=f"suite.{SUITE_KEY}.{name}")


def _check_suite(suite: SuiteCfg) -> None:
    sets = section(suite, SUITE_KEY)
    for name, sy in sets.items():
        check_name(name, f"suite.{SUITE_KEY}.{name}", "synthetic set name")
        if sy.teacher not in suite.teachers:
            raise ConfigError(f"suite.{SUITE_KEY}.{name}.teacher: unknown suite teacher '{sy.teacher}'")
    for r in suite.rows:
        want = section(r, SUITE_KEY)
        if want is not None and want not in sets:
            raise ConfigError(f"suite.rows.{r.name}.{SUITE_KEY}: unknown suite synthetic set '{want}' "
                              f"(defined: {', '.join(sets) or 'none'})")


def _plan(plan: SuitePlan) -> None:
    """One job per suite set, after the teacher it inverts; rows on a set read it (and run after it)."""
    sets = section(plan.suite, SUITE_KEY)
    teacher_dirs = plan.teacher_dirs
    for name, sy in sets.items():
        raw = read_config(sy.config, plan.base, sy.set)
        teacher = raw.setdefault("teacher", {})
        for key in ("model", "args", *ORIGINS):   # the suite's teacher replaces the set config's own (a zoo entry)
            teacher.pop(key, None)
        teacher["checkpoint"] = str(teacher_dirs[sy.teacher])
        plan.jobs.append(Job(f"{KIND}/{name}", raw, synth_dir(plan.cache, name), [f"teachers/{sy.teacher}"],
                             kind=KIND, row=name))
    rows = {r.name: r for r in plan.suite.rows}
    for j in plan.with_role("row"):
        want = section(rows[j.row], SUITE_KEY) if j.row in rows else None
        if want is not None:
            j.raw.setdefault("data", {})[DATA_KEY] = str(synth_dir(plan.cache, want))
            j.deps.append(f"{KIND}/{want}")
            j.planned_inputs[f"data.{DATA_KEY}"] = f"{KIND}/{want}"


def _run(job: Job) -> None:
    from .config import parse_synth_config
    from .run import synthesize
    cfg = parse_synth_config(copy.deepcopy(job.raw))
    cfg.threads = None   # the worker's thread count stands
    synthesize(cfg, job.out, overwrite=True, log=lambda m: None)   # a partial set of the same fingerprint continues


def _is_done(job: Job) -> bool:
    """A complete synthetic set of this teacher's weights and these settings (its fingerprint)."""
    from .config import parse_synth_config
    from .run import is_synthesized
    try:
        cfg = parse_synth_config(copy.deepcopy(job.raw))
    except ConfigError:   # the teacher is not trained yet
        return False
    return is_synthesized(cfg, job.out)


def _check(job: Job, planned: Dict[str, Any]) -> None:
    from .config import parse_synth_config
    raw = copy.deepcopy(job.raw)
    if str(Path((raw.get("teacher") or {}).get("checkpoint", ""))) in planned:
        raw["teacher"].pop("checkpoint")
    parse_synth_config(raw)


register_section(SuiteCfg, SUITE_KEY, Dict[str, SynthSpec], default_factory=dict)
register_section(RowSpec, SUITE_KEY, Optional[str])
register_suite_check(_check_suite)
# after the rows are planned (it points them at their sets); its rows cannot be swept, nor published (their run
# config reads a set that only the suite's synth job makes)
register_kind(KIND, run=_run, is_done=_is_done, check=_check, plan=_plan, only_if_read=True, order=30,
              touches_row=lambda r: section(r, SUITE_KEY) is not None, sweeps=False, publishable=False)
