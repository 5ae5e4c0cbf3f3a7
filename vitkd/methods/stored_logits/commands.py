"""``vitkd logits save CONFIG``: run a config's teachers over every epoch's augmented train images once and store
their top-K logits (one store per teacher; resumable)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ...commands import add_overrides, default_out, register_command

__all__ = ["add_logits_parser"]


def _cmd_logits_save(args) -> int:
    """Run the config's teachers over every epoch's augmented train images once; one store per teacher."""
    from ...config import load_config
    from .save import save_logits
    cfg = load_config(args.config, args.set)
    out = Path(args.out) if args.out else default_out(Path("logits"), cfg.name, args.config)
    stores = save_logits(cfg, out, topk=args.topk, epochs=args.epochs, bf16=args.bf16, values=args.values,
                         chunk=args.chunk, batch_size=args.batch_size, progress=cfg.train.progress,
                         log=lambda m: print(m, file=sys.stderr, flush=True))
    if int(os.environ.get("RANK", "0") or 0) == 0:
        print(json.dumps({"out": str(out), "stores": {k: str(v) for k, v in stores.items()}}))
    return 0


def add_logits_parser(sub, parser_class) -> None:
    lg = sub.add_parser("logits", help="stored teacher logits (TinyViT style): save once, distil without the teacher")
    lsub = lg.add_subparsers(dest="logits_command", required=True, parser_class=parser_class)
    s = lsub.add_parser("save", help="run CONFIG's teachers over every epoch's augmented (and mixed) train images "
                                     "and store their top-K logits; resumable")
    s.add_argument("config")
    s.add_argument("--out", help="folder of the stores, one per teacher: OUT/<teacher> (default logits/<config name>)")
    s.add_argument("--topk", type=int, help="logits kept per sample (default 10, at most the class count)")
    s.add_argument("--epochs", type=int, help="epochs to store (default train.epochs; a store serves runs of at "
                                              "most that many epochs)")
    s.add_argument("--bf16", action="store_true", help="run the teachers under bf16 autocast")
    s.add_argument("--values", choices=["fp16", "fp32"], default="fp16", help="stored logit precision")
    s.add_argument("--chunk", type=int, default=4096, help="sample keys per shard file (default 4096)")
    s.add_argument("--batch-size", type=int, help="teacher batch (default data.eval_batch_size)")
    add_overrides(s, "override config keys")
    s.set_defaults(fn=_cmd_logits_save)


register_command("logits", add_logits_parser,
                 after_disk_full="the same command keeps the shards written and continues")
