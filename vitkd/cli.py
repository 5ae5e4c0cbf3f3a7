"""The ``vitkd`` command line. Usage and config errors: one line on stderr, exit code 2."""
from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from pathlib import Path
from typing import List, Optional, Tuple

from .commands import COMMANDS, EXIT_USAGE, Parser, add_overrides, default_out
from .config import ConfigError

EXIT_RUNS_FAILED = 1
EXIT_NUMERICS = 3
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)   # no space, over quota, over the file-size limit
AFTER_DISK_FULL = {   # what running the command again keeps, by command (registered commands say their own)
    "train": "--resume continues from the last checkpoint",
    "compare": "the runs finished are reused", "tune": "the runs finished are reused"}


def _cmd_train(args) -> int:
    from .config import load_config
    from .engine import train
    from .engine.kinds import run_kind_of
    from .dist import env_world_size
    from .rundir import exclusive
    out = Path(args.out) if args.out else None
    if args.resume and out is None:
        raise ConfigError("--resume needs --out DIR (the run folder to continue)")
    if args.nproc is not None and args.nproc < 1:
        raise ConfigError(f"--nproc: must be >= 1, got {args.nproc}")
    kind = run_kind_of(args.config)   # a file of several runs (a registered run kind), else one run
    if kind is not None:
        if kind.one_process and ((args.nproc or 1) > 1 or env_world_size() > 1):
            raise ConfigError(f"a {kind.name} runs its stages in one process (launch each stage's config with "
                              f"torchrun)")
        if args.resume and not kind.takes_resume:
            raise ConfigError(f"a {kind.name} reuses finished stages and resumes unfinished ones by itself "
                              f"(no --resume)")
        out = out or default_out(Path("runs"), None, args.config)
        with exclusive(out):   # each stage's run folder is held by its own run too
            summary = kind.train(args.config, out, args.set, overwrite=args.overwrite,
                                 log=lambda m: print(m, flush=True))
        print(json.dumps({"out": str(out), **summary}))
        return 0
    if (args.nproc or 1) > 1:
        return _launch_torchrun(args, out)
    cfg = load_config(args.config, args.set)
    if out is None:
        out = default_out(Path("runs"), cfg.name, args.config)
    final = train(cfg, out, resume=args.resume, overwrite=args.overwrite, log=lambda m: print(m, flush=True))
    if int(os.environ.get("RANK", "0") or 0) == 0:   # under torchrun: rank 0 alone reports
        # the student's top-1, and beside it any other model the run evaluates (its EMA, models trained with it)
        print(json.dumps({"out": str(out), **{k: final[k] for k in final if k.endswith(("val_top1", "test_top1"))}}))
    return 0


def _launch_torchrun(args, out: Optional[Path]) -> int:
    """``vitkd train --nproc N``: this node's N processes through PyTorch's own launcher (``torchrun
    --standalone``, a free local port), each running ``vitkd train`` as one rank. The config and the
    target folder are checked here first, so their errors are one line, not N tracebacks."""
    import subprocess
    from .config import load_config
    from .dist import env_world_size
    from .engine.loop import check_target
    from .rundir import RunDir, exclusive
    if env_world_size() > 1:
        raise ConfigError("--nproc: this process is already one rank of a torchrun launch")
    cfg = load_config(args.config, args.set)
    out = out or default_out(Path("runs"), cfg.name, args.config)
    with exclusive(out):   # released before the launch: rank 0 takes the folder for the run
        check_target(RunDir(out), args.resume, args.overwrite, cfg)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
           "-m", "vitkd", "train", str(args.config), "--out", str(out)]
    for kv in args.set:
        cmd += ["--set", kv]
    cmd += ["--resume"] * bool(args.resume) + ["--overwrite"] * bool(args.overwrite)
    return subprocess.call(cmd)


