"""Model cost profiling: parameters, MACs and throughput.

Unit convention
---------------
All compute figures in this module are **MACs** (multiply-accumulates): one
multiply-add counts as **1**.  This is what fvcore calls "flops" and what most
papers (DeiT, ViT, timm's ``GMACs`` column) report as "FLOPs".
``torch.utils.flop_counter.FlopCounterMode`` counts 2 per multiply-add; its
numbers are divided by 2 here before they are compared.

Headline MACs
-------------
The headline (``MacReport.total_macs``) is fvcore's ``FlopCountAnalysis`` with

* an added handle for fused attention (``aten::scaled_dot_product_attention``:
  ``QK^T`` plus ``attn @ V``, i.e. ``B*heads*(Nq*Nk*d + Nq*Nk*dv)``; softmax,
  scaling and masking are not counted).  Stock fvcore skips this op, which
  undercounts timm ViTs by ~14 % (e.g. DeiT-Ti 1.08 G instead of 1.26 G);
* an added handle for ``aten::baddbmm`` (used by some attention variants);
* normalisation layers (batch/group/layer/instance/RMS norm) **removed** from
  the headline and reported on their own as ``norm_macs``, so that the
  headline matches published figures within 1 % (measured at 224 px:
  DeiT-Ti 1.2537 G, DeiT-S 4.5989 G, ViT-B/16 17.5638 G, ResNet-50 4.0893 G,
  RegNetY-16GF 15.9117 G; headline + ``norm_macs`` gives 1.2584 / 4.6084 /
  17.5827 G for the three ViTs, the commonly quoted 1.258 / 4.608 / 17.58).

Element-wise ops (add, mul, gelu, softmax, sigmoid, mean, max-pool, ...) are
not counted; they are listed in ``MacReport.skipped_ops``.  fvcore's cheap
default counters for pooling/upsampling (``adaptive_avg_pool2d`` etc.) remain
in the headline; they are tiny.

Every count is cross-checked with ``FlopCounterMode`` restricted to the op
classes both counters know about (convolution, linear/addmm/mm/bmm/matmul and
scaled-dot-product attention).  ``MacReport.agree`` is True when the two
agree within ``rtol`` (1 % by default).

The counter is given vitkd's own attention formula (``sdpa_macs``, and
``sdpa_backward_macs`` for backward kernels) for every SDPA kernel listed in
``SDPA_FLOP_FORMULAS`` through its ``custom_mapping`` argument, so attention is
counted whatever torch's own flop table covers in the installed release (some
releases have no formula for the CPU kernel
``aten._scaled_dot_product_flash_attention_for_cpu``, which would drop
attention from the cross-check).  Kernels missing from the installed torch are
skipped.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

__all__ = ["MacReport", "count_params", "count_macs", "BACKWARD_FACTOR", "NORM_OPS", "MATMUL_OPS",
           "SDPA_FLOP_FORMULAS", "attention_flop_mapping", "sdpa_macs", "sdpa_backward_macs", "InputSpec",
           "flop_counter"]

#: Backward pass cost convention: backward = 2 x forward (gradients w.r.t.
#: activations and w.r.t. weights each cost about one forward).  A training
#: step therefore costs 3 x forward.  (The first layer's input gradient is not
#: actually needed, so this slightly overestimates; it is the usual convention.)
BACKWARD_FACTOR = 2.0

#: fvcore operator names (``aten::`` stripped) treated as normalisation.
NORM_OPS = frozenset(
    {"batch_norm", "group_norm", "layer_norm", "instance_norm", "rms_norm"}
)

#: fvcore operator names in the cross-checked op classes.
MATMUL_OPS = frozenset(
    {
        "conv",  # fvcore's name for aten::_convolution
        "_convolution",
        "linear",
        "addmm",
        "mm",
        "bmm",
        "baddbmm",
        "matmul",
        "einsum",
        "scaled_dot_product_attention",
    }
)

InputSpec = Union[int, Sequence[int], torch.Tensor, Tuple[torch.Tensor, ...]]


# --------------------------------------------------------------------------- #
# parameters
# --------------------------------------------------------------------------- #
def count_params(model: nn.Module) -> Dict[str, int]:
    """Number of parameters: ``{'total', 'trainable', 'non_trainable'}``.

    Shared (tied) parameters are counted once.  Buffers are not parameters.
    """
    total = trainable = 0
    for p in model.parameters():
        n = p.numel()
        total += n
        if p.requires_grad:
            trainable += n
    return {"total": total, "trainable": trainable, "non_trainable": total - trainable}


# --------------------------------------------------------------------------- #
# fvcore handles
# --------------------------------------------------------------------------- #
def _jit_shape(val: Any) -> Optional[list]:
    t = val.type()
    if t.kind() == "TensorType" or hasattr(t, "sizes"):
        try:
            s = t.sizes()
        except RuntimeError:
            return None
        return list(s) if s is not None else None
    return None


def sdpa_macs(q_shape: Sequence[int], k_shape: Sequence[int], v_shape: Sequence[int]) -> int:
    """MACs of scaled-dot-product attention: ``QK^T`` + ``attn @ V``.

    ``q: [..., Nq, d]``, ``k: [..., Nk, d]``, ``v: [..., Nk, dv]``; the leading
    dims of ``q`` (batch x heads; for GQA the query heads) are the batch.
    Softmax, scaling, masking and dropout are not counted.
    """
    *lead, nq, d = q_shape
    nk = k_shape[-2]
    dv = v_shape[-1]
    b = math.prod(lead) if lead else 1
    return int(b * nq * nk * d + b * nq * nk * dv)


def sdpa_backward_macs(q_shape: Sequence[int], k_shape: Sequence[int], v_shape: Sequence[int]) -> int:
    """MACs of the backward of scaled-dot-product attention, torch's convention.

    The scores ``QK^T`` are recomputed, then ``dP = dO V^T``, ``dV = P^T dO``,
    ``dQ = dS K`` and ``dK = dS^T Q``: ``B*heads*Nq*Nk*(3d + 2dv)``, i.e.
    ``sdpa_macs`` (the recompute and ``dO V^T``) plus the three gradient
    products.  Shapes as in :func:`sdpa_macs`.
    """
    *lead, nq, d = q_shape
    nk = k_shape[-2]
    dv = v_shape[-1]
    b = math.prod(lead) if lead else 1
    return int(b * nq * nk * (3 * d + 2 * dv))


def _sdpa_flop_jit(inputs: list, outputs: list) -> int:
    q, k, v = (_jit_shape(x) for x in inputs[:3])
    if q is None or k is None or v is None:
        raise ValueError("scaled_dot_product_attention: unknown input shapes in trace")
    return sdpa_macs(q, k, v)


def _baddbmm_flop_jit(inputs: list, outputs: list) -> int:
    # aten::baddbmm(self, batch1, batch2, beta, alpha): MACs of batch1 @ batch2
    a = _jit_shape(inputs[1])
    b = _jit_shape(inputs[2])
    n, m, k = a
    return int(n * m * k * b[-1])


def _rms_norm_flop_jit(inputs: list, outputs: list) -> int:
    # same convention as fvcore's norm counters: 4 (+1 if affine) per element
    shape = _jit_shape(inputs[0])
    has_affine = len(inputs) > 2 and _jit_shape(inputs[2]) is not None
    return int(math.prod(shape) * (5 if has_affine else 4))


def _fvcore_analysis(model: nn.Module, inputs: Tuple[torch.Tensor, ...]):
    from fvcore.nn import FlopCountAnalysis

    fa = FlopCountAnalysis(model, inputs)
    fa.set_op_handle(
        **{
            "aten::scaled_dot_product_attention": _sdpa_flop_jit,
            "aten::baddbmm": _baddbmm_flop_jit,
            "aten::rms_norm": _rms_norm_flop_jit,
        }
    )
    fa.unsupported_ops_warnings(False)
    fa.uncalled_modules_warnings(False)
    fa.tracer_warnings("none")
    return fa


# --------------------------------------------------------------------------- #
# flop_counter cross-check
# --------------------------------------------------------------------------- #
def _sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    # FlopCounterMode formula (arguments are shapes): FLOPs = 2 x MACs
    return 2 * sdpa_macs(query, key, value)


def _sdpa_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return 2 * sdpa_backward_macs(query, key, value)


#: aten attention kernels -> FlopCounterMode formula (shapes in, FLOPs = 2 x MACs out).
#: Every kernel that ``F.scaled_dot_product_attention`` may dispatch to on some backend or
#: torch release; all take ``query, key, value`` (``[..., N, d]``) first, their backward
#: ``grad_out, query, key, value``.  The composite ops (``scaled_dot_product_attention``,
#: ``_scaled_dot_product_attention_math``) are normally decomposed into matmuls before the
#: counter sees them (the counter then counts the matmuls); they are listed so that they are
#: counted once, by the same formula, wherever they are not.  Not listed: the low-level
#: ``_flash/_efficient/_cudnn_attention_*`` kernels, which use a ``[B, N, heads, d]`` or
#: variable-length layout and are only reached by direct calls (torch's table covers them).
SDPA_FLOP_FORMULAS: Dict[str, Callable[..., int]] = {
    **dict.fromkeys(
        (
            "scaled_dot_product_attention",
            "_scaled_dot_product_attention_math",
            "_scaled_dot_product_attention_math_for_mps",
            "_scaled_dot_product_flash_attention",
            "_scaled_dot_product_flash_attention_for_cpu",
            "_scaled_dot_product_efficient_attention",
            "_scaled_dot_product_cudnn_attention",
            "_scaled_dot_product_fused_attention_overrideable",
            "_triton_scaled_dot_attention",
        ),
        _sdpa_flops,
    ),
    **dict.fromkeys(
        (
            "_scaled_dot_product_flash_attention_backward",
            "_scaled_dot_product_flash_attention_for_cpu_backward",
            "_scaled_dot_product_efficient_attention_backward",
            "_scaled_dot_product_cudnn_attention_backward",
            "_scaled_dot_product_fused_attention_overrideable_backward",
        ),
        _sdpa_backward_flops,
    ),
}


def attention_flop_mapping() -> Dict[Any, Callable[..., int]]:
    """``custom_mapping`` for ``FlopCounterMode``: op overload packet -> attention formula,
    for the kernels of ``SDPA_FLOP_FORMULAS`` present in the installed torch."""
    aten = torch.ops.aten
    return {getattr(aten, name): f for name, f in SDPA_FLOP_FORMULAS.items() if hasattr(aten, name)}


def flop_counter():
    """A silent ``FlopCounterMode`` that counts attention with vitkd's formula."""
    from torch.utils.flop_counter import FlopCounterMode

    return FlopCounterMode(display=False, custom_mapping=attention_flop_mapping())


