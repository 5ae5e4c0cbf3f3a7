"""Cross-architecture terms: ``cnn_align`` (DearKD-style), ``ofa`` (OFA-KD exits), ``cit`` (CiT / Co-advise)."""
from __future__ import annotations

from typing import Dict, List, Optional

from torch import Tensor, nn

from ..connectors import Feature, make_connector
from ..taps import TapOutput, TapRequest
from . import functional as KF
from .base import Batch, LossTerm, ModelInfo, register_loss
from .common import as_int_list, layer_request, logits_of, resolve_layers, target_of, check_logit_pair
from .feature import PairedFeatures


@register_loss("cnn_align")
class CNNAlign(PairedFeatures):
    """DearKD-style alignment of a ViT student's patch tokens to a CNN teacher's stage maps, MSE.

    ``student_blocks`` (ViT blocks) pair one to one with ``teacher_stages`` (the CNN's strides). The
    connector lays the student tokens out on their patch grid, maps the width to the teacher's channels
    (``auto``: 1x1 conv-equivalent linear per token when they differ) and reconciles the spatial size
    bilinearly: ``resize: student`` brings the student map to the teacher stage's size, ``teacher``
    brings the teacher map to the student grid. Element-mean MSE (``hint_mse``), pairs averaged.
    DearKD distils intermediate features only in its early stage: switch the term off with its schedule,
    e.g. ``schedule: {until: 0.5}`` (the term is then not computed, and a teacher only it reads not run).
    Default weight 1.
    """

    _arg_names = ("student_blocks", "teacher_stages")

    def __init__(self, student_blocks, teacher_stages, connector: str = "auto", resize: str = "student",
                 teacher: Optional[str] = None):
        super().__init__(student_blocks, teacher_stages, connector, resize, teacher)

    def _check_models(self, s: ModelInfo, t: ModelInfo) -> None:
        if not s.vit:
            self.fail(f"student model {s.name} is a CNN; cnn_align aligns a ViT student to a CNN teacher "
                      f"(use fitnet for other pairs)")
        if t.vit:
            self.fail(f"teacher '{self.teacher}' ({t.name}) is a ViT; cnn_align needs a CNN teacher with stages "
                      f"(use fitnet for ViT teachers)")

    def forward(self, outs: Dict[str, TapOutput], batch: Batch) -> Tensor:
        total = 0.0
        for fs, ft in self.aligned(outs):
            total = total + KF.hint_mse(fs, ft)
        return total / len(self.pairs)


class _Exit(nn.Module):
    """OFA exit: pooled student feature -> logits (LayerNorm + linear, or an MLP)."""

    def __init__(self, feat: Feature, num_classes: int, pool: str, projector: str, hidden: Optional[int]):
        super().__init__()
        self.feat, self.pool = feat, pool
        if projector == "linear":
            self.proj = nn.Sequential(nn.LayerNorm(feat.channels), nn.Linear(feat.channels, num_classes))
        else:
            self.proj = make_connector("mlp", feat.channels, num_classes, hidden=hidden)

    def forward(self, out: TapOutput) -> Tensor:
        if self.feat.kind == "stage":
            x = out.stages[self.feat.index].mean(dim=(2, 3))
        elif self.pool == "cls":
            x = out.prefix[self.feat.index]["cls"]
        else:
            x = out.patches[self.feat.index].mean(dim=1)
        return self.proj(x).float()


