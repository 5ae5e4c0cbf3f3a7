"""``vitkd data ...``: ``list`` (each known dataset, where it was found, whether it verified) and ``get NAME`` (make
a dataset's files available and verified). Errors: one line, exit 2."""
from __future__ import annotations

import json
import sys

from ..config import DATASET_NAMES, ConfigError
from ..download import check_url
from . import FETCHABLE, dataset_status

__all__ = ["add_data_parser"]


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _cmd_list(args) -> int:
    rows = [dataset_status(name) for name in DATASET_NAMES]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        if "source" in r:
            where = r["source"]
        elif r["found"] is None:
            where = f"not found (looked in {', '.join(r['looked_in'])}): vitkd data get {r['dataset']}"
        else:
            where = f"{r['found']} ({r['where']}): " + ("verified" if r["verified"] else f"NOT verified: {r['problem']}")
        print(f"{r['dataset']:<14} {where}")
    return 0


def _cmd_get(args) -> int:
    if args.name not in FETCHABLE:
        raise ConfigError(f"data get: '{args.name}' is not fetched by vitkd (fetchable: {', '.join(FETCHABLE)}; "
                          f"known: {', '.join(DATASET_NAMES)})")
    mirrors = [check_url(m, "--mirror") for m in args.mirror] or None
    found = FETCHABLE[args.name].get(mirrors=mirrors, install=not args.no_install, log=_log,
                                     progress=not args.quiet and None)
    print(json.dumps({"dataset": args.name, "found": str(found.folder), "where": found.where, "verified": True}))
    return 0


def add_data_parser(sub, parser_class) -> None:
    d = sub.add_parser("data", help="datasets: where they are, and getting them (Fashion-MNIST) verified")
    dsub = d.add_subparsers(dest="data_cmd", required=True, parser_class=parser_class)
    ls = dsub.add_parser("list", help="each known dataset: where it was found and whether it verified")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(fn=_cmd_list)
    g = dsub.add_parser("get", help="make a dataset's files available and verified: the files already here, else "
                                    "Debian's package (as root, with apt), else a download from the mirrors")
    g.add_argument("name", help=f"one of: {', '.join(FETCHABLE)}")
    g.add_argument("--mirror", action="append", default=[], metavar="URL",
                   help="download from this mirror (repeatable; default: torchvision's mirrors, after the files "
                        "already here and Debian's package)")
    g.add_argument("--no-install", action="store_true", help="never run apt-get")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.set_defaults(fn=_cmd_get)
