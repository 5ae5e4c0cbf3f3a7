"""The m2mKD pipeline as stages of ordinary ``vitkd train`` runs.

A pipeline file has a top-level ``m2mkd:`` mapping (:class:`PipelineSpec`); ``vitkd train FILE --out DIR``
runs it like a chain, each stage a run folder ``DIR/<stage>`` (finished stages reused, unfinished resumed):

1. ``teacher`` (a train config, or an existing run folder) and ``meta`` (the meta model: the teacher's family
   and width, one block per module, trained from scratch with CE);
2. the compatibility check (:func:`vitkd.methods.m2m.stage.compatibility`, written to ``DIR/check.json``): the meta model
   with module i swapped for the teacher's module i, for every i, within ``tolerance`` points of the teacher
   on val;
3. unless it passed, incubation: ``incubate<i>`` (the teacher's module i inside the meta model, CE, only
   that module trains), then ``incubated`` (the modules assembled and fine-tuned with CE);
4. ``module<i>``: the student's module i distilled with ``m2mkd`` inside the frozen meta model from the
   (incubated) teacher's module i; the M jobs are independent;
5. ``student``: the student modules assembled and fine-tuned end to end with CE.

:func:`stage_configs` is the one expansion of a pipeline into stages; the stage runner here and the suite
planner (:mod:`vitkd.methods.m2m.suite`) both use it.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ...config import ConfigError, apply_mapping, build_dataclass, parse_config, read_config, read_yaml

__all__ = ["PipelineSpec", "PIPELINE_KEY", "load_pipeline", "stage_configs", "run_pipeline", "train_pipeline", "CHECK_FILE", "INCUBATION", "MODULE", "FINETUNE"]

CHECK_FILE = "check.json"
COST_FILE = "cost.json"      # training MACs of every stage


@dataclass
class StageSource:
    config: Optional[str] = None                       # a vitkd train config (relative to the pipeline file)
    set: Dict[str, Any] = field(default_factory=dict)  # dotted overrides
    checkpoint: Optional[str] = None                   # teacher only: an existing run folder instead


@dataclass
class StepSpec:
    epochs: int = 10
    set: Dict[str, Any] = field(default_factory=dict)


@dataclass
class ModuleStepSpec:
    epochs: int = 10
    alpha: float = 0.5
    T: float = 1.0
    mode: str = "soft"
    set: Dict[str, Any] = field(default_factory=dict)


@dataclass
class IncubationSpec:
    epochs: int = 10                                   # each module inside the meta model
    finetune_epochs: int = 10                          # the assembled teacher
    set: Dict[str, Any] = field(default_factory=dict)


@dataclass
class PipelineSpec:
    teacher: StageSource
    meta: StageSource
    student: StageSource
    teacher_depths: List[int]
    student_depths: List[int]
    module: ModuleStepSpec = field(default_factory=ModuleStepSpec)
    incubation: IncubationSpec = field(default_factory=IncubationSpec)
    finetune: StepSpec = field(default_factory=StepSpec)
    tolerance: float = 5.0                             # points of val top-1 (Deep-Incubation's check)

    def __post_init__(self):
        if len(self.teacher_depths) != len(self.student_depths):
            raise ConfigError(f"m2mkd.student_depths: {len(self.student_depths)} modules, teacher_depths has "
                              f"{len(self.teacher_depths)}")
        for k in ("teacher_depths", "student_depths"):
            if not getattr(self, k) or any(d <= 0 for d in getattr(self, k)):
                raise ConfigError(f"m2mkd.{k}: expected positive block counts, got {getattr(self, k)}")
        if self.module.mode not in ("soft", "hard"):
            raise ConfigError(f"m2mkd.module.mode: '{self.module.mode}' is not one of soft, hard")
        for k, v in (("module.epochs", self.module.epochs), ("incubation.epochs", self.incubation.epochs),
                     ("incubation.finetune_epochs", self.incubation.finetune_epochs),
                     ("finetune.epochs", self.finetune.epochs)):
            if v <= 0:
                raise ConfigError(f"m2mkd.{k}: must be > 0, got {v}")

    @property
    def num_modules(self) -> int:
        return len(self.student_depths)


@dataclass
class PipelineFile:
    m2mkd: PipelineSpec
    name: str = "m2mkd"


# the top-level key of a pipeline file (its run kind is registered under it)
PIPELINE_KEY = "m2mkd"
# the phases of the stages after the teacher and the meta model (stage_configs)
INCUBATION, MODULE, FINETUNE = "incubation", "module", "finetune"


def load_pipeline(path) -> Tuple[PipelineSpec, Path]:
    path = Path(path)
    raw = read_yaml(path)
    spec = build_dataclass(PipelineFile, raw, "", path.parent).m2mkd
    for k in ("meta", "student"):
        if getattr(spec, k).config is None:
            raise ConfigError(f"m2mkd.{k}.config: missing (a vitkd train config)")
    if (spec.teacher.config is None) == (spec.teacher.checkpoint is None):
        raise ConfigError("m2mkd.teacher: give either config (trained as a stage) or checkpoint (a run folder)")
    return spec, path.parent


def source_raw(src: StageSource, base: Path, *sets: Dict[str, Any], overrides: Sequence[str] = ()) -> dict:
    """A stage source's config (relative to the pipeline file's folder ``base``), its ``set``, then ``sets`` and
    ``overrides``."""
    return read_config(src.config, base, src.set, *sets, overrides=overrides)


def _with(raw: dict, epochs: int, sets: Dict[str, Any], distill: dict, m2m: dict) -> dict:
    raw = apply_mapping(copy.deepcopy(raw), {"train.epochs": epochs, **sets})
    raw["distill"] = distill
    raw["m2m"] = m2m
    return raw


def stage_configs(spec: PipelineSpec, teacher_raw: dict, student_raw: dict, incubate: bool,
                  ref=lambda stage: f"@{stage}") -> List[Tuple[str, dict, List[str], str]]:
    """The stages after ``teacher`` and ``meta``: ``(name, raw config, stages it reads, phase)``, in an order that
    respects the reads; the phase is ``incubation`` (shared by a suite row's seeds), ``module`` (the module jobs,
    which can run in parallel) or ``finetune`` (the assembled student). ``ref(stage)``: how a config points at an earlier stage's run folder (``@stage`` for
    chains; the suite gives folder paths)."""
    m = spec.num_modules
    out: List[Tuple[str, dict, List[str], str]] = []
    teacher = "teacher"
    if incubate:
        for i in range(m):
            out.append((f"incubate{i}", _with(
                teacher_raw, spec.incubation.epochs, spec.incubation.set,
                {"teachers": {"meta": {"checkpoint": ref("meta")}, "init": {"checkpoint": ref("teacher")}},
                 "terms": [{"type": "ce"}]},
                {"depths": list(spec.teacher_depths), "module": i, "meta": "meta", "init": "init"}),
                ["meta", "teacher"], INCUBATION))
        out.append(("incubated", _with(
            teacher_raw, spec.incubation.finetune_epochs, spec.incubation.set,
            {"teachers": {f"part{i}": {"checkpoint": ref(f"incubate{i}")} for i in range(m)},
             "terms": [{"type": "ce"}]},
            {"depths": list(spec.teacher_depths), "parts": [f"part{i}" for i in range(m)]}),
            [f"incubate{i}" for i in range(m)], INCUBATION))
        teacher = "incubated"
    mk = spec.module
    for i in range(m):
        out.append((f"module{i}", _with(
            student_raw, mk.epochs, mk.set,
            {"teachers": {"meta": {"checkpoint": ref("meta")}, "teacher": {"checkpoint": ref(teacher)}},
             "terms": [{"type": "m2mkd", "alpha": mk.alpha, "T": mk.T, "mode": mk.mode}]},
            {"depths": list(spec.student_depths), "teacher_depths": list(spec.teacher_depths), "module": i,
             "meta": "meta"}),
            ["meta", teacher], MODULE))
    out.append(("student", _with(
        student_raw, spec.finetune.epochs, spec.finetune.set,
        {"teachers": {f"part{i}": {"checkpoint": ref(f"module{i}")} for i in range(m)}, "terms": [{"type": "ce"}]},
        {"depths": list(spec.student_depths), "parts": [f"part{i}" for i in range(m)]}),
        [f"module{i}" for i in range(m)], FINETUNE))
    return out


def check_of(meta_run, teacher_run, spec: PipelineSpec, device: str = "cpu") -> dict:
    """The compatibility check of a trained meta model and teacher (two finished run folders), on val."""
    from ... import models as model_lib
    from ...data import build_datasets
    from ...rundir import RunDir
    from .stage import compatibility
    mname, margs, mcls = RunDir(meta_run).model_spec()
    tname, targs, tcls = RunDir(teacher_run).model_spec()
    meta = model_lib.freeze(model_lib.create(mname, mcls, margs, str(meta_run), where="m2mkd.meta"))
    teacher = model_lib.freeze(model_lib.create(tname, tcls, targs, str(teacher_run), where="m2mkd.teacher"))
    cfg = parse_config(RunDir(teacher_run).read_config(), paths=False)
    datasets, _ = build_datasets(cfg.data, model_lib.data_spec(teacher, cfg.data.img_size), cfg.seed)
    res = compatibility(meta, teacher, spec.teacher_depths, datasets["val"], cfg.data.eval_batch_size, device,
                        spec.tolerance)
    return {**res, "meta_run": str(meta_run), "teacher_run": str(teacher_run)}


def run_pipeline(path, out, overrides: List[str] = (), overwrite: bool = False, log=print) -> dict:
    """Run a pipeline file's stages into ``out`` (see the module docstring); returns the check and each
    stage's final metrics."""
    from ...engine.stages import run_stages
    from ...io import atomic_write_json
    spec, base = load_pipeline(path)
    out = Path(out)
    teacher_raw = source_raw(spec.teacher, base) if spec.teacher.config else None
    student_raw = source_raw(spec.student, base, overrides=overrides)
    meta_raw = source_raw(spec.meta, base)
    first: List[Tuple[str, dict]] = []
    teacher_folder = Path(spec.teacher.checkpoint) if spec.teacher.checkpoint else out / "teacher"
    if teacher_raw is not None:
        first.append(("teacher", teacher_raw))
    else:
        from ...rundir import RunDir
        teacher_raw = RunDir(teacher_folder).read_config()
        for k in ("distill", "m2m"):
            teacher_raw.pop(k, None)
    first.append(("meta", meta_raw))
    refs = {"teacher": str(teacher_folder)}

    def stages(incubate: bool):
        ref = (lambda s: refs.get(s, f"@{s}"))
        return first + [(n, r) for n, r, _, _ in stage_configs(spec, teacher_raw, student_raw, incubate, ref)]

    names = [n for n, _ in first]
    run_stages(stages(True), out, base, overwrite, log, only=set(names))   # every stage built before any trains
    check = check_of(out / "meta", teacher_folder, spec)
    atomic_write_json(out / CHECK_FILE, check)
    log(f"compatibility check: teacher {check['teacher_top1']:.2f}, meta {check['meta_top1']:.2f}, swapped "
        f"{', '.join(f'{s:.2f}' for s in check['swapped_top1'])} -> "
        f"{'passed (no incubation)' if check['passed'] else 'failed (incubation runs)'}")
    later = stages(not check["passed"])
    run_stages(later, out, base, overwrite, log, only={n for n, _ in later} - set(names))
    from ...rundir import RunDir
    finals = {n: RunDir(out / n).final() for n, _ in later}
    atomic_write_json(out / COST_FILE, pipeline_cost(out))
    return {"check": check, "stages": finals}


