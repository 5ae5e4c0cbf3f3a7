"""Model-level profiling (params, MACs, img/s of a name or module) and the one text formatter of
profiles and training costs."""
from __future__ import annotations

import math
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from .macs import MacReport, count_macs
from .throughput import measure_throughput

__all__ = ["profile_model", "format_report", "create_timm"]


def _default_input_size(model: nn.Module, img_size: Optional[Union[int, Sequence[int]]]) -> Tuple[int, int, int]:
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    cfg_size = tuple(cfg.get("input_size", (3, 224, 224)))
    in_chans = int(getattr(model, "in_chans", cfg_size[0] if cfg_size else 3))
    if img_size is not None:
        if isinstance(img_size, int):
            return (in_chans, img_size, img_size)
        img_size = tuple(int(s) for s in img_size)
        return (in_chans, *img_size[-2:]) if len(img_size) >= 2 else (in_chans, img_size[0], img_size[0])
    if len(cfg_size) == 3:
        return (in_chans, int(cfg_size[1]), int(cfg_size[2]))
    return (in_chans, 224, 224)


def create_timm(name: str, img_size=None, **create_kwargs) -> nn.Module:
    """A model with random weights (never downloaded), built through :func:`vitkd.models.create`; a ViT is
    built for ``img_size``, a model that takes no ``img_size`` (CNNs) is built as it is."""
    from .. import models as model_lib
    from ..config import ConfigError

    create_kwargs = dict(create_kwargs)
    create_kwargs.pop("pretrained", None)  # never download weights
    num_classes = create_kwargs.pop("num_classes", None)
    if img_size is not None:
        try:
            return model_lib.create(name, num_classes, {**create_kwargs, "img_size": img_size})
        except ConfigError as e:
            if "img_size" not in str(e):
                raise
            # CNNs and other fully-convolutional models take no img_size
    return model_lib.create(name, num_classes, create_kwargs)


def profile_model(
    name_or_model: Union[str, nn.Module],
    img_size: Optional[Union[int, Sequence[int]]] = None,
    batch_size: int = 32,
    throughput: bool = True,
    device: Union[str, torch.device] = "cpu",
    warmup: int = 2,
    iters: int = 5,
    **create_kwargs,
) -> Dict[str, Any]:
    """Params, MACs per image (+ breakdown, norms separately, agreement flag)
    and inference img/s for a timm model name or an ``nn.Module``.

    A name is built with ``timm.create_model(name, pretrained=False, **kwargs)``;
    ``img_size`` is passed to models that accept it (ViTs) and is used as the
    input resolution for the others (CNNs).  Without ``img_size`` the input
    size is ``model.pretrained_cfg['input_size']``.
    """
    if isinstance(name_or_model, nn.Module):
        model = name_or_model
        name = type(model).__name__
        cfg = getattr(model, "pretrained_cfg", None) or {}
        name = cfg.get("architecture", name) if isinstance(cfg, Mapping) else name
    else:
        name = str(name_or_model)
        model = create_timm(name, img_size=img_size, **create_kwargs)
    input_size = _default_input_size(model, img_size)

    rep = count_macs(model, input_size, batch_size=1)
    out: Dict[str, Any] = {
        "name": name,
        "input_size": tuple(input_size),
        "params": rep.params,
        "trainable_params": rep.trainable_params,
        "macs": rep.total_macs,
        "gmacs": rep.total_macs / 1e9,
        "by_op": rep.by_op,
        "norm_macs": rep.norm_macs,
        "norm_by_op": rep.norm_by_op,
        "flopcounter_macs": rep.flopcounter_macs,
        "fvcore_matmul_macs": rep.fvcore_matmul_macs,
        "rel_diff": rep.rel_diff,
        "agree": rep.agree,
        "skipped_ops": rep.skipped_ops,
        "unit": "MACs (1 multiply-add = 1), per image, norms excluded",
        "img_per_s": None,
        "throughput": None,
    }
    if rep.error:
        out["error"] = rep.error
    if throughput:
        tp = measure_throughput(model, input_size, batch_size=batch_size, warmup=warmup, iters=iters, device=device)
        out["img_per_s"] = tp["img_per_s"]
        out["throughput"] = tp
    return out


def _g(x: Optional[float]) -> str:
    return "-" if x is None else (f"{x / 1e9:.3f}" if x >= 1e8 else f"{x / 1e9:.3g}")


def _m(x: Optional[float]) -> str:
    return "-" if x is None else f"{x / 1e6:.2f}"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    rows = [list(map(str, r)) for r in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in rows)) if rows else len(str(h)) for i, h in enumerate(header)]
    fmt = lambda r: "  ".join(  # noqa: E731
        (c.ljust(w) if i == 0 else c.rjust(w)) for i, (c, w) in enumerate(zip(r, widths))
    )
    lines = [fmt(list(map(str, header))), "  ".join("-" * w for w in widths)]
    lines += [fmt(r) for r in rows]
    return "\n".join(lines)


def format_report(report: Union[Dict[str, Any], Sequence[Dict[str, Any]], MacReport]) -> str:
    """Human-readable table (G MACs with 3 decimals, M params).

    Accepts a ``profile_model`` dict, a list of them, a dict name -> profile,
    a ``training_cost_per_image`` dict or a ``MacReport``.
    """
    if isinstance(report, MacReport):
        d = report.to_dict()
        d["macs"] = report.macs_per_image
        d.setdefault("name", "model")
        d["input_size"] = tuple(report.input_shapes[0][1:]) if report.input_shapes else None
        report = d
    if isinstance(report, Mapping) and "total_macs_per_image" in report:
        rows = [
            ("student forward", _g(report["student_forward_macs"])),
            (f"student backward ({report['backward_factor']:g}x fwd)", _g(report["student_backward_macs"])),
        ]
        for n, v in report["teachers_forward_macs"].items():
            rows.append((f"teacher {n} (forward)", _g(v)))
            if n in report.get("teachers_backward_macs", {}):   # trained with the student
                rows.append((f"teacher {n} (backward, trained)", _g(report["teachers_backward_macs"][n])))
        rows.append((f"connectors/overhead (forward {_g(report['connectors_forward_macs'])}, trained)",
                     _g(report["connectors_macs"])))
        rows.append(("total per image", _g(report["total_macs_per_image"])))
        return _table(("training cost", "GMACs"), rows)
    if isinstance(report, Mapping) and "macs" not in report and all(isinstance(v, Mapping) for v in report.values()):
        report = [dict(v, name=v.get("name", k)) for k, v in report.items()]
    if isinstance(report, Mapping):
        report = [report]
    rows = []
    for r in report:
        ins = r.get("input_size")
        ins = "x".join(str(s) for s in ins) if ins else "-"
        ag = r.get("agree")
        rel = r.get("rel_diff")
        agree = "-" if ag is None else ("yes" if ag else "NO")
        if rel is not None and math.isfinite(rel):
            agree += f" ({rel * 100:+.2f}%)"
        ips = r.get("img_per_s")
        rows.append(
            (
                r.get("name", "model"),
                ins,
                _m(r.get("params")),
                _g(r.get("macs", r.get("total_macs"))),
                _g(r.get("norm_macs")),
                agree,
                "-" if ips is None else f"{ips:.1f}",
            )
        )
    return _table(("model", "input", "params (M)", "GMACs", "norm GMACs", "fc agree", "img/s"), rows)


