"""Behaviour check: the per-step losses of a short run of every ``configs/digits/*.yaml``.

Each config (teachers and the teacher-assistant chain included) trains for 2 epochs on 64 training
images, batch 16, one thread; every loss term of every step is recorded through a global module
forward hook on the distiller (public torch API, nothing patched). ``record`` writes the reference
JSON beside this file (with the torch/timm/numpy versions it was made with); ``check`` re-runs and
compares each loss relative to max(1, |recorded|). Under the recorded versions the tolerance is derived
from a measurement: ``tools/isa_spread.py`` re-runs every config under three CPU instruction sets and writes
the largest relative difference it saw to ``isa_spread.json`` beside this file; the check allows
``ISA_SAFETY`` times that, so it holds on any x86-64 CPU and still fails on a real change (a test shows a
loss weight changed by 1% fails it). Under other versions (the oldest-versions CI job) kernels round
differently, so the check there is 1e-3.

    python tests/behaviour/step_losses.py record   # only when a change is deliberate: say why in the commit
    python tests/behaviour/step_losses.py check
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs" / "digits"
REFERENCE = Path(__file__).with_name("step_losses.json")
SETTINGS = {"train.epochs": 2, "data.train_subset": 64, "data.batch_size": 16, "train.threads": 1,
            "train.progress": False, "train.device": "cpu"}
# teacher folders the digits configs name, and the config that trains each
TEACHERS = {"runs/digits_cnn_teacher": "cnn_teacher.yaml", "runs/digits_vit_teacher": "vit_teacher.yaml",
            "runs/digits_inv_teacher": "inv_teacher.yaml"}
TOLERANCE = 1e-6                                   # the floor of the tolerance under the recorded versions
ISA_SPREAD = Path(__file__).with_name("isa_spread.json")
ISA_SAFETY = 4
FLOOR = 1.0   # differences are relative to max(|recorded|, FLOOR)
CROSS_VERSION_TOLERANCE = 1e-3


def versions() -> dict:
    import numpy
    import timm
    return {"torch": torch.__version__.split("+")[0], "timm": timm.__version__, "numpy": numpy.__version__}


def isa_tolerance() -> float:
    """Same versions, any instruction set: ``ISA_SAFETY`` x the largest difference measured across three."""
    measured = json.loads(ISA_SPREAD.read_text())["overall_max_rel_diff"]
    return max(TOLERANCE, ISA_SAFETY * measured)


def tolerance(recorded_versions: dict) -> float:
    return isa_tolerance() if recorded_versions == versions() else CROSS_VERSION_TOLERANCE


def _overrides(extra=()):
    return [f"{k}={json.dumps(v)}" for k, v in SETTINGS.items()] + list(extra)


def _recording():
    from vitkd.distiller import Distiller
    steps = []

    def hook(module, _args, out):
        if isinstance(module, Distiller) and module.training:
            total, parts = out
            steps.append({"total": float(total.detach()), **{k: float(v) for k, v in parts.items()}})
    return steps, torch.nn.modules.module.register_module_forward_hook(hook)


def run_all(work: Path) -> dict:
    order = sorted(TEACHERS.values()) + sorted(p.name for p in CONFIGS.glob("*.yaml") if p.name not in TEACHERS.values()
                                               and not _is_stage_file(p))
    return {name: run_one(name, work) for name in order}


def run_one(name: str, work: Path, extra=()) -> list:
    """The per-step losses of one digits config (its teachers must already be in ``work``: :func:`run_all`
    trains them first); ``extra``: more overrides, e.g. a changed loss weight."""
    from vitkd.engine.kinds import run_kind_of
    from vitkd.config import load_config
    from vitkd.engine import train
    teacher_dirs = {ref: work / Path(ref).name for ref in TEACHERS}
    path = CONFIGS / name
    steps, handle = _recording()
    try:
        kind = run_kind_of(path)
        if kind is not None:   # a file of stages (a chain)
            kind.train(path, work / path.stem, _overrides(extra), log=lambda m: None)
        else:
            refs = [f"distill.teachers.{t}.checkpoint={teacher_dirs[c]}" for t, c in _teacher_refs(path).items()]
            cfg = load_config(path, _overrides([*refs, *extra]))
            ref = next((r for r, c in TEACHERS.items() if c == name), None)
            out = teacher_dirs[ref] if ref else work / (path.stem + ("-changed" if extra else ""))
            train(cfg, out, log=lambda m: None)
    finally:
        handle.remove()
    return steps


def _is_stage_file(path: Path) -> bool:
    """Synthesis configs and m2mKD pipelines are not train configs (tests/test_synth.py, tests/test_m2m.py)."""
    text = path.read_text()
    return "\nsynth:" in text or "\nm2mkd:" in text or text.startswith(("synth:", "m2mkd:"))


def _teacher_refs(path: Path) -> dict:
    import yaml
    raw = yaml.safe_load(path.read_text()) or {}
    out = {}
    for t, spec in ((raw.get("distill") or {}).get("teachers") or {}).items():
        ck = (spec or {}).get("checkpoint")
        if ck in TEACHERS:
            out[t] = ck
    return out


def difference(recorded: float, now: float) -> float:
    """A loss's difference, relative to its recorded value (values below ``FLOOR`` count as ``FLOOR``)."""
    return abs(now - recorded) / max(abs(recorded), FLOOR)


def relative_differences(ref_steps: list, got_steps: list) -> float:
    """The largest :func:`difference` over every step and term of one config (inf when the steps differ)."""
    if len(ref_steps) != len(got_steps):
        return float("inf")
    worst = 0.0
    for a, b in zip(ref_steps, got_steps):
        for k, v in a.items():
            worst = max(worst, difference(v, b[k]) if k in b else float("inf"))
    return worst


def compare(reference: dict, now: dict, tol: float = TOLERANCE) -> list:
    problems = []
    for name, ref_steps in reference.items():
        got = now.get(name)
        if got is None or len(got) != len(ref_steps):
            problems.append(f"{name}: {len(ref_steps)} steps recorded, {0 if got is None else len(got)} now")
            continue
        for i, (a, b) in enumerate(zip(ref_steps, got)):
            for k, v in a.items():
                if k not in b or difference(v, b[k]) > tol:
                    problems.append(f"{name} step {i} {k}: {v!r} recorded, {b.get(k)!r} now")
    problems += [f"{n}: not in the reference" for n in now if n not in reference]
    return problems


def main(argv) -> int:
    mode = argv[1] if len(argv) > 1 else "check"
    with tempfile.TemporaryDirectory() as tmp:
        now = run_all(Path(tmp))
    if mode == "dump":   # the losses of this machine and environment, for tools/isa_spread.py
        Path(argv[2]).write_text(json.dumps(now, indent=1) + "\n")
        return 0
    if mode == "record":
        REFERENCE.write_text(json.dumps({"versions": versions(), "steps": now}, indent=1, sort_keys=True) + "\n")
        print(f"recorded {sum(len(v) for v in now.values())} steps of {len(now)} configs -> {REFERENCE}")
        return 0
    ref = json.loads(REFERENCE.read_text())
    problems = compare(ref["steps"], now, tolerance(ref["versions"]))
    for p in problems[:20]:
        print(p)
    print("per-step losses match" if not problems else f"{len(problems)} mismatches")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
