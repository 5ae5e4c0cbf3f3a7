"""Module-level distillation (m2mKD, after kamanphoebe/m2mKD on Deep-Incubation): ViTs split into modules.

* :class:`ViTModules` runs any timm ViT as ``M`` modules of consecutive blocks (``depths``, e.g. [2, 2, 2])
  through the model's own attributes (``patch_embed``, ``_pos_embed``, ``patch_drop``, ``norm_pre``,
  ``blocks``, ``norm``, ``forward_head``), with no edit to the model: ``forward(x, start, end)`` runs
  modules [start, end). Module 0 owns the patch embedding and the prefix/position embeddings, the last
  module the final norm and the head.
* :class:`ModulePath` is one module i of a model placed inside a frozen *meta* model (same family and
  width as the teacher, one block per module): meta modules [0, i), then module i (behind LayerNorm +
  Linear stitches when its width differs from the meta's), then the frozen meta tail [i+1, M) and head;
  for the last module the module's own norm and head. The path is an ordinary model (``forward``,
  ``forward_features``, ``forward_head``), so a run trains it like any student: only module i and its
  stitches have ``requires_grad``, the gradient flows through the frozen tail.
* :func:`assemble` copies each finished module run's module i into one model (the stitches are dropped:
  a timm ViT has one width, so its modules meet without them).

A run config's ``m2m`` section (:class:`.config.M2MCfg`) makes ``vitkd train`` build one of these
stages (:func:`build_m2m_distiller`, registered as the distiller builder of the ``m2m`` section): a module
job (the student's module i, distilled with the ``m2mkd`` term from the teacher's module i in the same meta
context), an incubation job (the teacher's module i trained with CE inside the meta model) or an assembly
(+ fine-tuning). Every model a stage reads is a
``distill.teachers`` entry (a run folder), so chains, the suite's dependencies and dry builds see it.
The pipeline that strings the stages together is :mod:`vitkd.methods.m2m.pipeline`.
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

from .config import SECTION, m2m_of
from ...config import ConfigError, DistillCfg
from ...distiller import make_distiller, register_builder
from ...evaluate import evaluate
from ...models import resolve_weights
from ...teachers import LiveTeacher, load_teacher_model

__all__ = ["ViTModules", "Stitch", "ModulePath", "module_state", "assemble", "compatibility",
           "build_m2m_distiller", "EMBED_ATTRS"]

# the model attributes the embedding step reads (module 0 owns their parameters; everything outside the blocks
# and these belongs to the last module: final norm, pooling, head)
EMBED_ATTRS = ("patch_embed", "cls_token", "dist_token", "reg_token", "pos_embed", "norm_pre", "patch_drop",
               "pos_drop")


def check_depths(model: nn.Module, depths: Sequence[int], key: str) -> List[int]:
    """``depths`` as a list of positive ints summing to the model's number of blocks (ConfigError naming ``key``)."""
    blocks = getattr(model, "blocks", None)
    if blocks is None or not hasattr(model, "patch_embed") or not hasattr(model, "_pos_embed"):
        raise ConfigError(f"{key}: {type(model).__name__} is not a timm ViT (needs patch_embed, _pos_embed, "
                          f"blocks, norm, forward_head)")
    depths = [int(d) for d in depths]
    if not depths or any(d <= 0 for d in depths) or sum(depths) != len(blocks):
        raise ConfigError(f"{key}: {depths} must be positive block counts summing to the model's depth "
                          f"{len(blocks)}")
    return depths


class ViTModules(nn.Module):
    """A timm ViT as modules of consecutive blocks; ``forward(x, start, end)`` runs modules [start, end)."""

    def __init__(self, model: nn.Module, depths: Sequence[int], key: str = "m2m.depths"):
        super().__init__()
        self.depths = check_depths(model, depths, key)
        self.model = model
        self.bounds = [0] + list(itertools.accumulate(self.depths))

    @property
    def num_modules(self) -> int:
        return len(self.depths)

    @property
    def width(self) -> int:
        return int(self.model.embed_dim)

    def embed(self, x: Tensor) -> Tensor:
        m = self.model
        return m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))

    def features(self, x: Tensor, start: int = 0, end: Optional[int] = None) -> Tensor:
        """Modules [start, end) without the head: the image in when ``start`` is 0, the final norm applied
        when ``end`` is the last module."""
        end = self.num_modules if end is None else end
        if not 0 <= start < end <= self.num_modules:
            raise ValueError(f"modules [{start}, {end}) out of range 0..{self.num_modules}")
        if start == 0:
            x = self.embed(x)
        for blk in self.model.blocks[self.bounds[start]:self.bounds[end]]:
            x = blk(x)
        if end == self.num_modules:
            x = self.model.norm(x)
        return x

    def head(self, x: Tensor) -> Tensor:
        return self.model.forward_head(x)

    def forward(self, x: Tensor, start: int = 0, end: Optional[int] = None) -> Tensor:
        end = self.num_modules if end is None else end
        x = self.features(x, start, end)
        return self.head(x) if end == self.num_modules else x

    def module_names(self, i: int) -> List[str]:
        """Names (in ``model.state_dict()``) of the parameters and buffers module ``i`` owns."""
        last = self.num_modules - 1
        out = []
        for name in self.model.state_dict():
            top = name.split(".")[0]
            if top == "blocks":
                b = int(name.split(".")[1])
                if self.bounds[i] <= b < self.bounds[i + 1]:
                    out.append(name)
            elif top in EMBED_ATTRS:
                if i == 0:
                    out.append(name)
            elif i == last:
                out.append(name)
        return out

    def module_parameters(self, i: int) -> List[nn.Parameter]:
        names = set(self.module_names(i))
        return [p for n, p in self.model.named_parameters() if n in names]


