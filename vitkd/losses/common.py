"""Helpers shared by the registered terms: reading logits and heads, resolving layer references."""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from torch import Tensor

from ..connectors import Feature
from ..taps import TapOutput, TapRequest
from .base import LossTerm, ModelInfo

__all__ = ["logits_of", "target_of", "as_int_list", "as_pairs", "zip_layers", "resolve_layers", "layer_request",
           "check_tokens", "check_vit"]


def logits_of(out: TapOutput, head: Optional[str]) -> Tensor:
    """The named head's logits (float32), or the model's logits when ``head`` is None."""
    return (out.heads[head] if head is not None else out.logits).float()


def target_of(batch) -> Tensor:
    """Hard labels, or the mixed / smoothed label distribution when mixup is on (argmax taken downstream)."""
    return batch.soft_target if batch.soft_target is not None else batch.target


def as_int_list(term: LossTerm, value, arg: str) -> List[int]:
    if isinstance(value, bool):
        term.fail(f"{arg}: expected an integer or a list of integers, got {value!r}")
    if isinstance(value, int):
        return [value]
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, int) and not isinstance(v, bool)
                                                          for v in value):
        return [int(v) for v in value]
    term.fail(f"{arg}: expected an integer or a non-empty list of integers, got {value!r}")


def as_pairs(term: LossTerm, pairs, arg: str = "pairs") -> List[Tuple[int, int]]:
    """``[[s, t], ...]`` (or a single ``[s, t]``) -> list of (student, teacher) layer pairs."""
    if (isinstance(pairs, (list, tuple)) and len(pairs) == 2 and all(isinstance(p, int) and not isinstance(p, bool)
                                                                    for p in pairs)):
        pairs = [pairs]
    ok = isinstance(pairs, (list, tuple)) and len(pairs) > 0 and all(
        isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in p)
        for p in pairs)
    if not ok:
        term.fail(f"{arg}: expected a list of [student_layer, teacher_layer] integer pairs, got {pairs!r}")
    return [(int(s), int(t)) for s, t in pairs]


def zip_layers(term: LossTerm, student, teacher, s_arg: str, t_arg: str) -> List[Tuple[int, int]]:
    s = as_int_list(term, student, s_arg)
    t = as_int_list(term, teacher, t_arg)
    if len(s) != len(t):
        term.fail(f"{s_arg} has {len(s)} entries but {t_arg} has {len(t)}; they are paired one to one")
    return list(zip(s, t))


def resolve_layers(term: LossTerm, info: ModelInfo, role: str, layers: Sequence[int], key: str) -> List[Feature]:
    """Layer references of one model -> :class:`Feature` (blocks of a ViT, stage strides of a CNN)."""
    feats = []
    if info.vit:
        term.check_blocks(info, layers, role)
        for b in layers:
            feats.append(Feature(key, "block", b % info.depth, int(info.embed_dim), tuple(info.grid)))
    else:
        if not info.stages:
            term.fail(f"{role} model {info.name} has neither transformer blocks nor CNN stages (timm feature_info)")
        for s in layers:
            if s not in info.stages:
                term.fail(f"{role} model {info.name} is a CNN: its layers are stage strides; it has no stride {s} "
                          f"(valid strides: {', '.join(str(k) for k in sorted(info.stages))})")
            feats.append(Feature(key, "stage", s, int(info.stages[s][1])))
    return feats


def layer_request(feats: Iterable[Feature], **extra) -> TapRequest:
    feats = list(feats)
    return TapRequest(tokens={f.index for f in feats if f.kind == "block"},
                      stages={f.index for f in feats if f.kind == "stage"}, **extra)


def check_tokens(term: LossTerm, s: ModelInfo, t: ModelInfo, tokens: str, what: str) -> None:
    """Token counts of student and teacher must agree for token-by-token relations."""
    if tokens not in ("all", "patches"):
        term.fail(f"tokens: '{tokens}' is not one of all, patches")
    if not (s.vit and t.vit):
        return
    ns = s.grid[0] * s.grid[1] + (len(s.prefix_names) if tokens == "all" else 0)
    nt = t.grid[0] * t.grid[1] + (len(t.prefix_names) if tokens == "all" else 0)
    if ns != nt:
        hint = ""
        if tokens == "all" and s.grid == t.grid:
            hint = (f"; the patch grids agree, so set tokens: patches to compare patch tokens only "
                    f"(prefix tokens: student {s.prefix_names}, teacher {t.prefix_names})")
        term.fail(f"{what} compares token by token but the student has {ns} tokens (grid {s.grid[0]}x{s.grid[1]}, "
                  f"tokens: {tokens}) and the teacher {nt} (grid {t.grid[0]}x{t.grid[1]}){hint}")


def check_vit(term: LossTerm, info: ModelInfo, role: str) -> None:
    if not info.vit:
        term.fail(f"{role} model {info.name} is a CNN; this term needs transformer blocks on both sides")



def check_vit_pairs(term: LossTerm, models: Dict[str, ModelInfo], pairs) -> Tuple[ModelInfo, ModelInfo]:
    """Student and teacher are ViT-like and own the paired blocks; returns their infos."""
    s, t = models["student"], models[term.teacher]
    check_vit(term, s, "student")
    check_vit(term, t, f"teacher '{term.teacher}'")
    term.check_blocks(s, [p[0] for p in pairs], "student")
    term.check_blocks(t, [p[1] for p in pairs], f"teacher '{term.teacher}'")
    return s, t


def check_logit_pair(term: LossTerm, s: ModelInfo, t: ModelInfo, head: Optional[str], teacher_head: Optional[str]):
    """The named heads exist and student and teacher predict the same classes."""
    term.check_head(s, head, "student")
    term.check_head(t, teacher_head, f"teacher '{term.teacher}'")
    if s.num_classes != t.num_classes:
        term.fail(f"student has {s.num_classes} classes but teacher '{term.teacher}' has {t.num_classes}")
