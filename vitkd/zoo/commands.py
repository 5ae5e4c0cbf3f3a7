"""``vitkd zoo ...``: list, info, download, eval, publish, halve, publish-suite (errors: one line, exit 2)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .index import ZooError, load_index, markdown_table, text_table, update_readme

__all__ = ["add_zoo_parser"]


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _cmd_list(args) -> int:
    index = load_index(args.manifest)
    entries = index.select(args.dataset, args.family, args.method)
    if args.readme:
        update_readme(Path(args.readme), entries)
        _log(f"zoo: wrote {len(entries)} rows into {args.readme}")
        return 0
    if args.json:
        print(json.dumps([e.to_dict() for e in entries], indent=2))
    elif args.markdown:
        print(markdown_table(entries), end="")
    elif entries:
        print(text_table(entries), end="")
    else:
        print(f"no models in {index.path}" + (" matching the filters" if index.models else ""))
    return 0


def _cmd_info(args) -> int:
    index = load_index(args.manifest)
    e = index.get(args.name)
    d = e.to_dict()
    d["urls"] = {f.name: _url_or_none(index, f) for f in e.files}
    print(json.dumps(d, indent=2))
    return 0


def _url_or_none(index, f):
    try:
        return index.url_of(f)
    except ZooError as err:
        return f"(unresolved: {err})"


def _cmd_download(args) -> int:
    from .load import model_folder
    entry, folder = model_folder(args.name, args.manifest, force=args.force, log=_log)
    print(json.dumps({"name": entry.name, "folder": str(folder), "bytes": entry.total_size()}))
    return 0


def _cmd_eval(args) -> int:
    from .evaluate import evaluate_entry
    res = evaluate_entry(args.name, args.manifest, split=args.split, device=args.device)
    print(json.dumps(res, indent=None if args.json else 2))
    return 0


def _cmd_publish(args) -> int:
    from .publish import publish_run
    teachers = {}
    for kv in args.teacher:
        if "=" not in kv:
            raise ZooError(f"--teacher {kv}: expected KEY=ZOO_NAME")
        k, v = kv.split("=", 1)
        teachers[k] = v
    e = publish_run(args.run_dir, args.name, args.index, method=args.method or "", family=args.family or "",
                    group=args.group or "", teachers=teachers, license=args.license, split=args.split,
                    throughput=not args.no_throughput, half=args.half, log=_log)
    print(json.dumps({"name": e.name, "top1": e.top1, "bytes": e.total_size(), "index": str(args.index)}))
    return 0


def _cmd_halve(args) -> int:
    from .publish import halve_entry
    entries = [halve_entry(n, args.index, log=_log) for n in args.names]
    print(json.dumps([{"name": e.name, "weights_dtype": e.weights_dtype, "bytes": e.total_size()} for e in entries]))
    return 0


def _cmd_publish_suite(args) -> int:
    from ..compare.publish import publish_suite
    entries = publish_suite(args.results_dir, args.index, cache=args.cache, seed=args.seed, max_mb=args.max_mb,
                            suite_file=args.suite_file, half_above_mb=args.half_above, log=_log)
    if args.readme:
        update_readme(Path(args.readme), load_index(str(args.index)).models)
    print(json.dumps({"published": [e.name for e in entries], "index": str(args.index)}))
    return 0


def add_zoo_parser(sub, parser_class) -> None:
    """The ``zoo`` command group, added to the CLI's sub-parsers."""
    z = sub.add_parser("zoo", help="the model zoo: list, info, download, eval, publish (models/zoo.yaml)")
    zs = z.add_subparsers(dest="zoo_command", required=True, parser_class=parser_class)
    common = parser_class(add_help=False)
    common.add_argument("--manifest", help="the zoo index to read (default: VITKD_ZOO_MANIFEST, else the one "
                                           "shipped with vitkd); relative file URLs resolve against VITKD_ZOO_URL")

    ls = zs.add_parser("list", parents=[common], help="published models (filters combine)")
    ls.add_argument("--dataset")
    ls.add_argument("--family")
    ls.add_argument("--method")
    ls.add_argument("--json", action="store_true")
    ls.add_argument("--markdown", action="store_true", help="a Markdown table")
    ls.add_argument("--readme", help="write the Markdown table between the zoo markers of this README")
    ls.set_defaults(fn=_cmd_list)

    i = zs.add_parser("info", parents=[common], help="an entry of the index, with its resolved URLs")
    i.add_argument("name")
    i.set_defaults(fn=_cmd_info)

    d = zs.add_parser("download", parents=[common], help="download and verify (sha256, size) into the cache "
                                                         "(~/.cache/vitkd, VITKD_HOME overrides)")
    d.add_argument("name")
    d.add_argument("--force", action="store_true", help="download again even when the cached files verify")
    d.set_defaults(fn=_cmd_download)

    e = zs.add_parser("eval", parents=[common], help="download, load through timm's local-dir: and evaluate on "
                                                     "the entry's dataset and split")
    e.add_argument("name")
    e.add_argument("--split", choices=["train", "val", "test"], help="default: the entry's split")
    e.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    e.add_argument("--json", action="store_true", help="one line of JSON (default: indented JSON)")
    e.set_defaults(fn=_cmd_eval)

    p = zs.add_parser("publish", help="export a finished run's student (timm HF-hub layout) as a zoo entry")
    p.add_argument("run_dir")
    p.add_argument("--name", required=True)
    p.add_argument("--index", default="models/zoo.yaml", help="the index to add the entry to (its folder gets the "
                                                               "model folder; default models/zoo.yaml)")
    p.add_argument("--method")
    p.add_argument("--family")
    p.add_argument("--group")
    p.add_argument("--teacher", action="append", default=[], metavar="KEY=ZOO_NAME",
                   help="the zoo entry of the run's teacher KEY (lineage; repeatable)")
    p.add_argument("--license", default="Apache-2.0")
    p.add_argument("--split", default="test", choices=["val", "test"])
    p.add_argument("--no-throughput", action="store_true", help="do not measure img/s")
    p.add_argument("--half", action="store_true", help="store the weights in float16 when the entry's top-1 stays "
                                                       "exactly the float32 weights' (else float32)")
    p.set_defaults(fn=_cmd_publish)

    h = zs.add_parser("halve", help="store published float32 entries in float16 where their top-1 on their split "
                                     "stays exactly the index's (else leave them)")
    h.add_argument("names", nargs="+", metavar="NAME")
    h.add_argument("--index", default="models/zoo.yaml")
    h.set_defaults(fn=_cmd_halve)

    s = zs.add_parser("publish-suite", help="publish a comparison suite's declared selection: its teachers, the "
                                            "no-KD baselines and each family's best row on validation (seed 0)")
    s.add_argument("results_dir", help="the suite's results folder, e.g. results/compare/digits")
    s.add_argument("--cache", help="the suite's run folders (default runs/compare/<suite>)")
    s.add_argument("--index", default="models/zoo.yaml")
    s.add_argument("--seed", type=int, default=0, help="the seed whose weights are published (default 0)")
    s.add_argument("--max-mb", type=float, default=50.0, help="refuse a selection heavier than this (default 50)")
    s.add_argument("--suite-file", help="the suite config, for the cards (default RESULTS_DIR/suite.yaml)")
    s.add_argument("--readme", help="also fill the zoo block of this README")
    s.add_argument("--half-above", type=float, metavar="MB", help="store an entry whose float32 weights pass MB in "
                                                                  "float16, where its top-1 stays the same")
    s.set_defaults(fn=_cmd_publish_suite)
