"""Measuring finished runs: per-row accuracy over seeds, costs (params, MACs, training
cost, img/s), and each row against its baseline (verdicts)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Optional, Tuple


from ..config import parse_config
from ..rundir import RunDir
from . import verdicts
from .jobs import Job
from .report import write_outputs
from .suite import SuiteCfg


def _metrics(out: Path) -> dict:
    return RunDir(out).metrics()


def mean_std(xs: List[float]) -> Tuple[float, float]:
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
    size = run.spec.input_size
    cost = distillation_cost(run.distiller, size)
    out = {"params": cost["student_params"], "macs": cost["student_forward_macs"],
           "teacher_macs": cost["teachers_forward_macs"], "overhead_macs": cost["overhead_forward_macs"],
           "train_macs_per_image": cost["total_macs_per_image"]}
    if throughput:
        out["img_per_s"] = measure_throughput(run.student, size, batch_size=32, warmup=1, iters=5)["img_per_s"]
    run.distiller.close()
    return out


def beside_top1(ms: List[dict]) -> str:
    """The models a row's runs evaluate beside the student (its EMA, models trained with it and their ensemble:
    every ``<name>_test_top1`` of the final metrics), each with its mean test top-1 over the seeds."""
    names = sorted({k[:-len("_test_top1")] for m in ms for k in m["final"] if k.endswith("_test_top1")})
    return "; ".join(f"{n} {sum(m['final'][f'{n}_test_top1'] for m in ms) / len(ms):.2f}" for n in names
                     if all(f"{n}_test_top1" in m["final"] for m in ms))


def summarize(suite: SuiteCfg, teacher_jobs: List[Job], row_jobs: List[Job], walls: Dict[str, float],
              meta: dict, out_dir: Path, log=print, overrides: Optional[Dict[str, dict]] = None) -> List[dict]:
    """The result rows (and teachers), compared with their baselines, written with the report. ``overrides``:
    {row: {column: value}} for rows whose cost is not their last run's (pipelines)."""
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
        if ts.sweep_of:
            teachers[-1].update(sweep_of=ts.sweep_of, sweep_value=ts.sweep_value)
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
        mean, sd = mean_std(tests)
        vmean, _ = mean_std(vals)
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
            "epochs": int(jobs[0].raw["train"]["epochs"]),
            "img_per_s": c["img_per_s"],
            "wall_s_per_run": sum(sum(e["epoch_time_s"] for e in m["epochs"]) for m in ms) / len(ms),
            "baseline": spec.baseline or "", "curve": spec.curve or "",
            "beside_test_top1": beside_top1(ms),
        })
        results[-1].update((overrides or {}).get(name, {}))
        if spec.sweep_of:   # a row a suite sweep made (vitkd.compare.sweep)
            results[-1].update(sweep_of=spec.sweep_of, sweep_value=spec.sweep_value)
    # each row against its baseline (no-KD of the same student size unless named), paired by seed
    present = {r["row"] for r in results}
    for r in results:
        r["baseline"] = suite.baseline_of(rowspec[r["row"]], among=present) or ""
    seeds_of = {name: verdicts.per_seed(jobs) for name, jobs in by_row.items()}
    families = {m: fam for fam, members in suite.test_families.items() for m in members}
    verdicts.compare_to_baselines(results, seeds_of, families, alpha=suite.alpha)
    meta["test_images"] = verdicts.observed_images(seeds_of)
    meta["seed_plan"] = verdicts.seed_plan(results, alpha=suite.alpha)
    write_outputs(suite, teachers, results, curves, meta, out_dir)
    return results
