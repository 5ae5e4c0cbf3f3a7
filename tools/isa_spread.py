"""How much do results move with the CPU's instruction set? Measured here by forcing PyTorch's, oneDNN's and
MKL's kernel dispatch down to AVX2 and to no vector extension at all, on one machine.

Three parts, each under every instruction set (``native``: what the machine picks; ``avx2``; ``default``):

- ``quick``: a suite's quick mode (``vitkd compare SUITE --quick``, teachers restored from the zoo; ``--suite``,
  default the digits suite), each instruction set with its own empty run cache; per row, the test top-1 and its
  difference from the committed reference (``results/compare/<suite>-quick/results.csv``). The demo's band for a
  row is the largest such difference plus 0.5 point (written to ``results/compare/<suite>-quick/isa_spread.json``,
  read by :mod:`vitkd.compare.reference`).
- ``zoo``: ``vitkd zoo eval`` of every published entry: evaluation of fixed weights.
- ``behaviour``: the per-step losses of ``tests/behaviour/step_losses.py`` against its record; the largest
  relative difference per config (written to ``tests/behaviour/isa_spread.json``, from which the behaviour
  test derives its tolerance).

    python tools/isa_spread.py [--parts quick zoo behaviour] [--suite configs/compare/digits.yaml] [--work DIR]

Runs are cached under ``--work`` (untracked), so an interrupted measurement continues.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from vitkd.compare.reference import top1_by_row

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SUITE = "configs/compare/digits.yaml"
BEHAVIOUR = ROOT / "tests" / "behaviour"
# the environment that forces each instruction set: ATen's vectorised kernels, oneDNN's and MKL's dispatch
ISAS = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "default": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41",
                "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
}
MARGIN = 0.5   # points added to the largest measured difference to make a row's band


def _env(isa: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA",
                                                            "MKL_ENABLE_INSTRUCTIONS")}
    env.update(ISAS[isa])
    return env


def _run(cmd, isa, **kw):
    print(f"[{isa}] {' '.join(map(str, cmd))}", flush=True)
    return subprocess.run([str(c) for c in cmd], env=_env(isa), check=True, cwd=ROOT, **kw)


def _python() -> str:
    return sys.executable


def cpu_description(isa: str) -> dict:
    out = subprocess.run([_python(), "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                         env=_env(isa), capture_output=True, text=True, check=True).stdout.strip()
    model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"aten_capability": out, "env": ISAS[isa], "cpu": model}


def quick_reference(suite: str) -> Path:
    """The committed quick reference of a suite: ``results/compare/<name>-quick``."""
    from vitkd.compare.suite import load_suite
    return ROOT / "results" / "compare" / f"{load_suite(ROOT / suite)[0].name}-quick"


def quick(work: Path, suite: str) -> dict:
    ref = top1_by_row(quick_reference(suite) / "results.csv")
    runs = {}
    for isa in ISAS:
        out = work / isa / "results"
        if not (out / "results.csv").exists():
            t0 = time.perf_counter()
            _run([_python(), "-m", "vitkd", "compare", suite, "--quick", "--out", out, "--cache",
                  work / isa / "cache"], isa)
            (work / isa / "wall_s").write_text(f"{time.perf_counter() - t0:.1f}\n")
        runs[isa] = {"top1": top1_by_row(out / "results.csv"),
                     "wall_s": float((work / isa / "wall_s").read_text()) if (work / isa / "wall_s").exists()
                     else None}
    rows = {}
    for row, r in ref.items():
        got = {isa: runs[isa]["top1"][row] for isa in ISAS}
        worst = max(abs(v - r) for v in got.values())
        spread = max(got.values()) - min(got.values())
        rows[row] = {"reference": r, **{isa: v for isa, v in got.items()},
                     "max_abs_diff_from_reference": round(worst, 4), "spread_across_isas": round(spread, 4),
                     "band": round(worst + MARGIN, 4)}
    return {"margin": MARGIN, "rows": rows, "wall_s": {isa: runs[isa]["wall_s"] for isa in ISAS}}


def zoo(work: Path) -> dict:
    names = [e["name"] for e in json.loads(subprocess.run(
        [_python(), "-m", "vitkd", "zoo", "list", "--json"], capture_output=True, text=True, check=True,
        cwd=ROOT).stdout)]
    out = {}
    for isa in ISAS:
        f = work / isa / "zoo.json"
        if not f.exists():
            res = {}
            for n in names:
                p = _run([_python(), "-m", "vitkd", "zoo", "eval", n], isa, capture_output=True, text=True)
                res[n] = json.loads(p.stdout)
            f.write_text(json.dumps(res, indent=1))
        out[isa] = json.loads(f.read_text())
    entries = {}
    for n in names:
        split = out["native"][n]["split"]
        top = {isa: out[isa][n][f"{split}_top1"] for isa in ISAS}
        loss = {isa: out[isa][n][f"{split}_loss"] for isa in ISAS}
        entries[n] = {"split": split, "index_top1": out["native"][n]["index_top1"], "top1": top,
                      "top1_equal": len(set(top.values())) == 1,
                      "loss_max_rel_diff": max(abs(v - loss["native"]) / max(abs(loss["native"]), 1e-12)
                                               for v in loss.values())}
    return {"entries": entries, "all_top1_equal": all(e["top1_equal"] for e in entries.values())}


def behaviour(work: Path) -> dict:
    record = json.loads((BEHAVIOUR / "step_losses.json").read_text())
    per_isa = {}
    for isa in ISAS:
        f = work / isa / "step_losses.json"
        if not f.exists():
            _run([_python(), BEHAVIOUR / "step_losses.py", "dump", f], isa)
        now = json.loads(f.read_text())
        per_isa[isa] = now
    sys.path.insert(0, str(BEHAVIOUR))
    from step_losses import relative_differences   # noqa: E402  (the test's own measure of a difference)
    configs = {}
    for name in record["steps"]:
        configs[name] = {isa: relative_differences(record["steps"][name], per_isa[isa][name]) for isa in ISAS}
    return {"recorded_versions": record["versions"], "max_rel_diff": configs,
            "overall_max_rel_diff": max(max(v.values()) for v in configs.values())}


def markdown_table(doc: dict) -> str:
    """The README's table: per row, the committed reference, each instruction set's top-1, the spread, the band."""
    isas = list(doc["machine"])
    head = ["row", "committed"] + [f"{i} ({doc['machine'][i]['aten_capability']})" for i in isas] + \
        ["spread", "band"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row, r in doc["quick"]["rows"].items():
        cells = [row, f"{r['reference']:.2f}"] + [f"{r[i]:.2f}" for i in isas] + \
            [f"{r['spread_across_isas']:.2f}", f"±{r['band']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", nargs="+", default=["quick", "zoo", "behaviour"], choices=["quick", "zoo", "behaviour"])
    ap.add_argument("--suite", default=DEFAULT_SUITE, help=f"the suite of the quick part (default {DEFAULT_SUITE})")
    ap.add_argument("--work", help="run caches (default runs/isa_spread, or runs/isa_spread/<suite> for another suite)")
    args = ap.parse_args(argv)
    work = Path(args.work) if args.work else ROOT / "runs" / "isa_spread" / (
        "" if args.suite == DEFAULT_SUITE else Path(args.suite).stem)
    for isa in ISAS:
        (work / isa).mkdir(parents=True, exist_ok=True)
    machine = {isa: cpu_description(isa) for isa in ISAS}
    import torch
    import timm
    import numpy
    versions = {"torch": torch.__version__, "timm": timm.__version__, "numpy": numpy.__version__,
                "python": platform.python_version()}
    command = "python tools/isa_spread.py --parts " + " ".join(args.parts)
    if "quick" in args.parts or "zoo" in args.parts:
        target = quick_reference(args.suite) / "isa_spread.json"
        doc = json.loads(target.read_text()) if target.exists() else {}
        doc.update({"what": "the quick suite and every zoo entry under three CPU instruction sets, one machine",
                    "command": "python tools/isa_spread.py" + ("" if args.suite == DEFAULT_SUITE else
                                                               f" --suite {args.suite}"),
                    "machine": machine, "versions": versions})
        if "quick" in args.parts:
            doc["quick"] = quick(work, args.suite)
        if "zoo" in args.parts:
            doc["zoo_eval"] = zoo(work)
        target.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {target}")
        if "quick" in doc:
            print(markdown_table(doc))
    if "behaviour" in args.parts:
        target = BEHAVIOUR / "isa_spread.json"
        doc = {"what": "per-step losses of every digits config under three CPU instruction sets, against the record",
               "command": command, "machine": machine, "versions": versions, **behaviour(work)}
        target.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
