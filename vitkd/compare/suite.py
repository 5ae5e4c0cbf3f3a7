"""The suite YAML: its schema (teachers, rows, recipe, tuning, quick mode, families of comparisons,
taxonomy) and loading with one-line errors."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple


from ..config import ConfigError, build_dataclass, check_name, check_seed, read_yaml, sections_field


@dataclass
class TeacherSpec:
    config: Optional[str] = None                        # a vitkd train config (relative to the suite file), or
    zoo: Optional[str] = None                           # a published zoo entry, restored (verified), never trained
    set: Dict[str, Any] = field(default_factory=dict)   # overrides, dotted keys
    distill_from: Dict[str, str] = field(default_factory=dict)  # teacher-assistant: {teacher key in config: suite teacher}
    label: Optional[str] = None
    family: str = "teacher"
    tuned: bool = False                                 # also gets the knob tuned for the no-KD student
    sweep_value: Optional[float] = None                 # set by a suite sweep: the value, and the teacher it
    sweep_of: Optional[str] = None                      # was expanded from

    def __post_init__(self):
        if (self.config is None) == (self.zoo is None):
            raise ConfigError("suite.teachers: give a teacher either config (trained by the suite) or zoo (a published "
                              f"entry, restored), not {'both' if self.config else 'neither'}")
        if self.zoo is not None and (self.set or self.distill_from or self.tuned):
            raise ConfigError(f"suite.teachers: the zoo teacher {self.zoo} is restored as published; set, distill_from "
                              "and tuned apply to teachers the suite trains")


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
    sections: Dict[str, Any] = sections_field()   # keys methods declare
    sweep_value: Optional[float] = None                 # set by a suite sweep (vitkd.compare.sweep): the value
    sweep_of: Optional[str] = None                      # ... and the row it was expanded from


@dataclass
class KnobSpec:
    values: List[float]
    scale: str = "linear"                 # linear | log: how the grid is extended past an edge
    min: Optional[float] = None           # bounds an extension may not cross
    max: Optional[float] = None

    def __post_init__(self):
        if len(self.values) < 3:
            raise ConfigError(f"suite.tune.knobs: a grid needs at least 3 values to have an interior, got {self.values}")
        if self.scale not in ("linear", "log"):
            raise ConfigError(f"suite.tune.knobs: scale must be linear or log, got {self.scale!r}")
        if self.scale == "log" and min(self.values) <= 0:
            raise ConfigError(f"suite.tune.knobs: a log-scale grid needs positive values, got {self.values}")
        self.values = sorted(float(v) for v in self.values)

    def extend(self, grid: List[float], upward: bool) -> Optional[float]:
        """The next value past the grid's top (``upward``) or bottom edge, or None at a bound."""
        a, b = (grid[-2], grid[-1]) if upward else (grid[1], grid[0])
        v = b * (b / a) if self.scale == "log" else b + (b - a)
        v = float(f"{v:.6g}")
        if (self.min is not None and v < self.min) or (self.max is not None and v > self.max):
            return None
        return v


@dataclass
class FamilyKnobSpec:
    """A method family's main knob, tuned on its row: one parameter of the row's loss terms of one type (their
    weight, a temperature), over ``values`` (the paper's default among them), one seed, validation only."""
    term: str                             # the loss-term type whose parameter is set (every such term of the row)
    param: str                            # weight, T, ...
    values: List[float] = field(default_factory=list)

    def __post_init__(self):
        if len(self.values) < 3:
            raise ConfigError(f"suite.tune.families: {self.term}.{self.param}: three values or more, got {self.values}")
        self.values = sorted(float(v) for v in self.values)