def _flopcounter_macs(model: nn.Module, inputs: Tuple[torch.Tensor, ...]) -> Tuple[int, Dict[str, int]]:
    """MACs from ``FlopCounterMode`` (its FLOPs / 2), with a per-op breakdown.

    FlopCounterMode only knows matmul-like ops (mm/addmm/bmm/baddbmm,
    convolution) plus the attention kernels of ``SDPA_FLOP_FORMULAS``, i.e.
    exactly the cross-checked op classes.
    """
    with torch.no_grad(), flop_counter() as fc:
        model(*inputs)
    per_op = {str(k): int(v) // 2 for k, v in fc.get_flop_counts().get("Global", {}).items()}
    return int(fc.get_total_flops()) // 2, per_op


# --------------------------------------------------------------------------- #
# MAC report
# --------------------------------------------------------------------------- #
@dataclass
class MacReport:
    """MAC count for one forward pass (unit: MACs, one multiply-add = 1).

    ``total_macs`` is the headline: fvcore + fused-attention handle, without
    normalisation layers.  It is for the whole input given (``batch_size``
    samples); ``macs_per_image`` divides by the batch size.
    """

    total_macs: int
    by_op: Dict[str, int]
    norm_macs: int
    flopcounter_macs: Optional[int]
    agree: bool
    params: int
    trainable_params: int = 0
    norm_by_op: Dict[str, int] = field(default_factory=dict)
    fvcore_matmul_macs: int = 0  # fvcore restricted to the cross-checked op classes
    rel_diff: Optional[float] = None  # (fvcore_matmul - flopcounter) / flopcounter
    flopcounter_by_op: Dict[str, int] = field(default_factory=dict)
    skipped_ops: Dict[str, int] = field(default_factory=dict)  # op -> occurrences
    input_shapes: list = field(default_factory=list)
    batch_size: int = 1
    rtol: float = 0.01
    error: Optional[str] = None  # set when fvcore failed (headline then = flopcounter)

    @property
    def macs_per_image(self) -> float:
        return self.total_macs / max(self.batch_size, 1)

    @property
    def gmacs(self) -> float:
        return self.total_macs / 1e9

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["macs_per_image"] = self.macs_per_image
        d["gmacs"] = self.gmacs
        return d


def _make_inputs(model: nn.Module, input_size: InputSpec, batch_size: int) -> Tuple[torch.Tensor, ...]:
    if isinstance(input_size, torch.Tensor):
        return (input_size,)
    if isinstance(input_size, (tuple, list)) and input_size and all(
        isinstance(t, torch.Tensor) for t in input_size
    ):
        return tuple(input_size)
    if isinstance(input_size, int):
        input_size = (3, input_size, input_size)
    try:
        p = next(model.parameters())
        device, dtype = p.device, (p.dtype if p.is_floating_point() else torch.float32)
    except StopIteration:
        device, dtype = torch.device("cpu"), torch.float32
    return (torch.randn(batch_size, *tuple(int(s) for s in input_size), device=device, dtype=dtype),)


def count_macs(
    model: nn.Module,
    input_size: InputSpec = (3, 224, 224),
    batch_size: int = 1,
    cross_check: bool = True,
    rtol: float = 0.01,
) -> MacReport:
    """Count MACs (one multiply-add = 1) of one forward pass.

    Args:
        model: any ``nn.Module``; it is run in eval mode (its mode is restored).
        input_size: per-sample shape without batch, e.g. ``(3, 224, 224)``; an
            int ``s`` means ``(3, s, s)``; or an example input tensor / tuple
            of tensors (used as-is, batch dim included).
        batch_size: batch prepended to ``input_size`` shapes (default 1, so
            the headline is per image).
        cross_check: also run ``FlopCounterMode`` and compare.
        rtol: relative tolerance for ``agree``.
    """
    inputs = _make_inputs(model, input_size, batch_size)
    bsz = int(inputs[0].shape[0]) if inputs[0].dim() > 0 else 1
    pc = count_params(model)
    was_training = model.training
    model.eval()
    try:
        error = None
        by_op_all: Dict[str, int] = {}
        skipped: Dict[str, int] = {}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fa = _fvcore_analysis(model, inputs)
                with torch.no_grad():
                    by_op_all = {str(k): int(v) for k, v in fa.by_operator().items()}
                skipped = {str(k): int(v) for k, v in fa.unsupported_ops().items()}
        except Exception as e:  # pragma: no cover - tracing failures are model-specific
            error = f"fvcore failed: {type(e).__name__}: {e}"

        fc_total: Optional[int] = None
        fc_by_op: Dict[str, int] = {}
        if cross_check or error is not None:
            fc_total, fc_by_op = _flopcounter_macs(model, inputs)
    finally:
        model.train(was_training)

    norm_by_op = {k: v for k, v in by_op_all.items() if k in NORM_OPS}
    by_op = {k: v for k, v in by_op_all.items() if k not in NORM_OPS}
    fv_matmul = sum(v for k, v in by_op.items() if k in MATMUL_OPS)
    if error is None:
        total = sum(by_op.values())
    else:
        total = int(fc_total or 0)
        by_op = {"flopcounter_total": total}

    rel = None
    agree = False
    if fc_total is not None and error is None:
        if fc_total == 0:
            rel = 0.0 if fv_matmul == 0 else math.inf
        else:
            rel = (fv_matmul - fc_total) / fc_total
        agree = abs(rel) <= rtol

    return MacReport(
        total_macs=int(total),
        by_op=by_op,
        norm_macs=int(sum(norm_by_op.values())),
        flopcounter_macs=fc_total,
        agree=bool(agree),
        params=pc["total"],
        trainable_params=pc["trainable"],
        norm_by_op=norm_by_op,
        fvcore_matmul_macs=int(fv_matmul),
        rel_diff=rel,
        flopcounter_by_op=fc_by_op,
        skipped_ops=skipped,
        input_shapes=[list(t.shape) for t in inputs],
        batch_size=bsz,
        rtol=rtol,
        error=error,
    )


