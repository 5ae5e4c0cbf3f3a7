"""The comparison suite: many runs of one frozen recipe -> a table and plots in ``results/``.

Protocol (see ``configs/compare/digits.yaml``):
1. teachers are trained once and cached (a run is reused when its config is unchanged);
2. the recipe is tuned for the no-KD student on the validation split (one knob, one seed), then frozen;
3. every row (method) runs with that recipe for every seed; top-1 is read on the held-out test split
   at the last epoch (nothing is selected on test); mean, std and a two-standard-error significance
   mark against no-KD at the same student size;
4. params, MACs, training cost per image and img/s are measured for every student and teacher.

Runs go to ``<cache>/<suite>/...`` as ordinary ``vitkd train`` run folders, executed as separate
processes, ``jobs`` at a time (one thread each), so both cores are used; or, with ``--executor ray``, as
Ray tasks on a cluster (:mod:`vitkd.compare.execute`).
"""
from __future__ import annotations

import copy
import io
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import yaml

from ..config import ConfigError, apply_mapping, build_dataclass, parse_config, read_yaml, to_dict
from ..io import atomic_write_csv, atomic_write_json, atomic_write_text
from ..rundir import RunDir, ensure_writable
from . import verdicts
from .execute import Executor, LocalPool, make_executor, schedule

__all__ = ["SuiteCfg", "load_suite", "run_suite", "summarize"]


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


# ---------------------------------------------------------------------- planning
@dataclass
class Job:
    key: str                       # unique id: teachers/<name>, tune/<value>, rows/<row>/s<seed>
    raw: dict                      # the resolved config mapping
    out: Path
    deps: List[str] = field(default_factory=list)
    kind: str = "row"
    row: Optional[str] = None
    seed: Optional[int] = None


def _resolve(config: str, base: Path, *sets: Dict[str, Any]) -> dict:
    p = (base / config) if not Path(config).is_absolute() else Path(config)
    raw = read_yaml(p)
    for s in sets:
        raw = apply_mapping(raw, s)
    return raw


def _set_teacher_checkpoint(raw: dict, key: str, run_dir: Path) -> None:
    """Point the run config's teacher ``key`` at a suite teacher's run folder."""
    raw.setdefault("distill", {}).setdefault("teachers", {}).setdefault(key, {})["checkpoint"] = str(run_dir)


def recipe_of(suite: SuiteCfg, quick: bool) -> Tuple[dict, List[int]]:
    recipe = dict(suite.set)
    if quick:
        recipe.update(suite.quick.set)
        return recipe, list(suite.quick.seeds)
    return recipe, list(suite.seeds)


def _tag(quick: bool) -> str:
    return "-quick" if quick else ""


def plan_teachers(suite: SuiteCfg, base: Path, cache: Path, quick: bool,
                  tuned: Optional[Dict[str, Any]] = None) -> List[Job]:
    """Teacher jobs; those marked ``tuned`` get the tuned knob (``tuned`` None: not known yet)."""
    recipe, _ = recipe_of(suite, quick)
    out = {name: cache / f"teachers{_tag(quick)}" / name for name in suite.teachers}
    jobs = []
    for name, t in suite.teachers.items():
        raw = _resolve(t.config, base, recipe, suite.teacher_set, suite.quick.teacher_set if quick else {}, t.set,
                       (tuned or {}) if t.tuned else {})
        raw["seed"] = 0
        deps = []
        for key, src in t.distill_from.items():   # a teacher assistant distilled from a bigger teacher
            _set_teacher_checkpoint(raw, key, out[src])
            deps.append(f"teachers/{src}")
        jobs.append(Job(f"teachers/{name}", raw, out[name], deps, kind="teacher", row=name))
    return jobs