@dataclass
class TuneSpec:
    knobs: Dict[str, KnobSpec] = field(default_factory=dict)   # dotted recipe key -> grid, in search order
    seeds: List[int] = field(default_factory=lambda: [0, 1])
    rounds: int = 1
    max_extend: int = 2
    epochs: List[float] = field(default_factory=lambda: [1, 2, 4])   # multiples of train.epochs reported
    sizes: List[int] = field(default_factory=list)                   # data.train_subset values scanned
    size_seeds: List[int] = field(default_factory=lambda: [0, 1, 2])
    reference: Optional[str] = None        # the suite row of the CNN reference (no teacher)
    max_std: float = 3.0
    min_gap: float = 10.0
    # the warm-up across sizes: "epochs" keeps train.warmup_epochs as written; "steps" scales it like the epochs,
    # so every size warms up for the same optimizer steps
    size_warmup: str = "epochs"
    # {row: its family's main knob}, tuned after the recipe and the size, at seed ``family_seed``; `vitkd compare`
    # trains the row with the chosen value
    families: Dict[str, FamilyKnobSpec] = field(default_factory=dict)
    family_seed: int = 0

    def __post_init__(self):
        if len(self.seeds) < 2:
            raise ConfigError(f"suite.tune.seeds: tune with at least 2 seeds, got {self.seeds}")
        if self.rounds < 1 or self.max_extend < 0:
            raise ConfigError("suite.tune: rounds must be >= 1 and max_extend >= 0")
        if self.size_warmup not in ("epochs", "steps"):
            raise ConfigError(f"suite.tune.size_warmup: must be epochs or steps, got {self.size_warmup!r}")


@dataclass
class SweepSpec:
    """Every row and teacher, once per value of one recipe key (:mod:`vitkd.compare.sweep`): the data-size
    study sweeps ``data.train_subset``."""
    key: str                                            # a dotted recipe key
    values: List[float] = field(default_factory=list)
    hold: str = "steps"                                 # steps: epochs rescaled so optimizer steps stay the same
    steps: Optional[int] = None                         # hold: steps: the steps held (default: the recipe's)
    label: Optional[str] = None                         # axis label of the sweep plot (default: the key)

    def __post_init__(self):
        if len(self.values) < 2:
            raise ConfigError(f"suite.sweep.values: a sweep needs at least 2 values, got {self.values}")
        if self.hold not in ("steps", "epochs"):
            raise ConfigError(f"suite.sweep.hold: must be steps or epochs, got {self.hold!r}")
        if self.steps is not None and (self.hold != "steps" or self.steps < 1):
            raise ConfigError(f"suite.sweep.steps: a positive step count, with hold: steps (got {self.steps})")
        if self.hold == "steps" and self.key != "data.train_subset":
            raise ConfigError(f"suite.sweep.hold: steps is defined for data.train_subset, not {self.key}")


@dataclass
class QuickSpec:
    seeds: List[int] = field(default_factory=lambda: [0])
    rows: List[str] = field(default_factory=list)               # the rows quick mode runs (default: all)
    set: Dict[str, Any] = field(default_factory=dict)
    teacher_set: Dict[str, Any] = field(default_factory=dict)   # applied to teachers after the suite's


@dataclass
class SuiteCfg:
    name: str
    student: str                                        # the no-KD student config (the recipe)
    # another suite (by name) whose tuning record and run cache this one uses: a suite that extends the
    # main one (``base: digits.yaml``) with more rows reuses its teachers and baselines instead of retraining
    shares: Optional[str] = None
    # another suite whose tuning record (only) this one reads, with a run cache of its own (the studies)
    tuning_of: Optional[str] = None
    sweep: Optional[SweepSpec] = None                   # rows and teachers repeated over one recipe key
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
    sections: Dict[str, Any] = sections_field()   # keys methods declare

    @property
    def home(self) -> str:
        """The name the run cache is kept under."""
        return self.shares or self.name

    def baseline_of(self, row: RowSpec, among=None) -> Optional[str]:
        """The row a row is compared with: the one it names, else the baseline family's row at its student
        size (the first in the suite's order; among the names ``among`` when given)."""
        if row.baseline:
            return row.baseline
        return next((x.name for x in self.rows if x.family == self.baseline_family
                     and (x.size or "") == (row.size or "") and (among is None or x.name in among)), None)

    @property
    def tuning_home(self) -> str:
        """The name of the suite whose tuning record this one reads."""
        return self.tuning_of or self.home