def training_macs(run_folder) -> dict:
    """Training MACs of one finished stage: per-image training cost of its step
    (:func:`vitkd.profile.distillation_cost`: 3 x the student path's forward + the teachers' forwards +
    overhead; for a module job the student path is the whole meta context around the module, so the frozen
    meta blocks are charged as if trained: an upper bound) x train images x epochs."""
    from ...engine import build_run
    from ...profile import distillation_cost
    from ...rundir import RunDir
    run_dir = RunDir(run_folder)
    cfg = parse_config(run_dir.read_config())
    cfg.train.device = "cpu"
    run = build_run(cfg)
    try:
        per_image = distillation_cost(run.distiller, run.spec.input_size)["total_macs_per_image"]
    finally:
        run.distiller.close()
    images = int(run_dir.read_meta().get("train_images") or len(run.datasets["train"]))
    return {"macs_per_image": per_image, "train_images": images, "epochs": cfg.train.epochs,
            "total_macs": per_image * images * cfg.train.epochs}


def pipeline_cost(out, scratch: Optional[str] = None) -> dict:
    """Total training MACs of a finished pipeline in ``out`` (meta, incubation, module jobs, fine-tuning; the
    teacher's own training listed apart) and of a scratch student run folder."""
    from ...rundir import RunDir
    out = Path(out)
    stages = [p.name for p in sorted(out.iterdir()) if p.is_dir() and RunDir(p).is_finished()]
    per = {s: training_macs(out / s) for s in stages}
    res = {"stages": per, "total_macs": sum(v["total_macs"] for k, v in per.items() if k != "teacher"),
           "teacher_macs": per.get("teacher", {}).get("total_macs")}
    if scratch is not None:
        res["scratch"] = training_macs(scratch)
    return res


def train_pipeline(path, out, overrides: List[str] = (), overwrite: bool = False, log=print) -> dict:
    """The pipeline's run kind: its stages, then whether the check passed and the student's val/test top-1."""
    res = run_pipeline(path, out, overrides, overwrite=overwrite, log=log)
    return {"check_passed": res["check"]["passed"],
            **{k: res["stages"]["student"].get(k) for k in ("val_top1", "test_top1")}}