def plan_tune(suite: SuiteCfg, base: Path, cache: Path, quick: bool) -> List[Job]:
    if not suite.tune or not suite.tune.values or (quick and not suite.quick.tune):
        return []
    recipe, _ = recipe_of(suite, quick)
    jobs = []
    for v in suite.tune.values:
        raw = _resolve(suite.student, base, recipe, {suite.tune.key: v})
        raw["seed"] = suite.tune.seed
        jobs.append(Job(f"tune/{v}", raw, cache / f"tune{_tag(quick)}" / _safe(str(v)), kind="tune", row=str(v)))
    return jobs


def plan_rows(suite: SuiteCfg, base: Path, cache: Path, quick: bool, tuned: Dict[str, Any]) -> List[Job]:
    recipe, seeds = recipe_of(suite, quick)
    recipe = {**recipe, **tuned}
    tdir = cache / f"teachers{_tag(quick)}"
    jobs = []
    for r in suite.rows:
        for seed in seeds:
            raw = _resolve(r.config or suite.student, base, recipe, r.set)
            raw["seed"] = seed
            deps = []
            for key, t in r.teachers.items():
                _set_teacher_checkpoint(raw, key, tdir / t)
                deps.append(f"teachers/{t}")
            jobs.append(Job(f"rows/{r.name}/s{seed}", raw, cache / f"rows{_tag(quick)}" / r.name / f"s{seed}",
                            deps, kind="row", row=r.name, seed=seed))
    return jobs


def _safe(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in s)


# ---------------------------------------------------------------------- execution
def _job_config(job: Job) -> Optional[dict]:
    """The validated config a job trains (None while a teacher it reads does not exist yet)."""
    raw = copy.deepcopy(job.raw)
    raw.setdefault("train", {})["progress"] = False
    try:
        cfg = parse_config(raw)
    except ConfigError:
        return None
    cfg.train.threads = None   # the worker's thread count stands (not a result key)
    return to_dict(cfg)


def _is_done(job: Job) -> bool:
    """A finished run of exactly this config, vitkd version and behaviour version (the run folder's one
    reuse rule): teachers and rows are cached across invocations."""
    want = _job_config(job)
    return want is not None and RunDir(job.out).matches(want)


def _run_job(job: Job) -> Tuple[str, float, Optional[str]]:
    """Train one run inside a worker process (imports paid once per worker, not per run)."""
    from ..engine import train
    t0 = time.perf_counter()
    try:
        raw = copy.deepcopy(job.raw)
        raw.setdefault("train", {})["progress"] = False
        cfg = parse_config(raw)
        cfg.train.threads = None   # the worker's thread count stands
        train(cfg, job.out, overwrite=True, log=lambda m: None)   # not a reusable run (see _is_done)
    except Exception as e:   # reported, and the runs that depend on it are dropped
        return job.key, time.perf_counter() - t0, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return job.key, time.perf_counter() - t0, None


def execute(jobs: List[Job], n_jobs: Optional[int] = None, progress: bool = True, log=print, done_before=(),
            train: bool = True, executor: Optional[Executor] = None) -> Dict[str, float]:
    """Run the jobs the cache lacks on ``executor`` (default: a local pool of ``n_jobs`` processes), each
    after the jobs it depends on. Returns wall seconds per job (0 for a job reused from the cache).
    ``train=False``: only check that every job is already finished in the cache (report-only runs)."""
    from tqdm import tqdm
    walls: Dict[str, float] = {}
    done = set(done_before)
    for j in jobs:
        if _is_done(j):
            done.add(j.key)
            walls[j.key] = 0.0
    pending = [j for j in jobs if j.key not in done]
    if pending and not train:
        raise ConfigError(f"suite: {len(pending)} run(s) are not in the cache yet (first: {pending[0].key}); "
                          f"run the suite without --plan-seeds first")
    if not pending:
        return walls
    bar = tqdm(total=len(jobs), initial=len(done & {j.key for j in jobs}), desc="runs",
               disable=None if progress else True, file=sys.stderr)
    failures: List[str] = []
    finished = [len(jobs) - len(pending)]

    def on_result(job: Job, value, err: Optional[str]) -> Optional[str]:
        key, wall = job.key, 0.0
        if value is not None:
            key, wall, err = value
        walls[key] = wall
        bar.update(1)
        finished[0] += 1
        if err:
            failures.append(f"{key}: {err}")
            log(f"run failed: {key}: {err}")
        else:   # a line per run, also when no terminal shows the bar
            log(f"run {key} done in {wall:.0f}s ({finished[0]}/{len(jobs)})")
        return err

    own = executor is None
    executor = executor or LocalPool(n_jobs or 2)
    try:
        schedule(pending, executor, _run_job, done, on_result)
    finally:
        bar.close()
        if own:
            executor.close()
    if failures:
        raise RuntimeError(f"suite: {len(failures)} run(s) failed, first: {failures[0]}")
    return walls