# checks of a loaded suite that the methods declaring suite keys register (a name that becomes a folder, a
# reference to a suite teacher): each raises ConfigError in one line
SUITE_CHECKS: List[Callable[[SuiteCfg], None]] = []


def register_suite_check(check: Callable[[SuiteCfg], None]) -> None:
    SUITE_CHECKS.append(check)


def check_seeds(seeds: List[int], key: str) -> List[int]:
    """A list of run seeds: at least one, each a valid seed (:func:`vitkd.config.check_seed`), none twice."""
    if not seeds:
        raise ConfigError(f"{key}: no seeds (at least one run seed is needed)")
    for i, s in enumerate(seeds):
        check_seed(s, f"{key}[{i}]")
    dup = sorted({s for s in seeds if seeds.count(s) > 1})
    if dup:
        raise ConfigError(f"{key}: seed {dup[0]} is listed twice (every seed is one run)")
    return seeds


def _check_names(suite: SuiteCfg) -> None:
    """Every name of the suite that becomes a folder (results, run cache, teachers, rows; the kinds' own names are
    checked by the kinds, :data:`SUITE_CHECKS`)."""
    check_name(suite.name, "suite.name", "suite name")
    for key in ("shares", "tuning_of"):
        if getattr(suite, key) is not None:
            check_name(getattr(suite, key), f"suite.{key}", "suite name")
    for name in suite.teachers:
        check_name(name, f"suite.teachers.{name}", "teacher name")
    for i, r in enumerate(suite.rows):
        check_name(r.name, f"suite.rows[{i}].name", "row name")


def load_suite(path) -> Tuple[SuiteCfg, Path]:
    path = Path(path)
    raw = read_yaml(path)
    suite = build_dataclass(SuiteCfg, raw, "suite")
    _check_names(suite)
    if not suite.rows:
        raise ConfigError("suite.rows: no rows (a suite compares at least one row)")
    check_seeds(suite.seeds, "suite.seeds")
    check_seeds(suite.quick.seeds, "suite.quick.seeds")
    if suite.tune is not None:
        check_seeds(suite.tune.seeds, "suite.tune.seeds")
        check_seeds([suite.tune.family_seed], "suite.tune.family_seed")
        for r in suite.tune.families:   # a suite sharing another's record holds only some of its rows
            if r not in {x.name for x in suite.rows} and not (suite.shares or suite.tuning_of):
                raise ConfigError(f"suite.tune.families: unknown row '{r}'")
        check_seeds(suite.tune.size_seeds, "suite.tune.size_seeds")
    names = [r.name for r in suite.rows]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ConfigError(f"suite.rows: duplicate row name '{sorted(dup)[0]}'")
    for r in suite.rows:
        for key, t in r.teachers.items():
            if t not in suite.teachers:
                raise ConfigError(f"suite.rows.{r.name}.teachers.{key}: unknown suite teacher '{t}' "
                                  f"(defined: {', '.join(suite.teachers)})")
    for m in suite.quick.rows:
        if m not in names:
            raise ConfigError(f"suite.quick.rows: unknown row '{m}'")
    for check in SUITE_CHECKS:   # what the keys methods declare refer to
        check(suite)
    for fam, members in suite.test_families.items():
        for m in members:
            if m not in names:
                raise ConfigError(f"suite.test_families.{fam}: unknown row '{m}'")
    for name, t in suite.teachers.items():
        for key, src in t.distill_from.items():
            if src not in suite.teachers or src == name:
                raise ConfigError(f"suite.teachers.{name}.distill_from.{key}: unknown suite teacher '{src}'")
    return suite, path.parent
