"""MiniViT relation distillation terms: ``minivit_attn`` (Q/K/V relations), ``minivit_hidden`` (block outputs).

Both compare token-by-token relation matrices, so widths and head counts may differ but the token
counts must agree (``tokens: all`` = prefix + patch tokens, ``patches`` = patch tokens only).
"""
from __future__ import annotations

from typing import Dict, Optional

from torch import Tensor

from ..taps import TapOutput, TapRequest
from . import functional as KF
from .base import Batch, LossTerm, ModelInfo, register_loss
from .common import as_pairs, check_tokens, check_vit_pairs


class _RelationTerm(LossTerm):
    def __init__(self, pairs, relation_heads: int = 1, tokens: str = "all", teacher: Optional[str] = None):
        super().__init__(teacher=teacher)
        self.pairs = as_pairs(self, pairs)
        if relation_heads < 1:
            raise ValueError(f"relation_heads must be >= 1, got {relation_heads}")
        if tokens not in ("all", "patches"):
            raise ValueError(f"tokens must be 'all' or 'patches', got {tokens!r}")
        self.relation_heads, self.tokens = int(relation_heads), tokens

    def setup(self, models: Dict[str, ModelInfo]) -> None:
        s, t = check_vit_pairs(self, models, self.pairs)
        check_tokens(self, s, t, self.tokens, self.type_name)
        for role, info in (("student", s), (f"teacher '{self.teacher}'", t)):
            if self._needs_divisible() and info.embed_dim % self.relation_heads:
                self.fail(f"relation_heads={self.relation_heads} does not divide the {role} width {info.embed_dim}")

    def _needs_divisible(self) -> bool:
        return True


@register_loss("minivit_attn")
class MiniViTAttn(_RelationTerm):
    """MiniViT self-attention relation distillation on paired blocks' Q/K/V (``minivit_attn_relation``).

    For each (i, j) in ``qkv_pairs`` (default all nine of {q,k,v}^2): softmax(X_i X_j^T / sqrt(D/M)) over
    ``relation_heads`` = M heads, soft cross-entropy student vs teacher (mean over batch, heads, rows),
    averaged over the relation pairs and then over the block ``pairs``. Defaults ``relation_heads=1``;
    reference weight 1 (``--qkv_weight 1``). CE-type: at student == teacher it equals the relation
    entropy (gradient zero), not 0.
    """

    def __init__(self, pairs, relation_heads: int = 1, qkv_pairs=None, tokens: str = "all",
                 teacher: Optional[str] = None):
        super().__init__(pairs, relation_heads, tokens, teacher)
        try:
            KF._parse_pairs(qkv_pairs)
        except ValueError as e:
            raise ValueError(f"qkv_pairs: {e}") from None
        self.qkv_pairs = list(qkv_pairs) if qkv_pairs is not None else None

    def requests(self) -> Dict[str, TapRequest]:
        return {"student": TapRequest(qkv={s for s, _ in self.pairs}),
                self.teacher: TapRequest(qkv={t for _, t in self.pairs})}

    def forward(self, outs: Dict[str, TapOutput], batch: Batch) -> Tensor:
        so, to = outs["student"], outs[self.teacher]
        with_prefix = self.tokens == "all"
        total = 0.0
        for sb, tb in self.pairs:
            qs = tuple(x.float() for x in so.qkv_tokens(sb, prefix=with_prefix))
            qt = tuple(x.float() for x in to.qkv_tokens(tb, prefix=with_prefix))
            total = total + KF.minivit_attn_relation(qs, qt, self.relation_heads, self.qkv_pairs)
        return total / len(self.pairs)


@register_loss("minivit_hidden")
class MiniViTHidden(_RelationTerm):
    """MiniViT hidden-state relation distillation on paired blocks' output tokens (``minivit_hidden_relation``).

    ``mode='softmax'`` (paper): soft CE between softmax(H H^T / sqrt(D/M)) relations (M =
    ``relation_heads``); ``mode='cosine'`` (released Mini-Swin code): MSE of cosine relations times
    ``cosine_scale`` (49). Pairs averaged. Reference weight 0.1 (``--hidden_weight``); default weight 1.
    """

    def __init__(self, pairs, relation_heads: int = 1, mode: str = "softmax", cosine_scale: float = 49.0,
                 tokens: str = "all", teacher: Optional[str] = None):
        super().__init__(pairs, relation_heads, tokens, teacher)
        if mode not in ("softmax", "cosine"):
            raise ValueError(f"mode must be 'softmax' or 'cosine', got {mode!r}")
        self.mode, self.cosine_scale = mode, float(cosine_scale)

    def _needs_divisible(self) -> bool:
        return self.mode == "softmax"

    def requests(self) -> Dict[str, TapRequest]:
        return {"student": TapRequest(tokens={s for s, _ in self.pairs}),
                self.teacher: TapRequest(tokens={t for _, t in self.pairs})}

    def _tokens(self, out: TapOutput, block: int) -> Tensor:
        return out.tokens(block, prefix=self.tokens == "all").float()

    def forward(self, outs: Dict[str, TapOutput], batch: Batch) -> Tensor:
        so, to = outs["student"], outs[self.teacher]
        total = 0.0
        for sb, tb in self.pairs:
            total = total + KF.minivit_hidden_relation(self._tokens(so, sb), self._tokens(to, tb),
                                                       self.relation_heads, self.mode, self.cosine_scale)
        return total / len(self.pairs)
