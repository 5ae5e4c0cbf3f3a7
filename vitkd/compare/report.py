"""The report: results.csv / teachers.csv / results.md / environment.json / curves.json, the README block,
and the timing record."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple


from ..config import ConfigError
from ..io import atomic_write_csv, atomic_write_json, atomic_write_text
from .plots import plots


def write_outputs(suite, teachers, results, curves, meta, out_dir: Path):
    from .._version import versions
    atomic_write_csv(out_dir / "results.csv", results, "{:.4f}")
    if teachers:
        atomic_write_csv(out_dir / "teachers.csv", teachers, "{:.4f}")
    import torch
    # the kernels torch dispatches to on this CPU: float results repeat bit for bit only on the same versions and
    # the same instruction set (ATEN_CPU_CAPABILITY caps it)
    atomic_write_json(out_dir / "environment.json", {"versions": versions(), "cpu_count": os.cpu_count(),
                                                     "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                                                     "cpu_model": cpu_model(), "jobs": suite.jobs, **meta})
    atomic_write_json(out_dir / "curves.json", curves)
    drawn = plots(suite, teachers, results, curves, out_dir)
    atomic_write_text(out_dir / "results.md", _markdown(suite, teachers, results, meta, drawn))


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo; else what the platform says): two CPUs that both report AVX512
    can still dispatch to different kernels (oneDNN and MKL pick per vendor and extension), so a suite's runs
    repeat bit for bit only on the CPU model that made them."""
    import platform
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _beside_section(results) -> list:
    """The models rows evaluate beside their student (its EMA, peers trained with it, their ensemble): the row's line
    is its student's; these stand beside it."""
    rows = [r for r in results if r.get("beside_test_top1")]
    if not rows:
        return []
    L = ["", "Models evaluated beside the student (mean test top-1 over the same seeds; the row's line above is its "
             "student's):", ""]
    return L + [f"- {r['row']}: {r['beside_test_top1']}" for r in rows]


def _fmt_delta(r) -> str:
    if r.get("delta") is None:
        return ""
    if r.get("ci_low") is None or r["ci_low"] != r["ci_low"]:   # no interval (one paired seed)
        return f"{r['delta']:+.2f}"
    return f"{r['delta']:+.2f} [{r['ci_low']:+.1f}, {r['ci_high']:+.1f}]"


def _fmt_p(r) -> str:
    p, ph = r.get("p_raw"), r.get("p_holm")
    if p is None or p != p:
        return ""
    return f"{p:.3g} / {ph:.3g}" if ph is not None and ph == ph else f"{p:.3g}"


def _markdown(suite, teachers, results, meta, drawn=("pareto.png", "curves.png")) -> str:
    L = [f"# Comparison suite `{suite.name}`{' (quick)' if meta.get('quick') else ''}", ""]
    n_img = meta.get("test_images")
    per = f" ({n_img} images: one image = {100.0 / n_img:.3g} points)" if n_img else ""
    L.append(f"Test top-1 (%) on the held-out test split{per} at the last epoch, mean ± std over "
             f"{len(meta['seeds'])} seed(s) {meta['seeds']}. Δ is row minus its baseline (no-KD at the same "
             f"student size unless the row names one), paired by seed: mean Δ with its {100 * (1 - suite.alpha):.0f}% "
             f"t-interval; p is the paired t-test's (raw / Holm-corrected within the row's family of comparisons). "
             f"A row is called better or worse only when its family's Holm-corrected test rejects at "
             f"α = {suite.alpha}. Recipe (frozen for every row): `{json.dumps(meta['recipe'])}`"
             + (f", tuned on val by `vitkd tune` (its record: `tuning/tuning.md`): `{json.dumps(meta['tuned'])}`"
                if meta.get("tuned") else "") + "." + _sweep_caption(suite))
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
    L += _beside_section(results)
    L += _per_image_section(results) + _plan_section(meta.get("seed_plan") or [], suite.alpha)
    L += ["", "## Teachers", "", "| teacher | model | test top-1 | val top-1 | params (M) | MACs (M) | img/s | "
                                   "distilled from |", "|---|---|---|---|---|---|---|---|"]
    for t in teachers:
        L.append(f"| {t['label']} | {t['model']} | {t['test_top1']:.2f} | {t['val_top1']:.2f} | {t['params_m']:.3f} "
                 f"| {t['macs_m']:.2f} | {t['img_per_s']:.0f} | {t['distilled_from'] or '-'} |")
    for f in drawn:
        L += ["", f"![{Path(f).stem}]({f})"]
    L.append("")
    return "\n".join(L)


