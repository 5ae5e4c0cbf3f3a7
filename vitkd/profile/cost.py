"""Training cost per image of one distillation step: student forward + backward, teachers' forwards
(through the distiller's teacher sources, at each teacher's real input; a teacher trained with the student also
its backward), and the distillation overhead."""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from .macs import BACKWARD_FACTOR, InputSpec, MacReport, flop_counter, count_macs
from .report import create_timm

__all__ = ["training_cost_per_image", "distillation_cost"]


def _forward_macs(spec: Any, input_size: InputSpec) -> Tuple[float, Optional[MacReport]]:
    """Per-image forward MACs of a module, timm name, number, or (spec, input_size)."""
    if isinstance(spec, tuple) and len(spec) == 2 and not isinstance(spec[0], (int, float)):
        spec, input_size = spec
    if isinstance(spec, (int, float)):
        return float(spec), None
    if isinstance(spec, str):
        spec = create_timm(spec)
    if not isinstance(spec, nn.Module):
        raise TypeError(f"expected nn.Module, timm model name or MAC count, got {type(spec)!r}")
    rep = count_macs(spec, input_size, batch_size=1, cross_check=False)
    return float(rep.macs_per_image), rep


def training_cost_per_image(
    student: Union[nn.Module, str, float],
    teachers: Optional[Mapping[str, Any]] = None,
    connectors_macs: float = 0,
    input_size: InputSpec = (3, 224, 224),
    connectors_trained: bool = True,
    backward_factor: float = BACKWARD_FACTOR,
    teachers_trained: Sequence[str] = (),
) -> Dict[str, Any]:
    """Per-image training MACs of one distillation step.

    ``student forward x (1 + backward_factor)`` + each teacher's forward (no
    backward: teachers are frozen; those named in ``teachers_trained``, trained with
    the student, also pay their backward) + connectors.

    Convention: backward = 2 x forward (``backward_factor``), so a trained
    module costs 3 x its forward.  ``connectors_macs`` is the connectors'
    (projectors/adapters) *forward* MACs per image; since they are trained,
    they are also charged ``1 + backward_factor`` times unless
    ``connectors_trained=False`` (then counted once, as given).

    ``student`` and each value of ``teachers`` may be an ``nn.Module``, a timm
    model name (built with ``pretrained=False``), a precomputed per-image
    forward MAC count, or a ``(spec, input_size)`` tuple for a teacher that
    runs at another resolution.  Norm layers are excluded (headline MACs).
    """
    teachers = dict(teachers or {})
    s_fwd, _ = _forward_macs(student, input_size)
    s_bwd = s_fwd * backward_factor
    t_macs = {name: _forward_macs(spec, input_size)[0] for name, spec in teachers.items()}
    t_bwd = {name: t_macs[name] * backward_factor for name in teachers_trained}
    conn_factor = (1.0 + backward_factor) if connectors_trained else 1.0
    conn = float(connectors_macs) * conn_factor
    t_total = sum(t_macs.values()) + sum(t_bwd.values())
    total = s_fwd + s_bwd + t_total + conn
    return {
        "student_forward_macs": s_fwd,
        "student_backward_macs": s_bwd,
        "student_train_macs": s_fwd + s_bwd,
        "teachers_forward_macs": t_macs,
        "teachers_backward_macs": t_bwd,
        "teachers_total_macs": t_total,
        "connectors_forward_macs": float(connectors_macs),
        "connectors_macs": conn,
        "total_macs_per_image": total,
        "backward_factor": backward_factor,
        "unit": "MACs (1 multiply-add = 1) per image; backward = %g x forward" % backward_factor,
    }


def distillation_cost(distiller: nn.Module, input_size: Sequence[int]) -> Dict[str, Any]:
    """Per-image training cost of one distillation step of a built ``vitkd.distiller.Distiller``.

    Student and teachers are counted with :func:`count_macs` (fvcore, attention included, norms
    excluded). The distillation overhead (connectors, projectors, relation products of the losses) is
    measured with torch's flop counter (attention counted with vitkd's formula, see
    ``SDPA_FLOP_FORMULAS``) as (whole distiller forward) - (student forward) - (teachers' forwards)
    on the same batch. Training cost = (1 + backward) x (student + overhead) + teachers'
    forwards (+ the backward of each teacher trained with the student), with backward = 2 x forward.
    """
    from ..losses import Batch  # local import: profile stays usable without the training stack

    input_size = tuple(input_size)
    student = count_macs(distiller.student, input_size, batch_size=1, cross_check=False)
    # through the distiller's teacher sources, each at the input it really gets
    teachers = {k: t.forward_macs(input_size) for k, t in distiller.teachers.items()}
    x = torch.randn(2, *input_size)
    y = torch.zeros(2, dtype=torch.long)
    batch = Batch(images=x, target=y, index=torch.arange(2))   # samples 0 and 1 of epoch 0 (a stored teacher reads them)

    def macs(fn) -> float:
        with flop_counter() as fc:
            fn()
        return fc.get_total_flops() / 2 / x.shape[0]

    was = distiller.training
    distiller.train()
    whole = macs(lambda: distiller(batch))
    parts = macs(lambda: distiller.student(x)) + sum(macs(lambda t=t: t(x, batch)) for t in distiller.teachers.values())
    distiller.train(was)
    overhead = max(0.0, whole - parts)
    trained = list(getattr(distiller, "trained_teachers", dict)())
    cost = training_cost_per_image(student.total_macs, teachers, connectors_macs=overhead, input_size=input_size,
                                   teachers_trained=trained)
    cost.update({"student_params": student.params, "overhead_forward_macs": overhead})
    return cost
