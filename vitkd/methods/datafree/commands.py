"""``vitkd synthesize CONFIG``: a labelled synthetic train set from a BatchNorm CNN teacher (DeepInversion)."""
from __future__ import annotations

import json
from pathlib import Path

from ...commands import add_overrides, default_out, register_command
from .config import DATA_KEY

__all__ = ["add_synthesize_parser"]


def _cmd_synthesize(args) -> int:
    """A labelled synthetic set from a BN teacher (DeepInversion), reused or continued when --out holds it."""
    from ...rundir import ensure_writable
    from .config import load_synth_config
    from .run import synthesize
    cfg = load_synth_config(args.config, args.set)
    out = Path(args.out) if args.out else default_out(Path("runs") / "synth", cfg.name, args.config)
    ensure_writable(out, "--out")
    m = synthesize(cfg, out, overwrite=args.overwrite, log=lambda msg: print(msg, flush=True))
    print(json.dumps({"out": str(out), "count": m["count"], "teacher_top1": m["teacher_top1"],
                      "fingerprint": m["fingerprint"]}))
    return 0


def add_synthesize_parser(sub, parser_class) -> None:
    sy = sub.add_parser("synthesize", help=f"a labelled synthetic train set from a BatchNorm CNN teacher "
                                           f"(DeepInversion); a run config trains on it with data.{DATA_KEY}: DIR")
    sy.add_argument("config")
    sy.add_argument("--out", help="the set's folder (default runs/synth/<config name>); a partial set there is "
                                  "continued, a complete one of the same teacher and settings reused")
    add_overrides(sy, "override config keys, e.g. --set synth.iterations=100 (repeatable)")
    sy.add_argument("--overwrite", action="store_true", help="replace a set of another teacher or settings")
    sy.set_defaults(fn=_cmd_synthesize)


register_command("synthesize", add_synthesize_parser,
                 after_disk_full="the same command keeps the batches written and continues")