def _cmd_eval(args) -> int:
    """The student alone, from a run folder (its config and weights) or a bare weights file (--model)."""
    from .config import apply_overrides, parse_config
    from .engine import build_student, evaluate, load_checkpoint
    from .rundir import RunDir
    target = Path(args.checkpoint)
    epoch = None
    state = None
    if args.model:
        if not target.is_file():
            raise ConfigError(f"eval: weights file not found: {target}")
        if target.suffix != ".safetensors":
            raise ConfigError(f"eval: {target} is not a .safetensors weights file (pickle files are not loaded)")
        raw = apply_overrides({"model": {"name": args.model}}, args.set)
        weights = str(target)
    else:
        run = RunDir(target if target.is_dir() else target.parent)
        if not run.config_path.is_file():
            raise ConfigError(f"eval: {target} is not a run folder (no {run.CONFIG}); for a bare weights file "
                              f"give --model NAME")
        raw = apply_overrides(run.read_config(), args.set)
        raw.pop("distill", None)   # the student alone: no teacher is loaded
        if run.is_finished() and target.is_dir():
            weights = str(run.finished_weights())
        else:   # an unfinished run: the student of its last checkpoint
            ckpt = load_checkpoint(target)
            state, epoch, weights = ckpt["student"], int(ckpt["epoch"]) + 1, None
    cfg = parse_config(raw)
    if args.device:
        cfg.train.device = args.device
    student, datasets, _, _, device = build_student(cfg, weights)
    if state is not None:
        student.load_state_dict(state)
    res = {"checkpoint": str(args.checkpoint)}
    if epoch is not None:
        res["epoch"] = epoch
    for split in args.splits:
        r = evaluate(student, datasets[split], cfg.data.eval_batch_size, device, cfg.data.num_workers)
        res[f"{split}_top1"], res[f"{split}_loss"] = r["top1"], r["loss"]
        res[f"{split}_images"] = len(datasets[split])
    print(json.dumps(res, indent=None if args.json else 2))
    return 0


def _cmd_convert_checkpoint(args) -> int:
    from .engine.checkpoint import convert_checkpoint
    print(json.dumps({"checkpoint": str(convert_checkpoint(args.old, args.new, trust=args.trust))}))
    return 0


def _cmd_profile(args) -> int:
    if args.img_size is not None and args.img_size <= 0:
        raise ConfigError(f"--img-size: must be > 0, got {args.img_size}")
    if args.batch_size <= 0:
        raise ConfigError(f"--batch-size: must be > 0, got {args.batch_size}")
    from .profile import format_report, profile_model
    if args.model.endswith((".yaml", ".yml")):
        return _profile_config(args)
    import timm
    if not timm.is_model(args.model):
        import difflib
        hint = difflib.get_close_matches(args.model, timm.list_models(), n=1)
        raise ConfigError(f"unknown model '{args.model}'" + (f" (did you mean '{hint[0]}'?)" if hint else ""))
    if args.in_chans is not None and args.in_chans <= 0:
        raise ConfigError(f"--in-chans: must be > 0, got {args.in_chans}")
    extra = {"in_chans": args.in_chans} if args.in_chans is not None else {}
    report = profile_model(args.model, img_size=args.img_size, batch_size=args.batch_size,
                           throughput=not args.no_throughput, **extra)
    print(json.dumps(report, indent=2, default=str) if args.json else format_report(report))
    return 0


def _cmd_compare(args) -> int:
    from .compare.main import run_suite
    if args.jobs is not None and args.jobs < 1:
        raise ConfigError(f"--jobs: must be >= 1, got {args.jobs}")
    out = run_suite(args.suite, out=args.out, quick=args.quick, cache=args.cache, jobs=args.jobs,
                    log=lambda m: print(m, flush=True), readme=args.readme, plan_seeds=args.plan_seeds,
                    executor=args.executor, address=args.address, cpus_per_job=args.cpus_per_job,
                    tuning=args.tuning, live_teachers=args.live_teachers)
    print(json.dumps({"out": str(out)}))
    return 0


