"""Self distillation inside one model: ``byot`` (Be Your Own Teacher, Zhang et al., ICCV 2019).

The deepest classifier (the model's own head) teaches auxiliary classifiers on chosen intermediate blocks. The
auxiliary classifiers are the term's own parameters (connectors): they train with the student and are saved apart
from it (:meth:`vitkd.distiller.Distiller.connector_state_dict`), so the exported student is exactly its timm
architecture, and only the deepest classifier is deployed. A loss term alone (no teacher, no stage, no config key of
its own), so it lives here beside the other terms rather than under :mod:`vitkd.methods`.
"""
from __future__ import annotations

from typing import Dict, Optional

from torch import Tensor, nn

from ..taps import TapOutput, TapRequest
from . import functional as KF
from .base import Batch, LossTerm, ModelInfo, register_loss
from .common import as_int_list, check_vit, target_of


class AuxClassifier(nn.Module):
    """A copy of a ViT's own head on an intermediate block's token: LayerNorm (the final norm's place) -> its
    features, then a linear classifier -> its logits."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, token: Tensor):
        f = self.norm(token.float())
        return f, self.fc(f)


@register_loss("byot")
class BYOT(LossTerm):
    """BYOT for ViTs: an auxiliary classifier (:class:`AuxClassifier`) on the ``cls`` token (``token: cls``) or the
    mean patch token (``token: pooled``) of each of ``blocks`` (intermediate blocks; negatives allowed, the last
    block is the deepest classifier's own), trained by ``functional.byot``: CE on the labels (``ce``, 0.7), ``T^2 *
    KL`` towards the deepest classifier's prediction at ``T`` (``kl``, 0.3, T = 3) and the mean squared distance of its
    features to the deepest features (``feature``, 0.03), summed over the blocks. The deepest classifier is the
    model's logits (timm's forward) and its features the final normed token (``forward_features``' cls token, or
    the mean of its patch tokens), both detached: they teach and are not taught; their own CE is a separate ``ce``
    term. Gradients reach the auxiliary classifiers and the student's blocks up to each tapped block. Defaults:
    mmrazor's BYOT configs (``SelfDistill``); weight 1, beside ``{type: ce}``. ``label_smoothing`` of the shallow
    CE: default ``train.label_smoothing``.
    """

    needs_teacher = False

    def __init__(self, blocks, T: float = 3.0, ce: float = 0.7, kl: float = 0.3, feature: float = 0.03,
                 token: str = "cls", label_smoothing: Optional[float] = None):
        super().__init__(teacher=None)
        self.blocks = as_int_list(self, blocks, "blocks")
        if len(set(self.blocks)) != len(self.blocks):
            raise ValueError(f"blocks: {self.blocks} names a block twice")
        if token not in ("cls", "pooled"):
            raise ValueError(f"token must be 'cls' (the cls token) or 'pooled' (mean patch token), got {token!r}")
        if T <= 0:
            raise ValueError(f"T must be > 0, got {T}")
        for k, v in (("ce", ce), ("kl", kl), ("feature", feature)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"{k} must be a number >= 0, got {v!r}")
        self.T, self.ce, self.kl, self.feature, self.token = float(T), float(ce), float(kl), float(feature), token
        self.label_smoothing = label_smoothing
        self.heads = nn.ModuleList()

    def requests(self) -> Dict[str, TapRequest]:
        return {"student": TapRequest(tokens=set(self.blocks), features=True)}

    def setup(self, models: Dict[str, ModelInfo]) -> None:
        s = models["student"]
        check_vit(self, s, "student")
        self.check_blocks(s, self.blocks, "student")
        last = [b for b in self.blocks if b % s.depth == s.depth - 1]
        if last:
            self.fail(f"blocks: {last[0]} is the last block of {s.name}, whose classifier is the deepest (the "
                      f"model's own head); name intermediate blocks (0..{s.depth - 2})")
        if len({b % s.depth for b in self.blocks}) != len(self.blocks):
            self.fail(f"blocks: {self.blocks} names a block of {s.name} twice")
        if self.token == "cls" and "cls" not in s.prefix_names:
            self.fail(f"token: cls, but {s.name} has no cls token (prefix tokens: {s.prefix_names or 'none'}); "
                      f"use token: pooled")
        self.heads = nn.ModuleList(AuxClassifier(int(s.embed_dim), int(s.num_classes)) for _ in self.blocks)
        self.heads.to(s.device)

    def _token(self, prefix: dict, patches: Tensor) -> Tensor:
        return prefix["cls"] if self.token == "cls" else patches.mean(1)

    def forward(self, outs: Dict[str, TapOutput], batch: Batch) -> Tensor:
        out = outs["student"]
        feats, logits = [], []
        for head, b in zip(self.heads, self.blocks):
            f, z = head(self._token(out.prefix[b], out.patches[b]))
            feats.append(f)
            logits.append(z)
        deep_f = self._token(out.final_prefix, out.final_patches).detach().float()
        deep_z = out.logits.detach().float()
        return KF.byot(logits, feats, deep_z, deep_f, target_of(batch), self.T, self.ce, self.kl, self.feature,
                       self.label_smoothing or 0.0)