class Stitch(nn.Sequential):
    """A width adapter between modules: LayerNorm, then Linear."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__(nn.LayerNorm(in_dim), nn.Linear(in_dim, out_dim))


class ModulePath(nn.Module):
    """Module ``index`` of ``source`` inside the frozen ``meta`` model (one block per module).

    ``trainable``: module ``index`` of the source and the stitches train (everything else is frozen);
    otherwise the whole path is frozen (the teacher side). Stitches exist only where the widths differ;
    module 0 needs no entry stitch (it reads the image), the last none on exit (it ends in its own head)."""

    def __init__(self, meta: nn.Module, source: nn.Module, source_depths: Sequence[int], index: int,
                 trainable: bool = True, key: str = "m2m"):
        super().__init__()
        self.meta = ViTModules(meta, [1] * len(meta.blocks), f"{key}.meta")
        self.source = ViTModules(source, source_depths, f"{key}.depths")
        m = self.meta.num_modules
        if self.source.num_modules != m:
            raise ConfigError(f"{key}.depths: {self.source.num_modules} modules, but the meta model has {m} "
                              f"blocks (one per module)")
        if not 0 <= index < m:
            raise ConfigError(f"{key}.module: {index} out of range 0..{m - 1}")
        if getattr(meta, "num_prefix_tokens", None) != getattr(source, "num_prefix_tokens", None):
            raise ConfigError(f"{key}: the meta model has {meta.num_prefix_tokens} prefix tokens, "
                              f"{type(source).__name__} {source.num_prefix_tokens}; modules exchange token sequences")
        self.index = index
        differ = self.meta.width != self.source.width
        self.stitch_in = Stitch(self.meta.width, self.source.width) if differ and index > 0 else None
        self.stitch_out = Stitch(self.source.width, self.meta.width) if differ and index < m - 1 else None
        if differ and not trainable:
            raise ConfigError(f"{key}: a frozen module path needs the meta width ({self.meta.width}); "
                              f"{type(source).__name__} is {self.source.width} wide")
        for p in self.parameters():
            p.requires_grad_(False)
        if trainable:
            for p in self.trainable_parameters():
                p.requires_grad_(True)
        self.meta.model.eval()
        self.pretrained_cfg = dict(getattr(meta, "pretrained_cfg", None) or {})
        self.num_classes = getattr(meta, "num_classes", 0)

    def trainable_parameters(self) -> List[nn.Parameter]:
        """Module ``index`` of the source and its stitches: what a module job's optimizer holds."""
        out = list(self.source.module_parameters(self.index))
        for s in (self.stitch_in, self.stitch_out):
            if s is not None:
                out += list(s.parameters())
        return out

    def no_weight_decay(self) -> set:
        own = getattr(self.source.model, "no_weight_decay", lambda: set())()
        return {f"source.model.{n}" for n in own}

    def train(self, mode: bool = True):
        super().train(mode)
        self.meta.model.eval()   # the frozen meta model keeps eval mode (no dropout, as a teacher)
        return self

    def forward_features(self, x: Tensor) -> Tensor:
        i, last = self.index, self.meta.num_modules - 1
        h = self.meta.features(x, 0, i) if i > 0 else x
        if self.stitch_in is not None:
            h = self.stitch_in(h)
        h = self.source.features(h, i, i + 1)
        if i == last:
            return h
        if self.stitch_out is not None:
            h = self.stitch_out(h)
        return self.meta.features(h, i + 1)

    def forward_head(self, x: Tensor) -> Tensor:
        owner = self.source if self.index == self.meta.num_modules - 1 else self.meta
        return owner.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def module_state(path_state: Dict[str, Tensor], modules: ViTModules, i: int) -> Dict[str, Tensor]:
    """Module ``i``'s tensors (names of the plain model) out of a :class:`ModulePath`'s state dict."""
    names = modules.module_names(i)
    missing = [n for n in names if f"source.model.{n}" not in path_state]
    if missing:
        raise ConfigError(f"m2m.parts: the weights of module {i} lack {missing[0]} (not a module run of this model)")
    return {n: path_state[f"source.model.{n}"] for n in names}