DEMO_SUITE = "configs/compare/fmnist.yaml"
DEMO_FALLBACK = "configs/compare/digits.yaml"


def demo_suite(suite: str, fallback: str, mirrors: List[str], install: bool) -> Tuple[str, Optional[str]]:
    """The suite ``vitkd demo`` runs and, when it falls back, the one line saying why: ``suite`` when its data are
    here or can be got (``vitkd data get``: the files found, Debian's package as root, else the mirrors), else
    ``fallback`` (the embedded digits)."""
    from .datasets import FETCHABLE
    from .download import check_url
    from .compare.suite import load_suite
    from .config import DataError, read_config
    s, base = load_suite(suite)
    name = read_config(s.student, base)["data"]["name"]
    if name not in FETCHABLE:
        return suite, None
    try:
        FETCHABLE[name].get(mirrors=[check_url(m, "--mirror") for m in mirrors] or None, install=install,
                            log=lambda m: print(m, file=sys.stderr, flush=True))
    except DataError as e:
        return fallback, f"vitkd demo: no {name} here and no way to get it ({str(e).splitlines()[0]}); running {fallback}"
    return suite, None


def _cmd_demo(args) -> int:
    from .compare.main import run_suite
    suite, why = (args.fallback, None) if args.digits else demo_suite(args.suite, args.fallback, args.mirror,
                                                                      not args.no_install)
    if why:
        print(why, flush=True)
    out = run_suite(suite, out=args.out, quick=True, cache=args.cache, jobs=args.jobs,
                    log=lambda m: print(m, flush=True))
    print(json.dumps({"out": str(out), "suite": suite}))
    return 0


def _cmd_report(args) -> int:
    from .compare.evidence import write_readme
    write_readme(args.spec, args.readme)
    print(json.dumps({"readme": args.readme}))
    return 0


def _cmd_tune(args) -> int:
    from .compare.tune import tune_suite
    if args.jobs is not None and args.jobs < 1:
        raise ConfigError(f"--jobs: must be >= 1, got {args.jobs}")
    out = tune_suite(args.suite, out=args.out, cache=args.cache, jobs=args.jobs,
                     log=lambda m: print(m, flush=True), executor=args.executor, address=args.address,
                     cpus_per_job=args.cpus_per_job)
    print(json.dumps({"out": str(out)}))
    return 0


