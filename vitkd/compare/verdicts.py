"""Each row against its declared baseline: paired by seed, Holm-corrected within its family.

Inputs are the finished run folders of a suite (per-seed final test top-1 and per-image predictions on
the test split). A row is called *better* or *worse* only when its family's Holm-corrected paired
t-test rejects at ``alpha``; everything else is *n.s.* (or *n/a* when fewer than 2 paired seeds exist).
The bootstrap interval and the fix/break shares (McNemar) are second, descriptive views.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..rundir import RunDir
from . import stats

__all__ = ["per_seed", "compare_to_baselines", "seed_plan", "DEFAULT_FAMILY"]

DEFAULT_FAMILY = "main"


def per_seed(jobs: Sequence) -> Dict[int, dict]:
    """{seed: {"top1": final test top-1, "correct": bool[images] or None}} of one row's runs."""
    out = {}
    for j in jobs:
        run = RunDir(j.out)
        correct = None
        if run.predictions_path("test").is_file():
            p = run.load_predictions("test")
            correct = (p["pred"] == p["target"]).numpy()
        out[j.seed] = {"top1": float(run.final()["test_top1"]), "correct": correct}
    return out


def compare_to_baselines(results: List[dict], seeds_of: Dict[str, Dict[int, dict]], families: Dict[str, str],
                         alpha: float = 0.05, n_boot: int = 2000) -> None:
    """Fill each result row (in place) with its paired comparison against ``row["baseline"]``, then
    Holm-correct within each family and write the verdict."""
    for r in results:
        base = r.get("baseline")
        r["family_test"] = families.get(r["row"], DEFAULT_FAMILY) if base else ""
        if not base or base == r["row"] or base not in seeds_of:
            r.update(delta=None, verdict="")
            continue
        mine, theirs = seeds_of[r["row"]], seeds_of[base]
        common = sorted(set(mine) & set(theirs))
        r["paired_seeds"] = len(common)
        if len(common) < 2:
            r.update(delta=(float(np.mean([mine[s]["top1"] - theirs[s]["top1"] for s in common]))
                            if common else None), verdict="n/a (1 seed)", p_raw=math.nan, p_holm=math.nan)
            continue
        a = [mine[s]["top1"] for s in common]
        b = [theirs[s]["top1"] for s in common]
        rc = [mine[s]["correct"] for s in common]
        bc = [theirs[s]["correct"] for s in common]
        have_images = all(x is not None for x in rc + bc) and len({len(x) for x in rc + bc}) == 1
        cmp = stats.compare_rows(a, b, row_correct=np.stack(rc) if have_images else None,
                                 base_correct=np.stack(bc) if have_images else None, alpha=alpha, n_boot=n_boot)
        row = cmp.to_row()
        r.update({"delta": row["mean_delta"], "sd_delta": row["sd_delta"], "ci_low": row["ci_low"],
                  "ci_high": row["ci_high"], "t": row["t"], "p_raw": row["p_raw"], "test": row["test"]})
        if have_images:
            r.update({"boot_ci_low": row["boot_ci_low"], "boot_ci_high": row["boot_ci_high"],
                      "fixed_share": row["mcnemar_fixed_share"], "broken_share": row["mcnemar_broken_share"],
                      "mcnemar_b": row["mcnemar_b"], "mcnemar_c": row["mcnemar_c"],
                      "mcnemar_p": row["mcnemar_p_raw"]})
    for fam in sorted({r["family_test"] for r in results if r.get("family_test")}):
        rows = [r for r in results if r.get("family_test") == fam and "p_raw" in r]
        if not rows:
            continue
        h = stats.holm([r["p_raw"] for r in rows], alpha)
        for r, p, rej in zip(rows, h.p_adjusted, h.reject):
            r["p_holm"] = float(p)
            r["family_size"] = int(sum(not math.isnan(x["p_raw"]) for x in rows))
            if r.get("verdict", "").startswith("n/a"):
                continue
            r["verdict"] = ("better" if r["delta"] > 0 else "worse") if rej else "n.s."


def seed_plan(results: List[dict], deltas: Sequence[float] = (2.0, 5.0), alpha: float = 0.05,
              power: float = 0.8) -> List[dict]:
    """Seeds each family needs, from the paired SDs measured here: for every target |Δ|, the smallest
    number of seeds at which a paired t-test at Holm's worst-case threshold (alpha / family size)
    reaches ``power``, at the family's median paired SD (and its largest)."""
    plans = []
    for fam in sorted({r["family_test"] for r in results if r.get("family_test")}):
        sds = [r["sd_delta"] for r in results if r.get("family_test") == fam and r.get("sd_delta") is not None
               and math.isfinite(r["sd_delta"]) and r["sd_delta"] > 0]
        m = sum(1 for r in results if r.get("family_test") == fam and r.get("p_raw") is not None
                and not math.isnan(r["p_raw"]))
        if not sds or m == 0:
            continue
        med, worst = float(np.median(sds)), float(max(sds))
        # the seeds the family's rows were paired over (their seed counts)
        n = max(2, min((int(r["seeds"]) for r in results if r.get("family_test") == fam and r.get("seeds")),
                       default=5))
        for d in deltas:
            plans.append({"family": fam, "family_size": m, "delta": d, "median_sd": med, "max_sd": worst,
                          "seeds_median_sd": stats.seeds_for_power(med, d, m, alpha, power),
                          "seeds_max_sd": stats.seeds_for_power(worst, d, m, alpha, power),
                          "critical_t_5_seeds": stats.critical_t(5, m, alpha), "seeds": n,
                          "smallest_delta_median_sd": stats.smallest_delta(n, med, m, alpha, power),
                          "smallest_delta_max_sd": stats.smallest_delta(n, worst, m, alpha, power)})
    return plans


def observed_images(seeds_of: Dict[str, Dict[int, dict]]) -> Optional[int]:
    """The number of test images in the predictions (for the report's 'one image = x points')."""
    for row in seeds_of.values():
        for s in row.values():
            if s["correct"] is not None:
                return int(len(s["correct"]))
    return None