# ---------------------------------------------------------------------- measuring
def _metrics(out: Path) -> dict:
    return RunDir(out).metrics()


def _pick_tuned(suite: SuiteCfg, tune_jobs: List[Job]) -> Tuple[Dict[str, Any], List[dict]]:
    rows = []
    for j in tune_jobs:
        m = _metrics(j.out)["final"]
        rows.append({"key": suite.tune.key, "value": _get(j.raw, suite.tune.key),
                     "val_top1": m["val_top1"]})
    if not rows:
        return {}, []
    best = max(rows, key=lambda r: r["val_top1"])   # chosen on val, never on test
    for r in rows:
        r["chosen"] = r is best
    return {suite.tune.key: best["value"]}, rows


def _get(raw: dict, dotted: str):
    node = raw
    for p in dotted.split("."):
        node = node[p]
    return node


def _mean_std(xs: List[float]) -> Tuple[float, float]:
    n = len(xs)
    m = sum(xs) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0
    return m, sd


def measure_costs(raw: dict, throughput: bool = True) -> dict:
    """Params, MACs and img/s of a run's student and its training cost per image (teachers' forwards and
    the distillation overhead included; see :func:`vitkd.profile.distillation_cost`)."""
    from ..engine import build_run
    from ..profile import distillation_cost, measure_throughput
    cfg = parse_config(raw)
    cfg.train.device = "cpu"
    run = build_run(cfg)
    size = (3, *run.spec.img_size)
    cost = distillation_cost(run.distiller, size)
    out = {"params": cost["student_params"], "macs": cost["student_forward_macs"],
           "teacher_macs": cost["teachers_forward_macs"], "overhead_macs": cost["overhead_forward_macs"],
           "train_macs_per_image": cost["total_macs_per_image"]}
    if throughput:
        out["img_per_s"] = measure_throughput(run.student, size, batch_size=32, warmup=1, iters=5)["img_per_s"]
    run.distiller.close()
    return out


