"""The distiller: a student, named frozen teachers and a list of loss terms.

Each model runs once per step, tapped with the union of what the terms ask of it. The engine calls
``distiller(batch)`` and gets the weighted total and every term separately; it knows no method by
name. Plain training is a distiller with a single ``ce`` term and no teacher.

Connector parameters live inside the terms: they train with the student (``trainable_parameters``)
and are saved apart from it (``connector_state_dict``), never in the exported student weights.

A teacher source may be trainable (``TeacherSource.trainable``: e.g. a model trained jointly with the student):
its parameters train with the student's, its state is saved apart (``teacher_state_dict``), and terms may name it as
the model that learns from them (``student:`` of a term, :meth:`vitkd.losses.LossTerm.reads`). A term sees its
learner's output under ``"student"`` and every other output detached: a prediction used as a target gives its model
no gradient, so each model's gradient comes from its own terms only. A source that is not ``active`` at a step (a
warm-up) is not run, and the terms that read it are off.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from .config import ConfigError, DistillCfg, RunCfg, section
from .losses import STUDENT_AS_TARGET, Batch, LossTerm, build_term
from .teachers import LiveTeacher, TeacherSource, build_teacher_source
from .taps import TapOutput, TapRequest, Tapped, describe

__all__ = ["Distiller", "ProbabilityEnsemble", "build_distiller", "make_distiller", "register_builder", "BUILDERS",
           "term_defaults"]


# the metrics name of the ensemble of the student and the teachers trained with it
ENSEMBLE = "ensemble"


class Distiller(nn.Module):
    def __init__(self, student: nn.Module, teachers: Dict[str, nn.Module], terms: List[LossTerm],
                 img_size: Tuple[int, int], student_spec=None):
        """``teachers``: teacher sources by name (a plain ``nn.Module`` is wrapped as a live teacher)."""
        super().__init__()
        if not terms:
            raise ConfigError("distill.terms: no loss terms (add at least {type: ce})")
        if all(term.schedule.never_on for term in terms):
            raise ConfigError(f"distill.terms: every term has weight 0 ({', '.join(t.label for t in terms)}): "
                              f"the run would train nothing")
        self.student = student
        self.teachers = nn.ModuleDict({k: t if isinstance(t, TeacherSource) else LiveTeacher(t, student_spec)
                                       for k, t in teachers.items()})
        if ENSEMBLE in self.teachers and any(t.trainable for t in self.teachers.values()):
            raise ConfigError(f"distill.teachers.{ENSEMBLE}: the name of the trained models' ensemble in the metrics "
                              f"(name this teacher otherwise)")
        self.terms = nn.ModuleList(terms)
        self.img_size = tuple(img_size)
        self.student_spec = student_spec
        infos = {"student": describe(student, self.img_size)}
        infos.update({k: t.describe(self.img_size) for k, t in self.teachers.items()})
        requests: Dict[str, List[TapRequest]] = {k: [] for k in infos}
        self._readers: Dict[str, List[int]] = {k: [] for k in self.teachers}   # teacher -> indices of its terms
        for i, term in enumerate(terms):
            term.setup(_view(term, infos))
            for name, req in term.requests().items():
                who = term.reads(name)
                if who not in requests:
                    raise ConfigError(f"distill term '{term.label}': reads model '{who}', which is not configured")
                requests[who].append(req)
                if who in self._readers:
                    self._readers[who].append(i)
                    self.teachers[who].check_request(term.label, req)   # e.g. a store holds logits only
        unused = [k for k in self.teachers if not requests[k]]
        if unused:
            raise ConfigError(f"distill.teachers.{unused[0]}: no loss term reads this teacher")
        # each model is wrapped once, with the union of what the terms ask of it
        self.requests = {k: TapRequest.union(v) for k, v in requests.items()}
        self._student = Tapped(student, self.requests["student"])
        for k, t in self.teachers.items():
            t.set_request(self.requests[k])

    # ------------------------------------------------------------------ training interface
    def trainable_parameters(self):
        """Student, connector and trainable teachers' parameters (the other teachers are frozen)."""
        return [p for p in self.parameters() if p.requires_grad]

    def connector_state_dict(self) -> dict:
        return self.terms.state_dict()

    def trained_teachers(self) -> Dict[str, TeacherSource]:
        """The teacher sources that train with the student (``TeacherSource.trainable``), by name."""
        return {k: t for k, t in self.teachers.items() if t.trainable}

    def teacher_state_dict(self) -> dict:
        """The trainable teachers' states, by name (saved beside the connectors)."""
        return {k: t.state_dict() for k, t in self.trained_teachers().items()}

    def load_teacher_state_dict(self, state: Optional[dict]) -> None:
        state = state or {}
        for k, t in self.trained_teachers().items():
            if k not in state:
                raise ConfigError(f"distill.teachers.{k}: the checkpoint holds no state of this trainable teacher")
            t.load_state_dict(state[k])

    def bind(self, **engine) -> None:
        """Hand the engine's training state (e.g. ``ema``) to every teacher source (:meth:`TeacherSource.bind`)."""
        for t in self.teachers.values():
            t.bind(**engine)

    def evaluated_models(self) -> Dict[str, nn.Module]:
        """The models evaluated beside the student: each trainable teacher's, and the ensemble of the student and
        them (softmax average), by name."""
        models = {k: t.exported()[0] for k, t in self.trained_teachers().items()}
        if models:
            models[ENSEMBLE] = ProbabilityEnsemble([self.student, *models.values()])
        return models

    def no_weight_decay(self) -> set:
        """Full parameter names kept out of weight decay: the student's own ``no_weight_decay()``, each
        term's (e.g. ViTKD's mask token) and each trainable teacher's model's."""
        names = {f"student.{n}" for n in getattr(self.student, "no_weight_decay", lambda: set())()}
        for i, term in enumerate(self.terms):
            names |= {f"terms.{i}.{n}" for n in term.no_weight_decay()}
        for k, t in self.trained_teachers().items():
            model = t.exported()[0]
            prefix = next(n for n, m in t.named_modules() if m is model)
            names |= {f"teachers.{k}.{prefix}.{n}" for n in getattr(model, "no_weight_decay", lambda: set())()}
        return names

    def teacher_outputs(self, images: Tensor, batch=None, only=None) -> Dict[str, TapOutput]:
        """Outputs of the teachers (all, or those named in ``only``)."""
        return {name: t(images, batch) for name, t in self.teachers.items() if only is None or name in only}

    def forward(self, batch: Batch) -> Tuple[Tensor, Dict[str, Tensor]]:
        off = {i for k, readers in self._readers.items() if not self.teachers[k].active(batch.progress)
               for i in readers}   # terms reading a source in its warm-up
        weights = [0.0 if i in off else float(term.schedule(batch.progress)) for i, term in enumerate(self.terms)]
        active = {i for i, w in enumerate(weights) if w != 0.0}
        # a teacher that only zero-weighted terms read is not run
        needed = [k for k, readers in self._readers.items() if active & set(readers)]
        outs = self.teacher_outputs(batch.images, batch, only=needed)
        outs["student"] = self._student(batch.images)
        total = outs["student"].logits.new_zeros(()).float()
        parts: Dict[str, Tensor] = {}
        for i, (term, w) in enumerate(zip(self.terms, weights)):
            key = term.label
            n = 2
            while key in parts:
                key = f"{term.label}_{n}"
                n += 1
            if i in active:
                value = term(_view(term, outs, detach=True), batch)
                total = total + w * value
                parts[key] = value.detach()
            else:
                # not computed; its trainable parameters still join the graph (zero gradient), so a
                # DDP-wrapped distiller needs no find_unused_parameters
                for p in term.parameters():
                    if p.requires_grad:
                        total = total + 0.0 * p.sum()
                parts[key] = total.new_zeros(()).detach()
        for k, t in self.trained_teachers().items():   # not run at this step: its parameters still join the graph
            if k not in needed:
                total = total + sum(0.0 * p.sum() for p in t.parameters() if p.requires_grad)
        if not active:   # every term is off at this step: the step still has a (zero) gradient
            total = total + 0.0 * outs["student"].logits.float().sum()
        return total, parts

    def close(self):
        self._student.close()
        for t in self.teachers.values():
            t.close()