def assemble(model: nn.Module, depths: Sequence[int], parts: Sequence[Optional[Dict[str, Tensor]]],
             key: str = "m2m") -> nn.Module:
    """Load module i of ``model`` from ``parts[i]`` (a :class:`ModulePath` state dict; None: left as it is)."""
    modules = ViTModules(model, depths, f"{key}.depths")
    if len(parts) != modules.num_modules:
        raise ConfigError(f"{key}.parts: {len(parts)} module runs for {modules.num_modules} modules")
    state = model.state_dict()
    for i, part in enumerate(parts):
        if part is not None:
            state.update(module_state(part, modules, i))
    model.load_state_dict(state)
    return model


@torch.no_grad()
def compatibility(meta: nn.Module, teacher: nn.Module, depths: Sequence[int], dataset, batch_size: int = 256,
                  device="cpu", tolerance: float = 5.0) -> dict:
    """Deep-Incubation's check: the meta model with its module i swapped for the teacher's module i, for
    every i, against the teacher alone (top-1 % on ``dataset``). ``passed``: every swap is within
    ``tolerance`` points of the teacher (then incubation is not needed)."""
    teacher_top1 = evaluate(teacher, dataset, batch_size, torch.device(device))["top1"]
    meta_top1 = evaluate(meta, dataset, batch_size, torch.device(device))["top1"]
    swapped = []
    for i in range(len(depths)):
        path = ModulePath(meta, teacher, depths, i, trainable=False)
        swapped.append(evaluate(path, dataset, batch_size, torch.device(device))["top1"])
    gap = max(teacher_top1 - s for s in swapped)
    return {"teacher_top1": teacher_top1, "meta_top1": meta_top1, "swapped_top1": swapped,
            "largest_gap": gap, "tolerance": tolerance, "passed": bool(gap <= tolerance)}


# ---------------------------------------------------------------------------------------------- building a stage
def _part_state(name: str, cfg, planned: Dict[str, object]) -> Optional[Dict[str, Tensor]]:
    """The weights of a finished module run (None while that run is only planned)."""
    if name in planned:
        return None
    from safetensors.torch import load_file
    t = cfg.distill.teachers[name]
    if t.checkpoint is None:
        raise ConfigError(f"distill.teachers.{name}.checkpoint: an m2m part needs a finished module run")
    return load_file(str(resolve_weights(t.checkpoint, f"distill.teachers.{name}.checkpoint")))


def build_m2m_distiller(cfg, student: nn.Module, num_classes: int, spec, planned: Optional[Dict] = None):
    """The distiller of an m2m stage (its ``m2m`` section): the student is a :class:`ModulePath` (module and incubation
    jobs) or ``student`` assembled from the module runs (assembly); the teachers the section names (meta, init,
    parts) are building material, the others are placed in the meta model as frozen paths."""
    mc = m2m_of(cfg)
    planned = planned or {}
    dcfg = cfg.distill or DistillCfg()
    named = [mc.meta, mc.init, *mc.parts]
    for n in (x for x in named if x is not None):
        if n not in dcfg.teachers:
            raise ConfigError(f"m2m: '{n}' is not a configured teacher (distill.teachers: "
                              f"{', '.join(dcfg.teachers) or 'none'})")
    others = [k for k in dcfg.teachers if k not in named]
    if mc.parts:   # assembly: module i from the i-th module run, stitches dropped
        assemble(student, mc.depths, [_part_state(p, cfg, planned) for p in mc.parts])
        model = student
        teachers = {k: load_teacher_model(k, dcfg.teachers[k], num_classes, planned) for k in others}
    else:
        meta = load_teacher_model(mc.meta, dcfg.teachers[mc.meta], num_classes, planned)
        if mc.init is not None:   # incubation: the module starts from the teacher's own module
            init = load_teacher_model(mc.init, dcfg.teachers[mc.init], num_classes, planned)
            try:
                student.load_state_dict(init.state_dict())
            except RuntimeError:
                raise ConfigError(f"m2m.init: teacher '{mc.init}' is not a {type(student).__name__} like "
                                  f"model.name") from None
        model = ModulePath(meta, student, mc.depths, mc.module, trainable=True)
        teachers = {}
        for k in others:
            tpath = ModulePath(meta, load_teacher_model(k, dcfg.teachers[k], num_classes, planned),
                               mc.teacher_depths or mc.depths, mc.module, trainable=False, key=f"m2m (teacher '{k}')")
            teachers[k] = LiveTeacher(tpath, spec, dcfg.teachers[k].bf16)
    return make_distiller(cfg, model, teachers, spec)


register_builder(SECTION, build_m2m_distiller)


def read_check(path) -> Optional[dict]:
    import json
    p = Path(path)
    return json.loads(p.read_text()) if p.is_file() else None