def summarize(suite: SuiteCfg, teacher_jobs: List[Job], row_jobs: List[Job], walls: Dict[str, float],
              tuning: List[dict], meta: dict, out_dir: Path, log=print) -> List[dict]:
    out_dir.mkdir(parents=True, exist_ok=True)
    rowspec = {r.name: r for r in suite.rows}
    teachers = []
    for j in teacher_jobs:
        m = _metrics(j.out)
        c = measure_costs(j.raw)
        ts = suite.teachers[j.row]
        teachers.append({"teacher": j.row, "label": ts.label or j.row, "model": j.raw["model"]["name"],
                         "test_top1": m["final"]["test_top1"], "val_top1": m["final"]["val_top1"],
                         "params_m": c["params"] / 1e6, "macs_m": c["macs"] / 1e6, "img_per_s": c["img_per_s"],
                         "distilled_from": ",".join(ts.distill_from.values()),
                         "wall_s": sum(e["epoch_time_s"] for e in m["epochs"])})
    by_row: Dict[str, List[Job]] = {}
    for j in row_jobs:
        by_row.setdefault(j.row, []).append(j)
    results = []
    curves = {}
    for name, jobs in by_row.items():
        spec = rowspec[name]
        ms = [_metrics(j.out) for j in jobs]
        tests = [m["final"]["test_top1"] for m in ms]
        vals = [m["final"]["val_top1"] for m in ms]
        mean, sd = _mean_std(tests)
        vmean, _ = _mean_std(vals)
        c = measure_costs(jobs[0].raw)
        evaluated = [e for e, row in enumerate(ms[0]["epochs"]) if "val_top1" in row]
        curves[name] = {"family": spec.family, "epoch": [e + 1 for e in evaluated],
                        "val": [sum(m["epochs"][e]["val_top1"] for m in ms) / len(ms) for e in evaluated],
                        "test": [sum(m["epochs"][e]["test_top1"] for m in ms) / len(ms) for e in evaluated]}
        results.append({
            "row": name, "group": spec.group, "family": spec.family, "size": spec.size or "",
            "student": jobs[0].raw["model"]["name"],
            "teachers": ",".join(f"{suite.teachers[t].label or t}" for t in spec.teachers.values()),
            "seeds": len(tests), "test_top1_mean": mean, "test_top1_std": sd,
            "test_top1_all": " ".join(f"{t:.2f}" for t in tests), "val_top1_mean": vmean,
            "params_m": c["params"] / 1e6, "macs_m": c["macs"] / 1e6,
            "train_mmacs_per_image": c["train_macs_per_image"] / 1e6,
            "img_per_s": c["img_per_s"],
            "wall_s_per_run": sum(sum(e["epoch_time_s"] for e in m["epochs"]) for m in ms) / len(ms),
            "baseline": spec.baseline or "", "curve": spec.curve or "",
        })
    # each row against its baseline (no-KD of the same student size unless named), paired by seed
    for r in results:
        r["baseline"] = r["baseline"] or next((x["row"] for x in results if x["family"] == suite.baseline_family
                                               and x["size"] == r["size"]), "")
    seeds_of = {name: verdicts.per_seed(jobs) for name, jobs in by_row.items()}
    families = {m: fam for fam, members in suite.test_families.items() for m in members}
    verdicts.compare_to_baselines(results, seeds_of, families, alpha=suite.alpha)
    meta["test_images"] = verdicts.observed_images(seeds_of)
    meta["seed_plan"] = verdicts.seed_plan(results, alpha=suite.alpha)
    _write_outputs(suite, teachers, results, curves, tuning, meta, out_dir)
    return results


def _write_outputs(suite, teachers, results, curves, tuning, meta, out_dir: Path):
    from ..engine import versions
    atomic_write_csv(out_dir / "results.csv", results, "{:.4f}")
    if teachers:
        atomic_write_csv(out_dir / "teachers.csv", teachers, "{:.4f}")
    atomic_write_text(out_dir / "results.md", _markdown(suite, teachers, results, tuning, meta))
    atomic_write_json(out_dir / "environment.json", {"versions": versions(), "cpu_count": os.cpu_count(),
                                                     "jobs": suite.jobs, **meta})
    atomic_write_json(out_dir / "curves.json", curves)
    _plots(suite, teachers, results, curves, out_dir)


def _fmt_delta(r) -> str:
    if r.get("delta") is None:
        return ""
    if r.get("ci_low") is None or r["ci_low"] != r["ci_low"]:
        return f"{r['delta']:+.2f} ({r.get('verdict') or 'n/a'})"
    return f"{r['delta']:+.2f} [{r['ci_low']:+.1f}, {r['ci_high']:+.1f}]"


def _fmt_p(r) -> str:
    p, ph = r.get("p_raw"), r.get("p_holm")
    if p is None or p != p:
        return ""
    return f"{p:.3g} / {ph:.3g}" if ph is not None and ph == ph else f"{p:.3g}"


