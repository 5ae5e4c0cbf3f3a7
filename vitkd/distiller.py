"""The distiller: a student, named frozen teachers and a list of loss terms.

Each model runs once per step, tapped with the union of what the terms ask of it. The engine calls
``distiller(batch)`` and gets the weighted total and every term separately; it knows no method by
name. Plain training is a distiller with a single ``ce`` term and no teacher.

Connector parameters live inside the terms: they train with the student (``trainable_parameters``)
and are saved apart from it (``connector_state_dict``), never in the exported student weights.
"""
from __future__ import annotations

import contextlib
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import models as model_lib
from .config import ConfigError, DistillCfg, RunCfg, TeacherCfg
from .losses import Batch, LossTerm, ModelInfo, build_term
from .taps import TapOutput, TapRequest, Tapped, is_vit_like, model_name, num_blocks, prefix_token_names, \
    stage_reductions

__all__ = ["Distiller", "build_distiller", "build_teacher", "model_info"]


def model_info(model: nn.Module, name: str, img_size: Tuple[int, int]) -> ModelInfo:
    vit = is_vit_like(model)
    grid = None
    heads = ["cls"]
    if vit:
        pe = model.patch_embed
        grid = tuple(pe.dynamic_feat_size(img_size)) if hasattr(pe, "dynamic_feat_size") else tuple(pe.grid_size)
        if hasattr(model, "forward_heads"):
            heads = list(getattr(model, "head_names", None) or [])
            if not heads:
                with torch.no_grad():
                    was = model.training
                    model.eval()
                    probe = torch.zeros(1, 3, *img_size, device=next(model.parameters()).device)
                    heads = list(model.forward_heads(model.forward_features(probe)))
                    model.train(was)
        elif getattr(model, "head_dist", None) is not None:
            heads = ["cls", "dist"]
    blk0 = model.blocks[0] if vit else None
    attn = getattr(blk0, "attn", None)
    return ModelInfo(name=model_name(model), vit=vit, depth=num_blocks(model),
                     embed_dim=getattr(model, "embed_dim", None) if vit else None,
                     num_heads=getattr(attn, "num_heads", None), num_classes=getattr(model, "num_classes", 0),
                     grid=grid, prefix_names=prefix_token_names(model) if vit else [],
                     stages=stage_reductions(model), head_names=heads, model=model)


def build_teacher(name: str, cfg: TeacherCfg, num_classes: int) -> nn.Module:
    where = f"distill.teachers.{name}"
    model, args, ncls = cfg.model, dict(cfg.args), num_classes
    if cfg.checkpoint is not None:
        spec = model_lib.run_model_spec(cfg.checkpoint)
        if spec is not None:
            model = model or spec[0]
            args = {**spec[1], **args}
            ncls = spec[2] or ncls
    if model is None:
        raise ConfigError(f"{where}.model: missing (and the checkpoint is not a vitkd run folder to read it from)")
    if cfg.checkpoint is None:
        raise ConfigError(f"{where}.checkpoint: a teacher needs trained weights (run folder or weights file)")
    return model_lib.freeze(model_lib.create(model, ncls, args, cfg.checkpoint, where=where))