@register_loss("ofa")
class OFA(LossTerm):
    """OFA-KD: exits on intermediate student layers project into logit space, ``ofa_loss`` vs the teacher.

    ``student_layers``: ViT blocks (or CNN strides); each exit pools the layer (``pool: mean`` of patch
    tokens, or the ``cls`` token; CNN maps are average-pooled) and projects it with LayerNorm + linear
    (``projector: linear``) or a small MLP (``projector: mlp``, ``hidden`` wide). Per exit
    ``ofa_loss(exit, teacher, labels, eps, T) = -sum((p_t + 1_y)^eps - 1_y) * log p_s`` (batch mean; eps=1
    is plain soft CE). The exits are summed and ``final`` times the same loss on the student's own
    logits (``head``) is added (reference: ``--ofa-loss-weight 1`` per branch, summed, and
    ``--kd-loss-weight 1`` on the final logits). Defaults ``eps=1, T=1``; default weight 1. The exits
    are connectors: they train with the student and are not part of its weights.
    """

    def __init__(self, student_layers, eps: float = 1.0, T: float = 1.0, pool: str = "mean",
                 projector: str = "linear", hidden: Optional[int] = None, final: float = 1.0,
                 head: Optional[str] = None, teacher_head: Optional[str] = None, teacher: Optional[str] = None):
        super().__init__(teacher=teacher)
        self.layers = as_int_list(self, student_layers, "student_layers")
        if pool not in ("mean", "cls"):
            raise ValueError(f"pool must be 'mean' or 'cls', got {pool!r}")
        if projector not in ("linear", "mlp"):
            raise ValueError(f"projector must be 'linear' or 'mlp', got {projector!r}")
        if T <= 0 or eps <= 0:
            raise ValueError(f"T and eps must be > 0, got T={T}, eps={eps}")
        self.eps, self.T, self.pool, self.projector, self.hidden = float(eps), float(T), pool, projector, hidden
        self.final, self.head, self.teacher_head = float(final), head, teacher_head
        self.exits = nn.ModuleList()
        self._feats: List[Feature] = []

    def requests(self) -> Dict[str, TapRequest]:
        # block taps carry the prefix tokens too (pool: cls)
        return {"student": layer_request(self._feats, heads=self.head is not None),
                self.teacher: TapRequest(heads=self.teacher_head is not None)}

    def setup(self, models: Dict[str, ModelInfo]) -> None:
        s, t = models["student"], models[self.teacher]
        check_logit_pair(self, s, t, self.head, self.teacher_head)
        self._feats = resolve_layers(self, s, "student", self.layers, "student")
        if self.pool == "cls" and s.vit and "cls" not in s.prefix_names:
            self.fail(f"pool: cls but student model {s.name} has no cls token (prefix tokens: {s.prefix_names})")
        self.exits = nn.ModuleList(_Exit(f, s.num_classes, self.pool, self.projector, self.hidden) for f in self._feats)
        self.exits.to(s.device)

    def forward(self, outs: Dict[str, TapOutput], batch: Batch) -> Tensor:
        so = outs["student"]
        t = logits_of(outs[self.teacher], self.teacher_head)
        y = target_of(batch)
        total = 0.0
        for ex in self.exits:
            total = total + KF.ofa_loss(ex(so), t, y, self.eps, self.T)
        if self.final:
            total = total + self.final * KF.ofa_loss(logits_of(so, self.head), t, y, self.eps, self.T)
        return total


@register_loss("cit")
class CiT(LossTerm):
    """CiT / Co-advise: each named student head distilled from its own teacher with KL at ``T`` (default 1).

    ``heads``: ``{student_head: teacher_name}``, e.g. ``{conv: cnn, inv: involution}`` -- this one term
    reads several teachers. Per head ``T^2 * KL(softmax(t/T) || softmax(s/T))``, KL summed over classes,
    batch mean (the reference's ``KLDivLoss(reduction='batchmean')``), summed over heads (the reference
    adds CE(cls head) + conv KD + inv KD with weight 1 each: pair with a ``ce`` term on ``cls``).
    Default weight 1.
    """

    needs_teacher = False

    def __init__(self, heads: Dict[str, str], T: float = 1.0):
        super().__init__(teacher=None)
        if not isinstance(heads, dict) or not heads or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in heads.items()):
            raise ValueError(f"heads: expected a mapping {{student_head: teacher_name}}, got {heads!r}")
        if T <= 0:
            raise ValueError(f"T must be > 0, got {T}")
        self.heads, self.T = dict(heads), float(T)

    def requests(self) -> Dict[str, TapRequest]:
        req = {"student": TapRequest(heads=True)}
        for t in self.heads.values():
            req[t] = TapRequest()
        return req

    def setup(self, models: Dict[str, ModelInfo]) -> None:
        s = models["student"]
        teachers = [k for k in models if k != "student"]
        for head, teacher in self.heads.items():
            self.check_head(s, head, "student")
            if teacher not in teachers:
                self.fail(f"heads.{head}: '{teacher}' is not a configured teacher "
                          f"({', '.join(teachers) or 'no teachers configured under distill.teachers'})")
            if models[teacher].num_classes != s.num_classes:
                self.fail(f"teacher '{teacher}' has {models[teacher].num_classes} classes, the student "
                          f"{s.num_classes}")

    def forward(self, outs: Dict[str, TapOutput], batch: Batch) -> Tensor:
        so = outs["student"]
        total = 0.0
        for head, teacher in self.heads.items():
            total = total + KF.kd(so.heads[head].float(), outs[teacher].logits.float(), self.T)
        return total
