"""Feature distillation terms: ``fitnet``, ``vitkd``, ``attn_kl``, ``cwd``.

Layers are addressed per model: a ViT's layers are block indices (negative allowed), a CNN's are
stage strides (``feature_info`` reductions, e.g. 4, 8, 16, 32). All shape reconciliation (widths,
token <-> grid layout, spatial size) happens in :mod:`vitkd.connectors`; the connector parameters
are registered in the term (trained with the student, saved apart from it).
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
from torch import Tensor, nn

from ..connectors import FeatureAligner, HeadMixer, make_connector, resize_tokens, tokens_to_map, map_to_tokens
from ..taps import TapOutput, TapRequest
from . import functional as KF
from .base import Batch, LossTerm, ModelInfo, register_loss
from .common import check_vit, check_tokens, layer_request, resolve_layers, zip_layers, check_vit_pairs


class PairedFeatures(LossTerm):
    """Paired (student layer, teacher layer) features aligned by a :class:`FeatureAligner` each."""

    _arg_names = ("student_layers", "teacher_layers")

    def __init__(self, student_layers, teacher_layers, connector: str = "auto", resize: str = "student",
                 teacher: Optional[str] = None):
        super().__init__(teacher=teacher)
        self.pairs = zip_layers(self, student_layers, teacher_layers, *self._arg_names)
        if resize not in ("student", "teacher"):
            raise ValueError(f"resize must be 'student' (student map resampled to the teacher's size) or "
                             f"'teacher', got {resize!r}")
        if connector not in ("auto", "identity", "none", "linear", "conv1x1", "mlp"):
            raise ValueError(f"connector must be one of auto, identity, none, linear, conv1x1, mlp; got {connector!r}")
        self.connector, self.resize = connector, resize
        self.aligners = nn.ModuleList()
        self._s_feats: List = []
        self._t_feats: List = []

    def _check_models(self, s: ModelInfo, t: ModelInfo) -> None:
        """Subclasses restrict which model kinds they accept."""

    def setup(self, models: Dict[str, ModelInfo]) -> None:
        s, t = models["student"], models[self.teacher]
        self._check_models(s, t)
        self._s_feats = resolve_layers(self, s, "student", [p[0] for p in self.pairs], "student")
        self._t_feats = resolve_layers(self, t, f"teacher '{self.teacher}'", [p[1] for p in self.pairs],
                                       self.teacher)
        self.aligners = nn.ModuleList()
        for fs, ft in zip(self._s_feats, self._t_feats):
            try:
                self.aligners.append(FeatureAligner(fs, ft, self.connector, self.resize))
            except ValueError as e:
                self.fail(f"{fs.describe()} -> {ft.describe()}: {e}")
        device = s.device
        self.aligners.to(device)

    def requests(self) -> Dict[str, TapRequest]:
        # the layer kinds (blocks or stages) are known once setup() has seen the models
        return {"student": layer_request(self._s_feats), self.teacher: layer_request(self._t_feats)}

    def aligned(self, outs: Dict[str, TapOutput]):
        so, to = outs["student"], outs[self.teacher]
        for al in self.aligners:
            yield al(so, to)


@register_loss("fitnet")
class FitNet(PairedFeatures):
    """FitNet hints: student layer(s) -> teacher layer(s), element-mean MSE (``hint_mse``), pairs averaged.

    ``student_layers`` / ``teacher_layers``: an int or a list each (blocks of a ViT, stage strides of a
    CNN), paired one to one. ``connector``: ``auto`` (linear on ViT tokens / 1x1 conv on CNN maps when
    widths differ, identity when equal), ``linear``, ``conv1x1``, ``mlp``, or ``none`` (widths must match).
    Tokens are laid out on the model's own patch grid; spatial sizes are reconciled bilinearly
    (``resize: student`` resamples the student map onto the teacher's size, ``teacher`` the reverse),
    so ViT <-> CNN pairs work. Default weight 1 (OFAKD ``--fitnet-loss-weight 1``; mdistiller CIFAR 100).
    """

    def forward(self, outs: Dict[str, TapOutput], batch: Batch) -> Tensor:
        total = 0.0
        for fs, ft in self.aligned(outs):
            total = total + KF.hint_mse(fs, ft)
        return total / len(self.pairs)


@register_loss("cwd")
class CWD(PairedFeatures):
    """Channel-wise distillation on maps (CNN stages, or ViT tokens laid out on their patch grid).

    Each channel -> softmax over positions at ``tau``; ``tau^2 * KL(teacher || student)`` summed over
    positions, averaged over batch x channels (``functional.cwd``); pairs averaged. A 1x1 conv (or
    linear on tokens) connector is built when channels differ (``connector: auto``); sizes reconciled
    bilinearly as in ``fitnet``. Default ``tau=4`` (TorchDistiller); default weight 1 (mmrazor uses 3-10
    on dense-prediction logits/features).
    """

    def __init__(self, student_layers, teacher_layers, tau: float = 4.0, connector: str = "auto",
                 resize: str = "student", teacher: Optional[str] = None):
        super().__init__(student_layers, teacher_layers, connector, resize, teacher)
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        self.tau = float(tau)

    def forward(self, outs: Dict[str, TapOutput], batch: Batch) -> Tensor:
        total = 0.0
        for fs, ft in self.aligned(outs):
            total = total + KF.cwd(fs, ft, self.tau)
        return total / len(self.pairs)


@register_loss("vitkd")
class ViTKD(LossTerm):
    """ViTKD (Yang et al. 2022): shallow-layer mimicking + deep-layer generation, on patch tokens.

    Mimicking: the student's ``student_blocks`` (default the first two) are mapped by a linear connector
    each (when widths differ) onto the teacher's ``teacher_blocks``; ``vitkd_mimic`` (squared error
    summed, / B) over the stacked layers.
    Generation: the student's deep patch tokens are mapped to the teacher width, a random ``mask_ratio``
    of them (default 0.5) is replaced by a learned mask token, a small generator (conv3x3-ReLU-conv3x3
    on the patch grid) regenerates them and ``vitkd_generation`` (squared error on the masked tokens
    only, summed, / B) compares with the teacher's deep patch tokens. ``deep="final"`` (default, as in
    the reference yzd-v/cls_KD) takes both sides' deep tokens from ``forward_features``, i.e. after the
    backbone's final LayerNorm; ``deep="block"`` takes the raw output of the ``student_deep`` /
    ``teacher_deep`` blocks instead (before the final norm).
    The reference weights are applied INSIDE this term: it returns
    ``alpha * mimic + beta / mask_ratio * generation`` with ``alpha=3e-5``, ``beta=3e-6`` (cls_KD);
    keep the config ``weight`` at 1 to reproduce the reference. A teacher on another patch grid is
    resampled onto the student's grid. The connectors, mask token and generator train with the student.
    """

    world_size_dependent = True
    world_size_reason = "the generation mask is drawn from each rank's random stream"

    def __init__(self, student_blocks=(0, 1), teacher_blocks=(0, 1), student_deep: int = -1, teacher_deep: int = -1,
                 alpha: float = 3e-5, beta: float = 3e-6, mask_ratio: float = 0.5, connector: str = "auto",
                 deep: str = "final", teacher: Optional[str] = None):
        super().__init__(teacher=teacher)
        if deep not in ("final", "block"):
            raise ValueError(f"deep must be 'final' (after the final norm) or 'block', got {deep!r}")
        self.deep = deep
        self.shallow = zip_layers(self, list(student_blocks), list(teacher_blocks), "student_blocks",
                                  "teacher_blocks")
        self.s_deep, self.t_deep = int(student_deep), int(teacher_deep)
        if not 0 < mask_ratio < 1:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        if connector not in ("auto", "linear", "identity", "none"):
            raise ValueError(f"connector must be auto, linear or none, got {connector!r}")
        self.alpha, self.beta, self.mask_ratio, self.connector = float(alpha), float(beta), float(mask_ratio), connector
        self.align_shallow = nn.ModuleList()
        self.align_deep: nn.Module = nn.Identity()
        self.generator: nn.Module = nn.Identity()
        self.mask_token: Optional[nn.Parameter] = None

    def requests(self) -> Dict[str, TapRequest]:
        final = self.deep == "final"
        return {"student": TapRequest(tokens={s for s, _ in self.shallow} | (set() if final else {self.s_deep}),
                                      features=final),
                self.teacher: TapRequest(tokens={t for _, t in self.shallow} | (set() if final else {self.t_deep}),
                                         features=final)}

    def no_weight_decay(self) -> set:
        return {"mask_token"}

    def _deep_tokens(self, out: TapOutput, block: int) -> Tensor:
        return out.final_patches if self.deep == "final" else out.patches[block]

    def setup(self, models: Dict[str, ModelInfo]) -> None:
        s, t = models["student"], models[self.teacher]
        check_vit(self, s, "student")
        check_vit(self, t, f"teacher '{self.teacher}'")
        self.check_blocks(s, [p[0] for p in self.shallow] + [self.s_deep], "student")
        self.check_blocks(t, [p[1] for p in self.shallow] + [self.t_deep], f"teacher '{self.teacher}'")
        ds, dt = int(s.embed_dim), int(t.embed_dim)
        kind = "linear" if self.connector == "linear" else ("identity" if self.connector in ("identity", "none")
                                                             else "auto")
        try:
            self.align_shallow = nn.ModuleList(make_connector(kind, ds, dt) for _ in self.shallow)
            self.align_deep = make_connector(kind, ds, dt)
        except ValueError as e:
            self.fail(f"student width {ds} vs teacher '{self.teacher}' width {dt}: {e}")
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dt))
        self.generator = nn.Sequential(nn.Conv2d(dt, dt, 3, padding=1), nn.ReLU(inplace=True),
                                       nn.Conv2d(dt, dt, 3, padding=1))
        self.to(s.device)

    @staticmethod
    def _on_grid(tokens: Tensor, own_grid, grid) -> Tensor:
        return resize_tokens(tokens.float(), own_grid, grid)

    def forward(self, outs: Dict[str, TapOutput], batch: Batch) -> Tensor:
        so, to = outs["student"], outs[self.teacher]
        grid = so.grid_size
        # shallow mimicking
        xs = torch.stack([al(so.patches[b]).float() for al, (b, _) in zip(self.align_shallow, self.shallow)], dim=1)
        xt = torch.stack([self._on_grid(to.patches[b], to.grid_size, grid) for _, b in self.shallow], dim=1)
        mimic = KF.vitkd_mimic(xs, xt)
        # deep generation
        x = self.align_deep(self._deep_tokens(so, self.s_deep)).float()
        B, N, D = x.shape
        mask = torch.rand(B, N, 1, device=x.device) > 1 - self.mask_ratio       # True = masked
        x = torch.where(mask, self.mask_token.to(x.dtype).expand(B, N, D), x)
        gen = map_to_tokens(self.generator(tokens_to_map(x, grid)))[0]
        ht = self._on_grid(self._deep_tokens(to, self.t_deep), to.grid_size, grid)
        generation = KF.vitkd_generation(gen, ht, mask.squeeze(-1))
        return self.alpha * mimic + self.beta / self.mask_ratio * generation


@register_loss("attn_kl")
class AttnKL(LossTerm):
    """KL(teacher || student) between attention maps of paired blocks (``attention_kl``), pairs averaged.

    ``match``: ``mean`` (average each side's heads first; head counts may differ), ``heads`` (head by
    head; equal head counts required) or ``mix`` (a learned convex mix of the student's heads into the
    teacher's head count, then head by head). ``tokens``: ``all`` (prefix + patch tokens; token counts
    must agree) or ``patches`` (the patch-to-patch block, rows re-normalised; patch grids must agree).
    Reduction: KL summed over keys, mean over batch, (heads) and query rows. Default weight 1.
    """

    def __init__(self, student_blocks, teacher_blocks, match: str = "mean", tokens: str = "all",
                 eps: float = 1e-8, teacher: Optional[str] = None):
        super().__init__(teacher=teacher)
        self.pairs = zip_layers(self, student_blocks, teacher_blocks, "student_blocks", "teacher_blocks")
        if match not in ("mean", "heads", "mix"):
            raise ValueError(f"match must be 'mean', 'heads' or 'mix', got {match!r}")
        if tokens not in ("all", "patches"):
            raise ValueError(f"tokens must be 'all' or 'patches', got {tokens!r}")
        self.match, self.tokens, self.eps = match, tokens, float(eps)
        self.mixers = nn.ModuleList()

    def requests(self) -> Dict[str, TapRequest]:
        return {"student": TapRequest(attn={s for s, _ in self.pairs}),
                self.teacher: TapRequest(attn={t for _, t in self.pairs})}

    def setup(self, models: Dict[str, ModelInfo]) -> None:
        s, t = check_vit_pairs(self, models, self.pairs)
        check_tokens(self, s, t, self.tokens, "attn_kl")
        if self.match == "heads" and s.num_heads != t.num_heads:
            self.fail(f"match: heads needs equal head counts but the student has {s.num_heads} and teacher "
                      f"'{self.teacher}' {t.num_heads}; use match: mean or mix")
        if self.match == "mix":
            self.mixers = nn.ModuleList(HeadMixer(s.num_heads, t.num_heads) for _ in self.pairs)
            self.mixers.to(s.device)

    @staticmethod
    def _renormalised(a: Tensor) -> Tensor:
        return a / a.sum(-1, keepdim=True).clamp_min(1e-12)

    def forward(self, outs: Dict[str, TapOutput], batch: Batch) -> Tensor:
        so, to = outs["student"], outs[self.teacher]
        total = 0.0
        for i, (sb, tb) in enumerate(self.pairs):
            with_prefix = self.tokens == "all"
            a_s, a_t = so.attention(sb, with_prefix).float(), to.attention(tb, with_prefix).float()
            if not with_prefix:   # the patch-to-patch block, rows re-normalised
                a_s, a_t = self._renormalised(a_s), self._renormalised(a_t)
            match = self.match
            if match == "mix":
                a_s, match = self.mixers[i](a_s), "heads"
            total = total + KF.attention_kl(a_s, a_t, match=match, eps=self.eps)
        return total / len(self.pairs)
