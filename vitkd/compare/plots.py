"""The plots: accuracy against MACs per family (pareto.png) and accuracy per epoch (curves.png)."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Dict, List


def plots(suite, teachers, results, curves, out_dir: Path):
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