def _profile_config(args) -> int:
    """Training cost per image of a (distillation) run config: student fwd+bwd, teachers, overhead."""
    from .config import load_config
    from .engine import build_run
    from .profile import distillation_cost, format_report
    cfg = load_config(args.model)
    cfg.train.device = "cpu"
    run = build_run(cfg)
    cost = distillation_cost(run.distiller, run.spec.input_size)
    run.distiller.close()
    print(json.dumps(cost, indent=2, default=str) if args.json else
          f"training cost per image of {args.model} ({cost['unit']})\n{format_report(cost)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="vitkd", description="Knowledge distillation for Vision Transformers on any timm backbone.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    t = sub.add_parser("train", help="train a model (optionally distilled) from a YAML config")
    t.add_argument("config")
    t.add_argument("--out", help="run folder (default runs/<config name>)")
    add_overrides(t, "override config keys, e.g. --set train.epochs=5 train.lr=1e-3 (repeatable)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.add_argument("--overwrite", action="store_true", help="start over in a folder that holds a run")
    t.add_argument("--nproc", type=int, metavar="N",
                   help="train with N processes on this machine through torchrun (DDP; gloo on CPU, nccl on "
                        "CUDA, one GPU each); data.batch_size is per process, the global batch N x batch_size")
    t.set_defaults(fn=_cmd_train)

    e = sub.add_parser("eval", help="evaluate a student (run folder, its checkpoint, or a .safetensors weights "
                                    "file with --model) on val and test; no teacher is loaded")
    e.add_argument("checkpoint")
    e.add_argument("--model", help="timm/vitkd model name of a bare weights file")
    add_overrides(e, "config overrides for the data, e.g. --set data.name=digits (repeatable)")
    e.add_argument("--splits", nargs="+", default=["val", "test"], choices=["train", "val", "test"])
    e.add_argument("--device", choices=["auto", "cpu", "cuda"])
    e.add_argument("--json", action="store_true")
    e.set_defaults(fn=_cmd_eval)

    cc = sub.add_parser("convert-checkpoint", help="rewrite a checkpoint of an older vitkd (NumPy objects pickled) "
                                                   "so that the safe loader reads it; loading OLD runs any code it "
                                                   "holds: only for a file you trust")
    cc.add_argument("old")
    cc.add_argument("new")
    cc.add_argument("--trust", action="store_true", help="OLD is your own file: load it with the unsafe loader")
    cc.set_defaults(fn=_cmd_convert_checkpoint)

    pr = sub.add_parser("profile", help="params, MACs (attention counted) and img/s of a timm or vitkd model, "
                                        "or the training cost per image of a run config (CONFIG.yaml)")
    pr.add_argument("model", help="timm/vitkd model name, or a train config .yaml for its training cost")
    pr.add_argument("--img-size", type=int)
    pr.add_argument("--in-chans", type=int, help="input channels (e.g. 1 for Fashion-MNIST's grayscale)")
    pr.add_argument("--batch-size", type=int, default=32)
    pr.add_argument("--no-throughput", action="store_true")
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(fn=_cmd_profile)
    c = sub.add_parser("compare", help="run a comparison suite: teachers, tuned recipe, every method x seeds -> "
                                       "results/compare/<suite>/ (table, pareto.png, curves.png)")
    c.add_argument("suite", nargs="?", default="configs/compare/digits.yaml")
    c.add_argument("--out", help="results folder (default results/compare/<suite>; with --quick "
                                 "runs/quick/<suite>-quick, checked against results/compare/<suite>-quick)")
    c.add_argument("--quick", action="store_true", help="every family, one seed, the full suite's recipe; prints "
                                                        "each row beside the committed reference and its band")
    c.add_argument("--cache", help="run folders, reused when a run's config is unchanged "
                                   "(default runs/compare/<suite>)")
    c.add_argument("--jobs", type=int, help="runs in parallel (default: the suite's jobs; with --executor ray: "
                                            "no cap, the cluster queues runs by their resources)")
    c.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local: a pool of --jobs processes on this machine (default); ray: every run is a Ray "
                        "task on a cluster (pip install 'vitkd[ray]'), --cache on a file system all nodes share")
    c.add_argument("--address", metavar="HOST:PORT",
                   help="with --executor ray: the running cluster's head (default: start Ray on this machine)")
    c.add_argument("--cpus-per-job", type=int, metavar="N",
                   help="CPU cores (torch threads) each run asks for (default: local, the cores shared evenly "
                        "over --jobs; ray, 1); a run on CUDA also asks for one GPU")
    c.add_argument("--readme", help="also fill the results block of this README with the table and plot")
    c.add_argument("--plan-seeds", action="store_true",
                   help="train nothing: report from the cache and print the seeds each family of comparisons needs")
    c.add_argument("--tuning", metavar="DIR",
                   help="the tuning record to read (default results/compare/<suite>/tuning, from `vitkd tune`)")
    c.add_argument("--live-teachers", action="store_true",
                   help="run every teacher live in every row (default: rows whose terms read a teacher's logits "
                        "only read them from a store written once per teacher, seed and recipe)")
    c.set_defaults(fn=_cmd_compare)

    dm = sub.add_parser("demo", help="the main job: the Fashion-MNIST quick suite (one seed of one row per family, "
                        "teachers from the zoo), its data got first when needed; without the data and a way to get "
                        "them, the digits quick suite")
    dm.add_argument("--digits", action="store_true", help="run the digits quick suite (no data needed)")
    dm.add_argument("--suite", default=DEMO_SUITE, help=f"the suite (default {DEMO_SUITE})")
    dm.add_argument("--fallback", default=DEMO_FALLBACK,
                    help=f"the suite run when the data cannot be got (default {DEMO_FALLBACK})")
    dm.add_argument("--mirror", action="append", default=[], metavar="URL", help="as for `vitkd data get`")
    dm.add_argument("--no-install", action="store_true", help="never run apt-get")
    dm.add_argument("--out", help="as for `vitkd compare --quick`")
    dm.add_argument("--cache", help="as for `vitkd compare`")
    dm.add_argument("--jobs", type=int, help="as for `vitkd compare`")
    dm.set_defaults(fn=_cmd_demo)

    rp = sub.add_parser("report", help="fill a README's results block from committed suite results: the paired "
                        "main table, the studies, the claims and what the evidence says of each")
    rp.add_argument("spec", nargs="?", default="configs/compare/readme.yaml",
                    help="what the block shows (default configs/compare/readme.yaml)")
    rp.add_argument("--readme", default="README.md", help="the README to fill (default README.md)")
    rp.set_defaults(fn=_cmd_report)

    tu = sub.add_parser("tune", help="tune a suite's recipe for its no-KD student on validation (several knobs and "
                                     "seeds, the epochs, the main data size) -> results/compare/<suite>/tuning/")
    tu.add_argument("suite", nargs="?", default="configs/compare/digits.yaml")
    tu.add_argument("--out", help="record folder (default results/compare/<suite>/tuning)")
    tu.add_argument("--cache", help="run folders (default runs/compare/<suite>, shared with `vitkd compare`)")
    tu.add_argument("--jobs", type=int, help="runs in parallel (default: the suite's jobs)")
    tu.add_argument("--executor", choices=["local", "ray"], default="local", help="as for `vitkd compare`")
    tu.add_argument("--address", metavar="HOST:PORT", help="as for `vitkd compare`")
    tu.add_argument("--cpus-per-job", type=int, metavar="N", help="as for `vitkd compare`")
    tu.set_defaults(fn=_cmd_tune)

    from .zoo.commands import add_zoo_parser
    add_zoo_parser(sub, Parser)
    from .datasets.commands import add_data_parser
    add_data_parser(sub, Parser)
    for command in COMMANDS.values():   # the commands methods add (vitkd.methods registers them)
        command.add(sub, Parser)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from .engine.allocator import keep_freed_memory
    keep_freed_memory()   # freed training buffers are reused, not faulted in again every step
    try:
        return args.fn(args)
    except ConfigError as e:
        print(f"vitkd: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:   # a full disk or quota: one line; atomic writes leave no partial file, the last checkpoint stays
        if e.errno not in DISK_FULL:
            raise
        after = AFTER_DISK_FULL.get(args.command) or getattr(COMMANDS.get(args.command), "after_disk_full", None)
        print(f"vitkd: error: {e.filename or 'a file'}: {os.strerror(e.errno)} (free space and run again"
              f"{f'; {after}' if after else ''})", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:   # a non-finite loss: one line, exit 3, the last good checkpoint kept
        from .engine import NonFiniteLoss
        from .compare.runner import RunsFailed
        if isinstance(e, RunsFailed):   # a suite's run failed in its worker: one line, the finished runs stay
            print(f"vitkd: error: {str(e).splitlines()[0]} (the runs that finished stay in the cache and are "
                  f"reused when it runs again)", file=sys.stderr)
            return EXIT_RUNS_FAILED
        if not isinstance(e, NonFiniteLoss):
            raise
        print(f"vitkd: error: {e}", file=sys.stderr)
        return EXIT_NUMERICS
    except KeyboardInterrupt:
        print("vitkd: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
