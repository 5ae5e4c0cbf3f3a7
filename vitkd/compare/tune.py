"""Tuning the recipe, on validation only: its own command (``vitkd tune SUITE``) and its own record.

The suite's ``tune:`` block names the knobs of the no-KD student's recipe and a grid for each. The search:

1. **Knobs, one at a time** (coordinate search, in the order written, ``rounds`` passes): every value of the
   knob's grid is trained for every tuning seed, the other knobs at their current values; the value with
   the best mean validation top-1 is kept. When it lies on an edge of the grid, the grid is extended past
   that edge by its own spacing (ratio for ``scale: log``, step for ``linear``), inside the knob's bounds,
   up to ``max_extend`` times, so a chosen value ends interior to its grid unless a bound stops it (the
   record says so).
2. **Epochs**: the tuned baseline at 1x, 2x, 4x ... the budgeted ``train.epochs`` (validation top-1), so
   the reader sees how far from saturation the budget leaves it.
3. **Data size**: the tuned no-KD student and the suite's CNN reference row at each ``sizes`` entry
   (``size_seeds`` seeds each, the same optimizer steps at every size: epochs scale with 1 / size). The
   main size is the one where the no-KD seed std is at most ``max_std`` and the reference is at least
   ``min_gap`` points above no-KD (both on validation), the largest gap among those (without a ``reference``
   row: the best no-KD mean among those); when none qualifies, the closest (the least summed shortfall), and the
   record says so. ``size_warmup: steps`` scales the warm-up with the epochs (the same warm-up steps at every
   size).

Nothing reads the test split. The record (``tuning.json``, ``tuning.csv``, ``tuning.md``, ``timing.json``)
goes to ``results/compare/<suite>/tuning/``; ``vitkd compare`` reads the chosen values from it and freezes
them for every row (and for teachers marked ``tuned``). Runs are cached like every suite run: one folder per
distinct recipe and seed, so a value shared by two stages trains once.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..config import ConfigError, path_under, read_config
from ..io import atomic_write_csv, atomic_write_json, atomic_write_text, json_digest
from ..rundir import RunDir, ensure_writable, exclusive, one_spelling
from .jobs import Job, register_kind
from .plan import recipe_of
from .suite import KnobSpec, TuneSpec

__all__ = ["KnobSpec", "TuneSpec", "tune_suite", "read_tuned", "read_row_knobs", "tuning_dir", "TUNED_FILE"]

TUNED_FILE = "tuning.json"


def tuning_dir(suite, results: Optional[str] = None) -> Path:
    return Path(results) if results else path_under(Path("results") / "compare", suite.tuning_home, "tuning",
                                                    key="suite.tuning_of")


def read_tuned(suite, results: Optional[str] = None) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """What the tuning record chose: ``(knobs, size)``: the knob values (for the students and the teachers
    marked ``tuned``) and the main data size with its epochs (for every run, teachers too, before the
    suite's ``teacher_set``). ``({}, {})`` for a suite without a ``tune:`` block."""
    if suite.tune is None:
        return {}, {}
    path = tuning_dir(suite, results) / TUNED_FILE
    if not path.is_file():
        raise ConfigError(f"{path}: no tuning record for suite '{suite.name}'; run `vitkd tune` on the suite first")
    try:
        record = json.loads(path.read_text())
        chosen, size = dict(record["chosen"]), dict(record.get("size") or {})
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{path}: not a tuning record (no 'chosen' values)") from None
    missing = [k for k in suite.tune.knobs if k not in chosen]
    if missing:
        raise ConfigError(f"{path}: the record has no value for knob '{missing[0]}' (re-run `vitkd tune`)")
    sized = _sized(size)   # a knob the size sets too (the warm-up, scaled with the epochs) takes the size's value
    return {k: chosen[k] for k in suite.tune.knobs if k not in sized}, sized


def _sized(size: Optional[dict]) -> Dict[str, Any]:
    """The recipe keys a chosen data size sets: the size, its epochs (and its warm-up, with ``size_warmup: steps``)."""
    if not size:
        return {}
    out = {"data.train_subset": int(size["size"]), "train.epochs": int(size["epochs"])}
    if size.get("warmup_epochs") is not None:
        out["train.warmup_epochs"] = float(size["warmup_epochs"])
    return out


def _digest(raw: Dict[str, Any]) -> str:
    return json_digest(raw)[:12]


class _Trials:
    """Trains (or reuses) the runs a stage asks for and reads their validation top-1."""

    def __init__(self, suite, base: Path, cache: Path, n_jobs, progress, log, executor):
        self.suite, self.base, self.cache = suite, base, cache
        self.n_jobs, self.progress, self.log, self.executor = n_jobs, progress, log, executor
        self.walls: Dict[str, float] = {}
        self.recipe, _ = recipe_of(suite, quick=False)

    def job(self, overrides: Dict[str, Any], seed: int, config: Optional[str] = None,
            row_set: Optional[dict] = None) -> Job:
        raw = read_config(config or self.suite.student, self.base, self.recipe, row_set or {}, overrides)
        key = _digest(raw)   # one folder per distinct recipe: a value two stages share trains once
        raw["seed"] = seed
        return Job(f"tune/{key}/s{seed}", raw, self.cache / "tune" / key / f"s{seed}", kind="tune")

    def run(self, jobs: List[Job]) -> List[float]:
        from .runner import execute
        self.walls.update(execute(jobs, self.n_jobs, self.progress, self.log, executor=self.executor))
        return [float(RunDir(j.out).metrics()["final"]["val_top1"]) for j in jobs]


def _stats(xs: List[float]) -> Tuple[float, float]:
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, sd


def _start_value(raw: dict, key: str, grid: List[float]) -> float:
    node = raw
    for p in key.split("."):
        if not isinstance(node, dict) or p not in node:
            node = None
            break
        node = node[p]
    if isinstance(node, (int, float)) and float(node) in grid:
        return float(node)
    return grid[len(grid) // 2]


def _search(spec: TuneSpec, trials: _Trials, log) -> Tuple[Dict[str, float], List[dict], Dict[str, dict]]:
    base_raw = read_config(trials.suite.student, trials.base, trials.recipe)
    current = {k: _start_value(base_raw, k, ks.values) for k, ks in spec.knobs.items()}
    rows: List[dict] = []
    grids: Dict[str, dict] = {}
    for rnd in range(spec.rounds):
        for key, ks in spec.knobs.items():
            grid, extended, scores = list(ks.values), 0, {}
            bound = None
            while True:
                todo = [v for v in grid if v not in scores]
                jobs = {v: [trials.job({**current, key: v}, s) for s in spec.seeds] for v in todo}
                flat = [j for v in todo for j in jobs[v]]
                vals = trials.run(flat)
                for i, v in enumerate(todo):
                    scores[v] = vals[i * len(spec.seeds):(i + 1) * len(spec.seeds)]
                best = max(grid, key=lambda v: (_stats(scores[v])[0], -abs(grid.index(v) - len(grid) / 2)))
                edge = best in (grid[0], grid[-1])
                if not edge or extended >= spec.max_extend:
                    break
                nxt = ks.extend(grid, upward=best == grid[-1])
                if nxt is None:
                    bound = "min" if best == grid[0] else "max"
                    break
                grid = sorted(grid + [nxt])
                extended += 1
                log(f"tune {key}: best {best:g} on the edge, grid extended to {nxt:g}")
            current[key] = best
            grids[key] = {"grid": grid, "chosen": best, "interior": grid[0] < best < grid[-1],
                          "extended": extended, "stopped_by_bound": bound}
            for v in grid:
                m, sd = _stats(scores[v])
                rows.append({"stage": "knob", "round": rnd, "knob": key, "value": v,
                             "recipe": json.dumps({**current, key: v}, sort_keys=True),
                             "seeds": " ".join(map(str, spec.seeds)), "val_top1_mean": m, "val_top1_std": sd,
                             "val_top1_all": " ".join(f"{x:.2f}" for x in scores[v]), "chosen": v == best})
            log(f"tune {key}: chose {best:g} (val {_stats(scores[best])[0]:.2f}) from {grid}")
    return current, rows, grids


def _epoch_check(spec: TuneSpec, trials: _Trials, chosen: Dict[str, float]) -> List[dict]:
    epochs = int(read_config(trials.suite.student, trials.base, trials.recipe, chosen)["train"]["epochs"])
    rows = []
    for mult in spec.epochs:
        e = max(1, int(round(epochs * mult)))
        over = {**chosen, "train.epochs": e}
        vals = trials.run([trials.job(over, s) for s in spec.seeds])
        m, sd = _stats(vals)
        rows.append({"stage": "epochs", "knob": "train.epochs", "value": e, "multiple": mult,
                     "seeds": " ".join(map(str, spec.seeds)), "val_top1_mean": m, "val_top1_std": sd,
                     "val_top1_all": " ".join(f"{x:.2f}" for x in vals), "chosen": mult == 1})
    return rows


def _size_scan(spec: TuneSpec, trials: _Trials, chosen: Dict[str, float]) -> Tuple[List[dict], Optional[dict]]:
    if not spec.sizes:
        return [], None
    raw = read_config(trials.suite.student, trials.base, trials.recipe, chosen)
    n0, e0 = raw["data"].get("train_subset"), int(raw["train"]["epochs"])
    if not n0:
        raise ConfigError("suite.tune.sizes: the recipe needs data.train_subset (the size its epochs are set for)")
    ref = next((r for r in trials.suite.rows if r.name == spec.reference), None)
    if spec.reference and ref is None:
        raise ConfigError(f"suite.tune.reference: unknown row '{spec.reference}'")
    if ref is not None and ref.teachers:
        raise ConfigError(f"suite.tune.reference: row '{ref.name}' has teachers; the reference trains alone")
    rows, verdicts = [], []
    for n in spec.sizes:
        over = {**chosen, "data.train_subset": int(n), "train.epochs": max(1, int(round(e0 * n0 / n)))}
        if spec.size_warmup == "steps":   # the same warm-up steps at every size
            over["train.warmup_epochs"] = float(f"{float(raw['train']['warmup_epochs']) * n0 / n:.4g}")
        base_vals = trials.run([trials.job(over, s) for s in spec.size_seeds])
        bm, bsd = _stats(base_vals)
        entry = {"size": n, "epochs": over["train.epochs"], "no_kd_mean": bm, "no_kd_std": bsd,
                 **({"warmup_epochs": over["train.warmup_epochs"]} if "train.warmup_epochs" in over else {})}
        rows.append({"stage": "size", "knob": "data.train_subset", "value": n, "row": "no-KD",
                     "seeds": " ".join(map(str, spec.size_seeds)), "val_top1_mean": bm, "val_top1_std": bsd,
                     "val_top1_all": " ".join(f"{x:.2f}" for x in base_vals)})
        if ref is not None:
            ref_vals = trials.run([trials.job(over, s, ref.config, ref.set) for s in spec.size_seeds])
            rm, rsd = _stats(ref_vals)
            entry.update(reference_mean=rm, reference_std=rsd, gap=rm - bm)
            rows.append({"stage": "size", "knob": "data.train_subset", "value": n, "row": ref.name,
                         "seeds": " ".join(map(str, spec.size_seeds)), "val_top1_mean": rm, "val_top1_std": rsd,
                         "val_top1_all": " ".join(f"{x:.2f}" for x in ref_vals)})
        gap = entry.get("gap", float("inf"))
        entry["std_ok"], entry["gap_ok"] = bsd <= spec.max_std, gap >= spec.min_gap
        entry["shortfall"] = max(0.0, bsd - spec.max_std) + max(0.0, spec.min_gap - gap)
        verdicts.append(entry)
    ok = [v for v in verdicts if v["std_ok"] and v["gap_ok"]]
    # the largest gap; without a reference (every gap infinite), the most accurate no-KD student
    pick = max(ok, key=lambda v: (v.get("gap", math.inf), v["no_kd_mean"])) if ok else min(verdicts, key=lambda v: v["shortfall"])
    pick = {**pick, "qualifies": bool(ok), "table": verdicts}
    for r in rows:
        r["chosen"] = r["value"] == pick["size"]
    return rows, pick


def tune_suite(path, out: Optional[str] = None, cache: Optional[str] = None, jobs: Optional[int] = None,
               progress: bool = True, log=print, executor: str = "local", address: Optional[str] = None,
               cpus_per_job: Optional[int] = None) -> Path:
    """Run the suite's tuning protocol (module docstring) and write its record. Returns the record folder. One
    process writes the record folder at a time (:func:`vitkd.rundir.exclusive`)."""
    from .suite import load_suite
    suite, base = load_suite(path)
    if suite.tune is None or not suite.tune.knobs:
        raise ConfigError(f"{path}: the suite has no tune.knobs to search")
    out_dir = tuning_dir(suite, out)
    cache_dir = one_spelling(cache) if cache else path_under(Path("runs") / "compare", suite.home, key="suite.name")
    with exclusive(out_dir, "--out"):
        ensure_writable(cache_dir, "--cache")
        return _tune(suite, base, out_dir, cache_dir, jobs, progress, log, executor, address, cpus_per_job)


def read_row_knobs(suite, results: Optional[str] = None) -> Dict[str, List[dict]]:
    """The family knobs the tuning record chose: {row: [{term, param, value}]} ({} without any)."""
    if suite.tune is None or not suite.tune.families:
        return {}
    path = tuning_dir(suite, results) / TUNED_FILE
    try:
        fams = json.loads(path.read_text()).get("families") or {}
    except (OSError, ValueError):
        raise ConfigError(f"{path}: no tuning record for suite '{suite.name}'; run `vitkd tune` on the suite first") from None
    out = {}
    rows = {r.sweep_of or r.name for r in suite.rows}
    for row, spec in suite.tune.families.items():
        if row not in rows:   # a row of the suite whose record this one shares
            continue
        got = fams.get(row)
        if not got or got.get("term") != spec.term or got.get("param") != spec.param:
            raise ConfigError(f"{path}: the record has no {spec.term}.{spec.param} for row '{row}' (re-run `vitkd tune`)")
        out[row] = [{"term": spec.term, "param": spec.param, "value": got["chosen"]}]
    return out


def _family_knobs(suite, base, cache: Path, trials: _Trials, chosen: Dict[str, Any], size: Optional[dict], log
                  ) -> Tuple[List[dict], Dict[str, dict]]:
    """Each family's main knob on its row, at the tuned recipe and size, seed ``family_seed``, on val: the row's jobs
    as `vitkd compare` plans them (its teachers restored, its stores of logits), one variant per value."""
    import copy
    from .jobs import SuitePlan
    from .plan import plan_suite, set_term_param, terms_of_type
    spec = suite.tune.families
    if not spec:
        return [], {}
    sized = _sized(size)
    tuned = {k: v for k, v in chosen.items() if k not in sized}
    sub = copy.deepcopy(suite)
    sub.seeds = [suite.tune.family_seed]
    sub.rows = [r for r in suite.rows if r.name in spec]
    plan = SuitePlan(sub, base, cache, False, tuned, sized, {}, log)
    plan_suite(plan)
    row_jobs = {j.row: j for j in plan.with_role("row") if j.row in spec}
    missing = [r for r in spec if r not in row_jobs]
    if missing:
        raise ConfigError(f"suite.tune.families.{missing[0]}: the row is not trained by one run config (a pipeline "
                          "of stages): its knob cannot be tuned here")
    inputs = [j for j in plan.jobs if j.role != "row"]
    variants: Dict[str, Dict[float, Job]] = {}
    for row, ks in spec.items():
        job = row_jobs[row]
        terms = terms_of_type(job.raw, ks.term)
        default = terms[0].get(ks.param) if terms else None
        variants[row] = {}
        for v in ks.values:
            if default is not None and float(default) == v:   # the row's own run, which `vitkd compare` reuses
                variants[row][v] = job
                continue
            raw = copy.deepcopy(job.raw)
            set_term_param(raw, ks.term, ks.param, v, f"suite.tune.families.{row}")
            key = _digest(raw)
            variants[row][v] = Job(f"tune/{key}/s{job.seed}", raw, trials.cache / "tune" / key / f"s{job.seed}",
                                   list(job.deps), kind="tune")
        variants[row]["default"] = default
    flat = [j for row in spec for v, j in variants[row].items() if v != "default"]
    from .runner import execute
    trials.walls.update(execute(inputs + flat, trials.n_jobs, trials.progress, log, executor=trials.executor))
    rows, record = [], {}
    for row, ks in spec.items():
        default = variants[row].pop("default")
        scores = {v: float(RunDir(j.out).metrics()["final"]["val_top1"]) for v, j in variants[row].items()}
        best = max(ks.values, key=lambda v: (scores[v], v == default))   # a tie keeps the paper's value
        record[row] = {"term": ks.term, "param": ks.param, "grid": ks.values, "default": default, "chosen": best,
                       "val_top1": {f"{v:g}": scores[v] for v in ks.values}, "seed": suite.tune.family_seed}
        for v in ks.values:
            rows.append({"stage": "family", "knob": f"{row}: {ks.term}.{ks.param}", "value": v,
                         "seeds": str(suite.tune.family_seed), "val_top1_mean": scores[v], "val_top1_std": 0.0,
                         "val_top1_all": f"{scores[v]:.2f}", "chosen": v == best})
        log(f"tune {row}: {ks.term}.{ks.param} = {best:g} (val {scores[best]:.2f}; default {default})")
    return rows, record


def _tune(suite, base, out_dir: Path, cache_dir: Path, jobs, progress, log, executor, address, cpus_per_job) -> Path:
    from .executors import make_executor
    n_jobs = jobs or suite.jobs
    runner = make_executor(executor, jobs if executor == "ray" else n_jobs, address, cpus_per_job)
    t0 = time.perf_counter()
    try:
        trials = _Trials(suite, base, cache_dir, n_jobs, progress, log, runner)
        chosen, rows, grids = _search(suite.tune, trials, log)
        rows += _epoch_check(suite.tune, trials, chosen)
        size_rows, size = _size_scan(suite.tune, trials, chosen)
        rows += size_rows
        family_rows, families = _family_knobs(suite, base, cache_dir, trials, chosen, size, log)
        rows += family_rows
    finally:
        runner.close()
    final = dict(chosen)
    final.update(_sized(size))
    wall = time.perf_counter() - t0
    record = {"suite": suite.name, "chosen": chosen, "knobs": grids, "size": size,
              "tuned_at": {k: v for k, v in recipe_of(suite, False)[0].items()},
              "seeds": suite.tune.seeds, "selection": "mean validation top-1 (the test split is never read)",
              "rule": _rule(suite.tune), "families": families,
              "wall_s": wall, "runs": len(trials.walls),
              "runs_trained_now": sum(1 for v in trials.walls.values() if v > 0)}
    atomic_write_csv(out_dir / "tuning.csv", rows, "{:.4f}")
    atomic_write_text(out_dir / "tuning.md", _markdown(record, rows))
    atomic_write_json(out_dir / "timing.json", {"wall_s_this_invocation": wall, "per_run_s": trials.walls})
    atomic_write_json(out_dir / TUNED_FILE, record)   # last: the record the suite reads
    log(f"tuned on val: {json.dumps(final)} ({wall:.0f}s, {record['runs_trained_now']} runs trained)")
    return out_dir


def _rule(spec: TuneSpec) -> str:
    """The main-size rule in words."""
    if not spec.sizes:
        return ""
    seeds = len(spec.size_seeds)
    if spec.reference:
        return (f"no-KD seed std over {seeds} seeds <= {spec.max_std:g} points and the reference row "
                f"{spec.reference} >= {spec.min_gap:g} points above no-KD; among those, the largest gap")
    return f"no-KD seed std over {seeds} seeds <= {spec.max_std:g} points; among those, the best no-KD mean"


def _markdown(record: dict, rows: List[dict]) -> str:
    L = [f"# Tuning record of suite `{record['suite']}`", "",
         f"Chosen on {record['selection']}, seeds {record['seeds']}: `{json.dumps(record['chosen'])}`"
         + (f"; main data size {record['size']['size']} images, {record['size']['epochs']} epochs" if record.get("size") else "")
         + ".", "",
         "| knob | grid | chosen | interior | extended | bound |", "|---|---|---|---|---|---|"]
    for k, g in record["knobs"].items():
        L.append(f"| `{k}` | {', '.join(f'{v:g}' for v in g['grid'])} | {g['chosen']:g} | "
                 f"{'yes' if g['interior'] else 'no'} | {g['extended']} | {g['stopped_by_bound'] or ''} |")
    L += ["", "| stage | knob | value | val top-1 mean | std | per seed | chosen |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        label = r["knob"] + (f" ({r['row']})" if r.get("row") else "")
        L.append(f"| {r['stage']} | `{label}` | {r['value']:g} | {r['val_top1_mean']:.2f} | {r['val_top1_std']:.2f} | "
                 f"{r['val_top1_all']} | {'**yes**' if r.get('chosen') else ''} |")
    if record.get("size"):
        s = record["size"]
        L += ["", f"Main data size: {s['size']} train images ({s['epochs']} epochs): "
                  f"{'meets' if s['qualifies'] else 'no size meets'} the rule ({record.get('rule') or 'no-KD seed std <= max_std and the reference >= min_gap above no-KD'}, on val)"
                  + ("" if s["qualifies"] else "; the closest was chosen") + "."]
    L.append(f"\nWall: {record['wall_s']:.0f} s, {record['runs_trained_now']} runs trained now of {record['runs']}.")
    return "\n".join(L) + "\n"


# tuning runs: training runs that `vitkd tune` plans itself (no suite planning hook)
register_kind("tune")