class Distiller(nn.Module):
    def __init__(self, student: nn.Module, teachers: Dict[str, nn.Module], terms: List[LossTerm],
                 img_size: Tuple[int, int], student_spec=None, teacher_specs=None, teacher_bf16=None):
        super().__init__()
        if not terms:
            raise ConfigError("distill.terms: no loss terms (add at least {type: ce})")
        self.student = student
        self.teachers = nn.ModuleDict(teachers)
        self.terms = nn.ModuleList(terms)
        self.img_size = tuple(img_size)
        self.student_spec = student_spec
        self.teacher_specs = teacher_specs or {}
        self.teacher_bf16 = teacher_bf16 or {}
        for t in self.teachers.values():
            model_lib.freeze(t)
        infos = {"student": model_info(student, "student", self.img_size)}
        infos.update({k: model_info(t, k, self.img_size) for k, t in self.teachers.items()})
        requests: Dict[str, List[TapRequest]] = {k: [] for k in infos}
        for term in terms:
            term.setup(infos)
            for who, req in term.requests().items():
                if who not in requests:
                    raise ConfigError(f"distill term '{term.label}': reads model '{who}', which is not configured")
                requests[who].append(req)
        unused = [k for k in self.teachers if not requests[k]]
        if unused:
            raise ConfigError(f"distill.teachers.{unused[0]}: no loss term reads this teacher")
        # each model is wrapped once, with the union of what the terms ask of it
        self.requests = {k: TapRequest.union(v) for k, v in requests.items()}
        self._tapped = {"student": Tapped(student, self.requests["student"])}
        self._tapped.update({k: Tapped(t, self.requests[k]) for k, t in self.teachers.items()})

    # ------------------------------------------------------------------ training interface
    def train(self, mode: bool = True):
        super().train(mode)
        for t in self.teachers.values():
            t.eval()   # teachers stay in eval mode (no dropout, frozen BN statistics)
        return self

    def trainable_parameters(self):
        """Student and connector parameters (teachers are frozen)."""
        return [p for p in self.parameters() if p.requires_grad]

    def connector_state_dict(self) -> dict:
        return self.terms.state_dict()

    def _teacher_input(self, name: str, x: Tensor) -> Tensor:
        """Honour the teacher's own input normalisation and, for fixed-size ViTs, its input size."""
        s, t = self.student_spec, self.teacher_specs.get(name)
        if s is not None and t is not None and (s.mean != t.mean or s.std != t.std):
            sm, ss = x.new_tensor(s.mean).view(1, -1, 1, 1), x.new_tensor(s.std).view(1, -1, 1, 1)
            tm, ts = x.new_tensor(t.mean).view(1, -1, 1, 1), x.new_tensor(t.std).view(1, -1, 1, 1)
            x = (x * ss + sm - tm) / ts
        teacher = self.teachers[name]
        fixed = getattr(getattr(teacher, "patch_embed", None), "img_size", None)
        strict = getattr(getattr(teacher, "patch_embed", None), "strict_img_size", False)
        if fixed is not None and strict and tuple(x.shape[-2:]) != tuple(fixed):
            x = F.interpolate(x, size=tuple(fixed), mode="bicubic", align_corners=False)
        return x

    def teacher_outputs(self, images: Tensor) -> Dict[str, TapOutput]:
        outs = {}
        with torch.no_grad():
            for name in self.teachers:
                ctx = (torch.autocast(images.device.type, dtype=torch.bfloat16) if self.teacher_bf16.get(name)
                       else contextlib.nullcontext())
                with ctx:
                    outs[name] = self._tapped[name](self._teacher_input(name, images))
        return outs

    def forward(self, batch: Batch) -> Tuple[Tensor, Dict[str, Tensor]]:
        outs = self.teacher_outputs(batch.images)
        outs["student"] = self._tapped["student"](batch.images)
        total = 0.0
        parts: Dict[str, Tensor] = {}
        for term in self.terms:
            w = term.schedule(batch.progress)
            value = term(outs, batch)
            key = term.label
            n = 2
            while key in parts:
                key = f"{term.label}_{n}"
                n += 1
            parts[key] = value.detach()
            total = total + w * value
        return total, parts

    def close(self):
        for t in self._tapped.values():
            t.close()


def build_distiller(cfg: RunCfg, student: nn.Module, num_classes: int, img_size: Tuple[int, int],
                    student_spec=None) -> Distiller:
    dcfg = cfg.distill or DistillCfg()
    teachers = {name: build_teacher(name, t, num_classes) for name, t in dcfg.teachers.items()}
    term_specs = dcfg.terms or [{"type": "ce"}]
    terms = [build_term(spec, i, list(teachers)) for i, spec in enumerate(term_specs)]
    for term in terms:
        if getattr(term, "type_name", None) == "ce" and term.label_smoothing is None:
            term.label_smoothing = cfg.train.label_smoothing
    teacher_specs = {k: model_lib.data_spec(t) for k, t in teachers.items()}
    bf16 = {k: t.bf16 for k, t in dcfg.teachers.items()}
    return Distiller(student, teachers, terms, img_size, student_spec, teacher_specs, bf16)