def _sweep_caption(suite) -> str:
    sw = suite.sweep
    if sw is None:
        return ""
    held = (f"{sw.steps} optimizer steps held at every value (epochs rescaled)" if sw.steps else
            "the recipe's optimizer steps held at every value (epochs rescaled)") if sw.hold == "steps" else \
        "the recipe's epochs at every value"
    return (f" Swept: every row and teacher at `{sw.key}` = {', '.join(f'{v:g}' for v in sw.values)}, {held}; "
            f"each row is compared with the baseline of its own value.")


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
    resolved = {p["family"]: p for p in plan if "smallest_delta_median_sd" in p}
    if resolved:
        L += ["", "The smallest Δ each family resolves with the seeds it ran (power 0.8, same test and threshold):", "",
              "| family | comparisons m | seeds | smallest Δ at the median paired SD | at the max paired SD |",
              "|---|---|---|---|---|"]
        for fam, p in resolved.items():
            L.append(f"| {fam} | {p['family_size']} | {p['seeds']} | {p['smallest_delta_median_sd']:.2f} | "
                     f"{p['smallest_delta_max_sd']:.2f} |")
    return L


def block_markers(block: str) -> Tuple[str, str]:
    """The two comment lines that hold a README block named ``block`` (one README holds several)."""
    return f"<!-- {block}:start -->", f"<!-- {block}:end -->"


README_START, README_END = block_markers("results")   # the block `vitkd compare --readme` fills


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


def run_walls(out_dir: Path, walls: Dict[str, float]) -> Dict[str, float]:
    """Wall seconds per job: this invocation's, and for jobs it reused from the cache (0 here), the time they
    took when they ran, as the suite's ``timing.json`` recorded it."""
    prev = recorded_walls(out_dir)
    return {**prev, **{k: v for k, v in walls.items() if v > 0 or k not in prev}}


def recorded_walls(out_dir: Path, shares: Optional[str] = None) -> Dict[str, float]:
    """Seconds per run as the suite's ``timing.json`` recorded them when they last ran, and, for a suite that
    shares another's runs (``shares``: its name), that suite's too ({} when neither has a record)."""
    theirs = _read_timing(out_dir.parent / shares / "timing.json") if shares else {}
    return {**theirs.get("per_run_s", {}), **_read_timing(out_dir / "timing.json").get("per_run_s", {})}


def _read_timing(path: Path) -> dict:
    """A suite's timing record ({} when there is none or it cannot be read)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def write_timing(path: Path, walls: Dict[str, float], wall_total: float, shared: Optional[Path] = None) -> None:
    """Seconds per run of this invocation's plan (runs no longer planned drop out); runs reused from the cache
    keep the time measured when they were trained, and the suite's wall time from an empty cache is kept from the
    invocation that trained every run. A suite that shares
    another's runs (``shared``: that suite's ``timing.json``) also keeps ``shared_cache_wall_s``, the wall time of
    an invocation that reused only runs the shared suite had trained (run back to back with it)."""
    prev = _read_timing(path)
    trained = {k: v for k, v in walls.items() if v > 0}
    reused = sorted(k for k, v in walls.items() if v == 0)
    doc = {
        "wall_s_this_invocation": wall_total, "runs_trained_now": len(trained), "runs_reused": len(reused),
        "empty_cache_wall_s": wall_total if not reused else prev.get("empty_cache_wall_s"),
        "per_run_s": {**{k: v for k, v in prev.get("per_run_s", {}).items() if k in walls}, **trained}}
    if shared is not None:
        theirs = set(_read_timing(shared).get("per_run_s", {}))
        after = bool(reused) and bool(theirs) and set(reused) <= theirs
        doc["shares"] = str(shared.parent.name)
        doc["shared_cache_wall_s"] = wall_total if after else prev.get("shared_cache_wall_s")
        doc["shared_runs_reused"] = len(reused) if after else prev.get("shared_runs_reused")
    if reused and prev.get("failed_invocations"):   # the runs this one reused may be theirs: their walls stay
        doc["failed_invocations"] = prev["failed_invocations"]
    atomic_write_json(path, doc)


def write_failed_timing(path: Path, walls: Dict[str, float], wall_total: float, error: str) -> None:
    """An invocation stopped by a failed run: the seconds of the runs it did finish join ``per_run_s``, and the
    invocation joins ``failed_invocations`` (its wall, how many runs it trained, the first failure), so the time a
    suite took over several invocations can still be summed. The record's other fields stay as they were."""
    prev = _read_timing(path)
    trained = {k: v for k, v in walls.items() if v > 0}
    failed = prev.get("failed_invocations", []) + [
        {"wall_s": wall_total, "runs_trained": len(trained), "error": error}]
    atomic_write_json(path, {**prev, "per_run_s": {**prev.get("per_run_s", {}), **trained},
                             "failed_invocations": failed})