def _view(term: LossTerm, models: dict, detach: bool = False) -> dict:
    """What ``term`` sees of the models' infos or outputs: each under the term's own name for it
    (:meth:`LossTerm.reads`: its learner as ``"student"``); with ``detach``, every output but the learner's
    detached."""
    names = [k for k in models if k != "student"] + ["student"] + \
        ([STUDENT_AS_TARGET] if term.learner != "student" else [])
    seen = {k: models[term.reads(k)] for k in names if term.reads(k) in models}
    if detach:
        seen = {k: v if k == "student" else v.detach() for k, v in seen.items()}
    return seen


class ProbabilityEnsemble(nn.Module):
    """Models evaluated together: the log of their mean softmax (top-1 and cross-entropy read it like logits)."""

    def __init__(self, models: List[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(models)

    def forward(self, x: Tensor) -> Tensor:
        probs = torch.stack([m(x).float().softmax(-1) for m in self.members]).mean(0)
        return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()


# run kinds whose distiller is built their own way, by the run-config section that selects them (declared with
# vitkd.config.register_section): the method that owns one registers it here (vitkd.methods registers theirs)
BUILDERS: Dict[str, Callable[..., "Distiller"]] = {}


def register_builder(key: str, build: Callable[..., "Distiller"]) -> None:
    """Build the distiller of a run whose config sets the section ``key`` with ``build(cfg, student, num_classes, spec,
    planned)`` (which assembles it with :func:`make_distiller`)."""
    BUILDERS[key] = build


def build_distiller(cfg: RunCfg, student: nn.Module, num_classes: int, img_size: Tuple[int, int],
                    student_spec=None, planned: Optional[Dict[str, RunCfg]] = None) -> Distiller:
    """The one place a run's distiller is built: its teacher sources (:func:`vitkd.teachers.build_teacher_source`;
    ``planned``: teachers whose run is not trained yet, built untrained from the config that will train it), then
    its terms. A run kind registered in :data:`BUILDERS` builds its own from the same pieces."""
    for key, build in BUILDERS.items():
        if section(cfg, key) is not None:
            return build(cfg, student, num_classes, student_spec, planned or {})
    dcfg = cfg.distill or DistillCfg()
    teachers = {name: build_teacher_source(name, t, num_classes, student_spec, run=cfg, planned=planned)
                for name, t in dcfg.teachers.items()}
    return make_distiller(cfg, student, teachers, student_spec, img_size)


def make_distiller(cfg: RunCfg, student: nn.Module, teachers: Dict[str, nn.Module], student_spec,
                   img_size: Optional[Tuple[int, int]] = None) -> Distiller:
    """The run's loss terms (``distill.terms``, default CE alone; run-level defaults from :func:`term_defaults`)
    built against ``teachers``, and the distiller of ``student``, ``teachers`` and those terms."""
    dcfg = cfg.distill or DistillCfg()
    defaults = term_defaults(cfg)
    terms = [build_term(spec, i, list(teachers), defaults) for i, spec in enumerate(dcfg.terms or [{"type": "ce"}])]
    return Distiller(student, teachers, terms, img_size or student_spec.img_size, student_spec)


def term_defaults(cfg: RunCfg) -> Dict[str, object]:
    """The one place where run-level settings become defaults of term arguments of the same name: a term
    whose signature has ``label_smoothing`` and whose config leaves it out gets ``train.label_smoothing``."""
    return {"label_smoothing": cfg.train.label_smoothing}
