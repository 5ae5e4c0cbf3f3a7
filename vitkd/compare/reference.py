"""Is this install sound? A quick run's rows against the committed reference, each within its measured band.

Float kernels differ by CPU instruction set, and hundreds of epochs turn last-bit differences into points of
accuracy, so a fresh machine does not reproduce the committed numbers exactly. ``tools/isa_spread.py`` runs
the quick suite under three instruction sets on one machine and writes, per row, the largest difference from
the committed reference plus a margin: the row's *band* (``isa_spread.json`` beside the reference's
``results.csv``). A row outside its band points at a broken install or a changed method, not at the CPU.
"""
from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional

from ..config import path_under
from ..io import atomic_write_json

__all__ = ["RowCheck", "check_against_reference", "format_checks", "reference_dir", "write_checks", "SPREAD_FILE",
           "QUICK_HOME", "top1_by_row"]

SPREAD_FILE = "isa_spread.json"
QUICK_HOME = Path("runs") / "quick"   # where quick mode writes by default: untracked, never the reference


@dataclass
class RowCheck:
    row: str
    top1: float
    reference: Optional[float]       # None: the row is not in the reference
    band: Optional[float]            # None: no band measured for the row
    status: str                      # OK | OUTSIDE | no reference | no band

    @property
    def diff(self) -> Optional[float]:
        return None if self.reference is None else self.top1 - self.reference


def reference_dir(name: str) -> Path:
    """Where a quick suite's committed reference lives (relative to the working directory, as the results)."""
    return path_under(Path("results") / "compare", name, key="suite.name")


def top1_by_row(results_csv: Path) -> dict:
    """Each row's mean test top-1 in a suite's ``results.csv``."""
    with open(results_csv) as f:
        return {r["row"]: float(r["test_top1_mean"]) for r in csv.DictReader(f)}


def check_against_reference(out_dir: Path, ref_dir: Path) -> List[RowCheck]:
    """Each row of ``out_dir/results.csv`` against ``ref_dir``'s: OK when |Δ| <= its band."""
    got = top1_by_row(Path(out_dir) / "results.csv")
    ref = top1_by_row(Path(ref_dir) / "results.csv")
    spread = Path(ref_dir) / SPREAD_FILE
    bands = {}
    if spread.is_file():
        bands = {row: r["band"] for row, r in json.loads(spread.read_text())["quick"]["rows"].items()}
    checks = []
    for row, top1 in got.items():
        r, band = ref.get(row), bands.get(row)
        if r is None:
            status = "no reference"
        elif band is None:
            status = "no band"
        else:
            status = "OK" if abs(top1 - r) <= band + 1e-9 else "OUTSIDE"
        checks.append(RowCheck(row, top1, r, band, status))
    return checks


def format_checks(checks: List[RowCheck], ref_dir: Path) -> str:
    lines = [f"reference check against {ref_dir} (band: the largest difference measured across three CPU "
             f"instruction sets + 0.5 point; see tools/isa_spread.py)",
             f"{'row':<18} {'top-1':>7} {'reference':>9} {'diff':>7} {'band':>6}  status"]
    for c in checks:
        ref = "" if c.reference is None else f"{c.reference:.2f}"
        diff = "" if c.diff is None else f"{c.diff:+.2f}"
        band = "" if c.band is None else f"±{c.band:.2f}"
        lines.append(f"{c.row:<18} {c.top1:>7.2f} {ref:>9} {diff:>7} {band:>6}  {c.status}")
    outside = [c.row for c in checks if c.status == "OUTSIDE"]
    judged = [c for c in checks if c.status in ("OK", "OUTSIDE")]
    if outside:
        lines.append(f"{len(outside)} of {len(judged)} rows OUTSIDE their band ({', '.join(outside)}): more than a "
                     f"CPU's instruction set explains; check the install (versions in environment.json)")
    elif judged:
        lines.append(f"all {len(judged)} rows within their bands: this install reproduces the reference")
    return "\n".join(lines)


def write_checks(checks: List[RowCheck], ref_dir: Path, path: Path) -> None:
    atomic_write_json(path, {"reference": str(ref_dir), "rows": [{**asdict(c), "diff": c.diff} for c in checks]})
