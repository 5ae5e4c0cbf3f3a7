"""The plots: accuracy against MACs per family (pareto.png), accuracy per epoch (curves.png), and, for the
suites that have them, the gain over no-KD along a sweep (sweep.png: the data-size study) and against the
teacher's size (teachers.png: the capacity study). Which plots a suite draws: :data:`PLOTS`, from its rows."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Dict, List


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_png(fig, path: Path, dpi: int = 120) -> None:
    """``fig`` written to ``path`` as PNG (a temp file renamed into place), then closed."""
    from ..io import atomic_write_bytes
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _finish_log_x(fig, ax, path: Path, xlabel: str, ylabel: str, title: str) -> None:
    """Log x axis, labels, grid, legend; written to ``path``."""
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    save_png(fig, path)


def plots(suite, teachers, results, curves, out_dir: Path) -> List[str]:
    """Draw every plot that applies to these results; returns the files written."""
    written = []
    for name, (applies, draw) in PLOTS.items():
        if applies(suite, teachers, results):
            draw(suite, teachers, results, curves, out_dir / name)
            written.append(name)
    return written


def pareto(suite, teachers, results, curves, path: Path):
    colors = suite.family_colors
    not_methods = {suite.baseline_family, *suite.reference_families}
    plt = pyplot()
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
    _finish_log_x(fig, ax, path, "MACs per image (M, log scale)", "test top-1 (%)  mean ± std over seeds",
                  "Accuracy vs compute: students by distillation family, teachers as stars")


def epoch_curves(suite, teachers, results, curves, path: Path):
    colors = suite.family_colors
    plt = pyplot()
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
    save_png(fig, path, dpi=110)


def _delta_bar(r):
    """(Δ, lower error, upper error) of a result row against its baseline (its 95% t-interval)."""
    d = float(r["delta"])
    lo, hi = r.get("ci_low"), r.get("ci_high")
    if lo is None or lo != lo:
        return d, 0.0, 0.0
    return d, d - float(lo), float(hi) - d


def _compared(results):
    return [r for r in results if r.get("delta") is not None and r.get("verdict")]


def sweep(suite, teachers, results, curves, path: Path):
    """The gain of each method over its baseline at every value of the sweep (the data-size study), with
    95% intervals; filled markers where the study's Holm-corrected test calls it; the accuracies below."""
    from .sweep import sweep_points
    plt = pyplot()
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(9, 8.5), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    points = sweep_points(results)
    methods = {k: v for k, v in points.items() if all(r.get("delta") is not None for r in v)}
    n = max(1, len(methods))
    # one colour per method (several methods may share a family here), the baselines black
    color = {name: "black" if name not in methods else f"C{list(methods).index(name)}" for name in points}
    for i, (name, pts) in enumerate(methods.items()):
        c = color[name]
        xs = [float(r["sweep_value"]) * (1 + 0.03 * (i - (n - 1) / 2)) for r in pts]
        bars = [_delta_bar(r) for r in pts]
        ax.errorbar(xs, [b[0] for b in bars], yerr=[[b[1] for b in bars], [b[2] for b in bars]], color=c,
                    capsize=3, lw=1.2, marker=None, label=name)
        for x, b, r in zip(xs, bars, pts):
            called = r.get("verdict") in ("better", "worse")
            ax.plot(x, b[0], "o", color=c, mfc=c if called else "white", ms=7)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_ylabel("Δ test top-1 vs no-KD (points), 95% CI")
    ax.set_title("Gain over no-KD against train images (filled: significant, Holm within the study)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    for name, pts in points.items():
        c = color[name]
        ax2.errorbar([float(r["sweep_value"]) for r in pts], [r["test_top1_mean"] for r in pts],
                     yerr=[r["test_top1_std"] for r in pts], color=c, capsize=2, marker="o", ms=4, lw=1, label=name)
    by_t: Dict[str, List[dict]] = {}
    for t in teachers:
        if t.get("sweep_of"):
            by_t.setdefault(t["sweep_of"], []).append(t)
    for name, ts in by_t.items():
        ts = sorted(ts, key=lambda t: float(t["sweep_value"]))
        ax2.plot([float(t["sweep_value"]) for t in ts], [t["test_top1"] for t in ts], "*--", color="goldenrod",
                 ms=10, label=f"teacher {name} (CNN reference)")
    ax2.set_xscale("log")
    ax2.set_xlabel((suite.sweep.label or suite.sweep.key) if suite.sweep else "sweep value")
    ax2.set_ylabel("test top-1 (%)")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=7, loc="lower right")
    xs = sorted({float(r["sweep_value"]) for pts in points.values() for r in pts})
    ax2.set_xticks(xs)
    ax2.set_xticklabels([f"{x:g}" for x in xs])
    fig.tight_layout()
    save_png(fig, path)


def teacher_sizes(suite, teachers, results, curves, path: Path):
    """Student accuracy against its teacher's MACs for the rows of one method with one teacher each (the
    capacity study); a teacher-assistant chain (a teacher distilled from another) is drawn at its
    assistant's MACs, joined to the teacher it was distilled from."""
    plt = pyplot()
    by_label = {t["label"]: t for t in teachers}
    rows = [r for r in results if r["group"] == "capacity" and r["teachers"] in by_label]
    base = next((r for r in results if r["family"] == suite.baseline_family), None)
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for r in rows:
        t = by_label[r["teachers"]]
        assisted = bool(t.get("distilled_from"))
        ax.errorbar(t["macs_m"], r["test_top1_mean"], yerr=r["test_top1_std"], fmt="s" if assisted else "o",
                    color="tab:red" if assisted else "tab:brown", capsize=3, ms=7)
        ax.annotate(f"{r['row']} ({t['label']}: {t['test_top1']:.1f}%)", (t["macs_m"], r["test_top1_mean"]),
                    fontsize=7, xytext=(6, 4), textcoords="offset points")
        if assisted:
            src = next((x for x in teachers if x["teacher"] == t["distilled_from"]), None)
            via = next((x for x in rows if src and x["teachers"] == src["label"]), None)
            if via is not None:
                ax.annotate("", (t["macs_m"], r["test_top1_mean"]), (src["macs_m"], via["test_top1_mean"]),
                            arrowprops={"arrowstyle": "->", "color": "tab:red", "alpha": 0.6})
    if base is not None:
        ax.axhspan(base["test_top1_mean"] - base["test_top1_std"], base["test_top1_mean"] + base["test_top1_std"],
                   color="k", alpha=0.08)
        ax.axhline(base["test_top1_mean"], color="k", lw=0.8, label=f"no-KD ({base['test_top1_mean']:.1f} ± "
                                                                       f"{base['test_top1_std']:.1f})")
    _finish_log_x(fig, ax, path, "teacher MACs per image (M, log scale)",
                  "student test top-1 (%)  mean ± std over seeds",
                  "Student accuracy against teacher size (squares: through a teacher assistant)")


def _always(suite, teachers, results) -> bool:
    return True


def _has_sweep(suite, teachers, results) -> bool:
    return any(r.get("sweep_of") for r in _compared(results))   # a gain to draw: a teachers' sweep has none


def _has_capacity(suite, teachers, results) -> bool:
    return any(r["group"] == "capacity" for r in results) and len(teachers) > 1


# file name -> (does it apply to these results?, draw it)
PLOTS: Dict[str, tuple] = {
    "pareto.png": (_always, pareto),
    "curves.png": (_always, epoch_curves),
    "sweep.png": (_has_sweep, sweep),
    "teachers.png": (_has_capacity, teacher_sizes),
}
