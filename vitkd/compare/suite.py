"""The suite YAML: its schema (teachers, rows, recipe, tuning, quick mode, families of comparisons,
taxonomy) and loading with one-line errors."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple


from ..config import ConfigError, build_dataclass, read_yaml


@dataclass
class TeacherSpec:
    config: str                                         # a vitkd train config (relative to the suite file)
    set: Dict[str, Any] = field(default_factory=dict)   # overrides, dotted keys
    distill_from: Dict[str, str] = field(default_factory=dict)  # teacher-assistant: {teacher key in config: suite teacher}
    label: Optional[str] = None
    family: str = "teacher"
    tuned: bool = False                                 # also gets the knob tuned for the no-KD student


@dataclass
class RowSpec:
    name: str
    family: str                                         # none | logit | token | patch | feature | minivit | hetero
    group: str = "homomorphic"                          # baseline | homomorphic | heteromorphic | capacity
    config: Optional[str] = None                        # defaults to the suite's student config
    set: Dict[str, Any] = field(default_factory=dict)
    teachers: Dict[str, str] = field(default_factory=dict)   # {teacher key in config: suite teacher}
    size: Optional[str] = None                          # student size label (for the MACs sweep)
    baseline: Optional[str] = None                      # row compared against (default: no-KD of the same size)
    curve: Optional[str] = None                         # rows sharing a curve are joined in pareto.png (size sweeps)
    pipeline: Optional[str] = None                      # trained by a pipeline of stages (m2mkd; vitkd.compare.pipelines)


@dataclass
class TuneSpec:
    key: str = "train.lr"
    values: List[Any] = field(default_factory=list)
    seed: int = 0


@dataclass
class QuickSpec:
    seeds: List[int] = field(default_factory=lambda: [0])
    set: Dict[str, Any] = field(default_factory=dict)
    teacher_set: Dict[str, Any] = field(default_factory=dict)   # applied to teachers after the suite's
    tune: bool = False


@dataclass
class SuiteCfg:
    name: str
    student: str                                        # the no-KD student config (the recipe)
    seeds: List[int] = field(default_factory=lambda: [0, 1, 2])
    set: Dict[str, Any] = field(default_factory=dict)   # the recipe, applied to every run (teachers too)
    teacher_set: Dict[str, Any] = field(default_factory=dict)   # applied to teachers only
    tune: Optional[TuneSpec] = None
    quick: QuickSpec = field(default_factory=QuickSpec)
    teachers: Dict[str, TeacherSpec] = field(default_factory=dict)
    rows: List[RowSpec] = field(default_factory=list)
    jobs: int = 2
    # families of comparisons, Holm-corrected together: {family: [row, ...]}; rows not named: "main"
    test_families: Dict[str, List[str]] = field(default_factory=dict)
    alpha: float = 0.05
    # the taxonomy the report and plots use: group order, a colour per method family, the family of the
    # no-distillation baselines (a row's default baseline: that family's row at the same student size),
    # and families that are references rather than methods (not named among the best rows in the plot)
    groups: List[str] = field(default_factory=list)
    family_colors: Dict[str, str] = field(default_factory=dict)
    baseline_family: str = "none"
    reference_families: List[str] = field(default_factory=list)


def load_suite(path) -> Tuple[SuiteCfg, Path]:
    path = Path(path)
    raw = read_yaml(path)
    suite = build_dataclass(SuiteCfg, raw, "suite")
    names = [r.name for r in suite.rows]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ConfigError(f"suite.rows: duplicate row name '{sorted(dup)[0]}'")
    for r in suite.rows:
        for key, t in r.teachers.items():
            if t not in suite.teachers:
                raise ConfigError(f"suite.rows.{r.name}.teachers.{key}: unknown suite teacher '{t}' "
                                  f"(defined: {', '.join(suite.teachers)})")
    for fam, members in suite.test_families.items():
        for m in members:
            if m not in names:
                raise ConfigError(f"suite.test_families.{fam}: unknown row '{m}'")
    for name, t in suite.teachers.items():
        for key, src in t.distill_from.items():
            if src not in suite.teachers or src == name:
                raise ConfigError(f"suite.teachers.{name}.distill_from.{key}: unknown suite teacher '{src}'")
    return suite, path.parent