def _markdown(suite, teachers, results, tuning, meta) -> str:
    L = [f"# Comparison suite `{suite.name}`{' (quick)' if meta.get('quick') else ''}", ""]
    n_img = meta.get("test_images")
    per = f" ({n_img} images: one image = {100.0 / n_img:.3g} points)" if n_img else ""
    L.append(f"Test top-1 (%) on the held-out test split{per} at the last epoch, mean ± std over "
             f"{len(meta['seeds'])} seed(s) {meta['seeds']}. Δ is row minus its baseline (no-KD at the same "
             f"student size unless the row names one), paired by seed: mean Δ with its {100 * (1 - suite.alpha):.0f}% "
             f"t-interval; p is the paired t-test's (raw / Holm-corrected within the row's family of comparisons). "
             f"A row is called better or worse only when its family's Holm-corrected test rejects at "
             f"α = {suite.alpha}. Recipe (frozen for every row): `{json.dumps(meta['recipe'])}`"
             + (f", tuned on val: `{json.dumps(meta['tuned'])}`" if meta.get("tuned") else "") + ".")
    L.append(f"MACs: one multiply-add = 1, per image, attention counted. Train cost = 3 x student forward + "
             f"teachers' forward + 3 x distillation overhead (connectors, relation products). img/s: student "
             f"inference, batch 32, CPU, measured after the runs. Wall: mean seconds of training per run "
             f"({suite.jobs} runs in parallel, 1 thread each).")
    L.append("")
    L.append("| group | row | family | student | teacher | test top-1 | Δ vs baseline [CI] | p raw / Holm | verdict | "
             "val top-1 | params (M) | MACs (M) | train MMACs/img | img/s | wall s |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    order = [g for g in suite.groups] + sorted({r["group"] for r in results} - set(suite.groups))
    for g in order:
        for r in [x for x in results if x["group"] == g]:
            L.append(f"| {g} | {r['row']} | {r['family']} | {r['student']} | {r['teachers'] or '-'} | "
                     f"{r['test_top1_mean']:.2f} ± {r['test_top1_std']:.2f} | {_fmt_delta(r)} | {_fmt_p(r)} | "
                     f"{r.get('verdict', '')} | {r['val_top1_mean']:.2f} | {r['params_m']:.3f} | {r['macs_m']:.2f} | "
                     f"{r['train_mmacs_per_image']:.2f} | {r['img_per_s']:.0f} | {r['wall_s_per_run']:.1f} |")
    L += _per_image_section(results) + _plan_section(meta.get("seed_plan") or [], suite.alpha)
    L += ["", "## Teachers", "", "| teacher | model | test top-1 | val top-1 | params (M) | MACs (M) | img/s | "
                                   "distilled from |", "|---|---|---|---|---|---|---|---|"]
    for t in teachers:
        L.append(f"| {t['label']} | {t['model']} | {t['test_top1']:.2f} | {t['val_top1']:.2f} | {t['params_m']:.3f} "
                 f"| {t['macs_m']:.2f} | {t['img_per_s']:.0f} | {t['distilled_from'] or '-'} |")
    if tuning:
        L += ["", "## Recipe tuning (no-KD student, validation split, one seed)", "", "| knob | value | val top-1 | "
              "chosen |", "|---|---|---|---|"]
        for t in tuning:
            L.append(f"| {t['key']} | {t['value']} | {t['val_top1']:.2f} | {'yes' if t['chosen'] else ''} |")
    L += ["", "![pareto](pareto.png)", "", "![curves](curves.png)", ""]
    return "\n".join(L)


def _per_image_section(results) -> List[str]:
    rows = [r for r in results if r.get("fixed_share") is not None]
    if not rows:
        return []
    L = ["", "## Per-image view (test split, all paired seeds pooled)", "",
         "Fixes: share of (seed, image) pairs the row gets right and its baseline wrong; breaks: the reverse. "
         "The bootstrap interval resamples seeds and test images (image draws shared across seeds); McNemar's "
         "exact p treats the pooled pairs as independent, so it is descriptive only.", "",
         "| row | baseline | fixes % | breaks % | McNemar b / c | McNemar p | bootstrap Δ interval |",
         "|---|---|---|---|---|---|---|"]
    for r in rows:
        L.append(f"| {r['row']} | {r['baseline']} | {100 * r['fixed_share']:.2f} | {100 * r['broken_share']:.2f} | "
                 f"{r['mcnemar_b']} / {r['mcnemar_c']} | {r['mcnemar_p']:.3g} | "
                 f"[{r['boot_ci_low']:+.1f}, {r['boot_ci_high']:+.1f}] |")
    return L


def _plan_section(plan, alpha) -> List[str]:
    if not plan:
        return []
    L = ["", "## How many seeds (power 0.8, paired t-test at Holm's worst case α/m)", "",
         f"From the paired SDs of Δ measured above (α = {alpha}). `vitkd compare --plan-seeds` prints this "
         "table from the cache without training.", "",
         "| family | comparisons m | target Δ | median paired SD | seeds needed | max paired SD | seeds needed | "
         "critical abs(t) with 5 seeds |", "|---|---|---|---|---|---|---|---|"]
    for p in plan:
        L.append(f"| {p['family']} | {p['family_size']} | {p['delta']:.1f} | {p['median_sd']:.2f} | "
                 f"{p['seeds_median_sd']} | {p['max_sd']:.2f} | {p['seeds_max_sd']} | {p['critical_t_5_seeds']:.2f} |")
    return L


def _plots(suite, teachers, results, curves, out_dir: Path):
    colors = suite.family_colors
    not_methods = {suite.baseline_family, *suite.reference_families}
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(10, 6.5))
    seen = set()
    # rows at the same MACs are spread a little sideways so their error bars stay readable
    at_macs: Dict[float, List[dict]] = {}
    for r in results:
        at_macs.setdefault(round(r["macs_m"], 2), []).append(r)
    xs = {}
    for group in at_macs.values():
        for i, r in enumerate(sorted(group, key=lambda r: r["test_top1_mean"])):
            xs[r["row"]] = r["macs_m"] * (1 + 0.012 * (i - (len(group) - 1) / 2))
    for r in results:
        c = colors.get(r["family"], "gray")
        lab = r["family"] if r["family"] not in seen else None
        seen.add(r["family"])
        ax.errorbar(xs[r["row"]], r["test_top1_mean"], yerr=r["test_top1_std"], fmt="o", color=c, label=lab,
                    capsize=2, alpha=0.85, ms=5)
    for name in sorted({r["curve"] for r in results if r.get("curve")}):
        pts = sorted((r for r in results if r.get("curve") == name), key=lambda r: r["macs_m"])
        c = colors.get(pts[0]["family"], "gray")
        ax.plot([xs[r["row"]] for r in pts], [r["test_top1_mean"] for r in pts], color=c, lw=1, alpha=0.6)
        ax.annotate(name, (xs[pts[-1]["row"]], pts[-1]["test_top1_mean"]), fontsize=8, xytext=(5, 0),
                    textcoords="offset points", color=c)
    # name the three best rows and the baselines; the table has the rest
    best = sorted((r for r in results if r["family"] not in not_methods and not r.get("curve")),
                  key=lambda r: -r["test_top1_mean"])[:3]
    for r in best + [r for r in results if r["family"] == suite.baseline_family and not r.get("curve")]:
        ax.annotate(r["row"], (xs[r["row"]], r["test_top1_mean"]), fontsize=7, xytext=(4, 3),
                    textcoords="offset points")
    for t in teachers:
        ax.scatter(t["macs_m"], t["test_top1"], marker="*", s=160, color="gold", edgecolor="k", zorder=5,
                   label="teacher" if t is teachers[0] else None)
        ax.annotate(t["label"], (t["macs_m"], t["test_top1"]), fontsize=7, xytext=(3, -9), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("MACs per image (M, log scale)")
    ax.set_ylabel("test top-1 (%)  mean ± std over seeds")
    ax.set_title("Accuracy vs compute: students by distillation family, teachers as stars")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    from ..io import atomic_write_bytes
    atomic_write_bytes(out_dir / "pareto.png", buf.getvalue())

    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    for name, cv in curves.items():
        c = colors.get(cv["family"], "gray")
        for ax, split in zip(axes, ("val", "test")):
            ax.plot(cv["epoch"], cv[split], color=c, alpha=0.7, lw=1.2, marker=".", ms=3)
    for ax, split in zip(axes, ("val", "test")):
        ax.set_title(f"{split} top-1 per epoch (mean over seeds), coloured by family")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("top-1 (%)")
    handles = [plt.Line2D([], [], color=c, label=f) for f, c in colors.items()
               if any(cv["family"] == f for cv in curves.values())]
    axes[1].legend(handles=handles, fontsize=8, loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(out_dir / "curves.png", buf.getvalue())


# ---------------------------------------------------------------------- entry point
README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


def update_readme(readme, out_dir: Path) -> None:
    """Replace the block between the results markers of ``readme`` with the suite's table and plot."""
    readme = Path(readme)
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise ConfigError(f"--readme {readme}: no '{README_START}' ... '{README_END}' block to fill")
    body = (out_dir / "results.md").read_text()
    rel = os.path.relpath(out_dir, readme.parent)
    body = body.replace("](pareto.png)", f"]({rel}/pareto.png)").replace("](curves.png)", f"]({rel}/curves.png)")
    body = body.replace("# Comparison suite", "### Comparison suite", 1).replace("\n## ", "\n#### ")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    note = (f"\n<!-- generated by `vitkd compare --readme {readme.name}` from {rel}/results.md; "
            f"do not edit by hand -->\n")
    atomic_write_text(readme, head + README_START + note + body + "\n" + README_END + tail)


def run_suite(path, out: Optional[str] = None, quick: bool = False, cache: Optional[str] = None,
              jobs: Optional[int] = None, progress: bool = True, log=print, readme: Optional[str] = None,
              plan_seeds: bool = False, executor: str = "local", address: Optional[str] = None,
              cpus_per_job: Optional[int] = None) -> Path:
    """Train what the cache lacks, then write the report. ``plan_seeds``: train nothing; report from the
    cache and print how many seeds each family of comparisons needs.

    ``executor``: ``local`` (a pool of ``jobs`` processes, default the suite's ``jobs``) or ``ray`` (every
    run a Ray task on the cluster at ``address``, or on a Ray instance started here; ``jobs`` then caps the
    runs in flight, default none). ``cpus_per_job``: CPU cores (torch threads) per run; see
    :mod:`vitkd.compare.execute`."""
    suite, base = load_suite(path)
    n_jobs = jobs or suite.jobs
    runner = make_executor(executor, jobs if executor == "ray" else n_jobs, address, cpus_per_job)
    try:
        return _run_suite(suite, base, path, out, quick, cache, n_jobs, progress, log, readme, plan_seeds, runner)
    finally:
        runner.close()


def _run_suite(suite, base, path, out, quick, cache, n_jobs, progress, log, readme, plan_seeds,
               runner: Executor) -> Path:
    name = suite.name + ("-quick" if quick else "")
    out_dir = Path(out) if out else Path("results") / "compare" / name
    cache_dir = Path(cache) if cache else Path("runs") / "compare" / suite.name
    # check every config before any work starts
    teacher_jobs = plan_teachers(suite, base, cache_dir, quick)
    tune_jobs = plan_tune(suite, base, cache_dir, quick)
    row_jobs = plan_rows(suite, base, cache_dir, quick, {})
    check_jobs(teacher_jobs + tune_jobs + row_jobs)
    ensure_writable(cache_dir, "--cache")
    ensure_writable(out_dir, "--out")
    t0 = time.perf_counter()
    # teachers that wait for the tuned knob (and the assistants distilled from them) run after tuning
    waiting = {n for n, t in suite.teachers.items() if t.tuned and tune_jobs}
    while True:
        more = {n for n, t in suite.teachers.items() if n not in waiting and set(t.distill_from.values()) & waiting}
        if not more:
            break
        waiting |= more
    first = [j for j in teacher_jobs if j.row not in waiting]
    walls = execute(first + tune_jobs, n_jobs, progress, log, train=not plan_seeds, executor=runner)
    tuned, tuning = _pick_tuned(suite, tune_jobs) if tune_jobs else ({}, [])
    if tuned:
        log(f"tuned on val: {tuned}")
    teacher_jobs = plan_teachers(suite, base, cache_dir, quick, tuned)
    row_jobs = plan_rows(suite, base, cache_dir, quick, tuned)
    walls.update(execute([j for j in teacher_jobs if j.row in waiting] + row_jobs, n_jobs, progress, log,
                         done_before=[j.key for j in first], train=not plan_seeds, executor=runner))
    recipe, seeds = recipe_of(suite, quick)
    meta = {"recipe": recipe, "seeds": seeds, "tuned": tuned, "quick": quick, "executor": runner.name,
            "suite_file": str(path), "wall_s_total": time.perf_counter() - t0}
    results = summarize(suite, teacher_jobs, row_jobs, walls, tuning, meta, out_dir, log)
    atomic_write_text(out_dir / "suite.yaml", Path(path).read_text())
    atomic_write_text(out_dir / "resolved_configs.yaml",
                      yaml.safe_dump({j.key: j.raw for j in teacher_jobs + tune_jobs + row_jobs}, sort_keys=False))
    meta["wall_s_total"] = time.perf_counter() - t0
    _write_timing(out_dir / "timing.json", walls, meta["wall_s_total"])
    if readme:
        update_readme(readme, out_dir)
    if plan_seeds:
        for p in meta["seed_plan"]:
            log(f"family {p['family']} (m={p['family_size']}): |Δ| {p['delta']:.1f} needs {p['seeds_median_sd']} seeds "
                f"at the median paired SD {p['median_sd']:.2f}, {p['seeds_max_sd']} at the largest {p['max_sd']:.2f}")
    log(f"wrote {out_dir} ({len(results)} rows, {meta['wall_s_total']:.0f}s)")
    return out_dir


def _write_timing(path: Path, walls: Dict[str, float], wall_total: float) -> None:
    """Seconds per run; runs reused from the cache keep the time measured when they were trained, and the
    suite's wall time from an empty cache is kept from the invocation that trained every run."""
    prev = {}
    if path.is_file():
        try:
            prev = json.loads(path.read_text())
        except ValueError:
            prev = {}
    trained = {k: v for k, v in walls.items() if v > 0}
    reused = sorted(k for k, v in walls.items() if v == 0)
    atomic_write_json(path, {
        "wall_s_this_invocation": wall_total, "runs_trained_now": len(trained), "runs_reused": len(reused),
        "empty_cache_wall_s": wall_total if not reused else prev.get("empty_cache_wall_s"),
        "per_run_s": {**prev.get("per_run_s", {}), **trained}})


def check_jobs(jobs: List[Job]) -> None:
    """Every job's config is validated, and every one not finished in the cache is dry-built (its suite teachers
    built untrained from their configs), before any run trains: a row's bad term argument or model name fails
    here, in one line naming the run."""
    from ..engine.build import dry_build, planned_teachers
    cfgs = {}
    for j in jobs:
        try:
            cfgs[j.key] = parse_config(_strip_checkpoints(j.raw))
        except ConfigError as e:
            raise ConfigError(f"suite {j.key}: {e}") from None
    planned = {str(j.out): cfgs[j.key] for j in jobs}
    built = set()
    for j in jobs:
        stripped, teachers = planned_teachers(j.raw, planned)
        key = json.dumps({**stripped, "seed": None}, sort_keys=True, default=str)   # seeds build the same
        if key in built or _is_done(j):
            continue
        built.add(key)
        try:
            dry_build(parse_config(stripped), teachers)
        except ConfigError as e:
            raise ConfigError(f"suite {j.key}: {e}") from None


def _strip_checkpoints(raw: dict) -> dict:
    """Teacher checkpoints do not exist before the teachers are trained: validate everything else."""
    raw = copy.deepcopy(raw)
    for t in ((raw.get("distill") or {}).get("teachers") or {}).values():
        if isinstance(t, dict):
            t.pop("checkpoint", None)
    return raw
