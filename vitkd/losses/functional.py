"""Pure, stateless distillation losses (tensors in, scalar tensor out).

Conventions shared by every function here:

* the *student* tensor comes first, the *teacher* second;
* nothing is detached inside: the caller passes teacher tensors produced under
  ``torch.no_grad()`` (or ``.detach()``-ed); the functions work whether or not the teacher
  requires grad and never create a graph edge that the caller did not ask for;
* the loss weight is **not** applied here. Each docstring states the weight (and the other
  hyper-parameters) that the method's reference implementation uses, so a caller that wants
  the published recipe multiplies by that number;
* every function returns a 0-dim tensor in the dtype of its inputs (float64 works throughout).

Reference implementations the formulas and defaults were checked against (facts only):
Hinton et al. 2015 / mdistiller (KD), facebookresearch/deit ``losses.py`` (DeiT),
megvii-research/mdistiller ``DKD.py`` + ``engine/cfg.py`` (DKD), hunto/image_classification_sota
``dist_kd.py`` and the DIST copies in huawei-noah/Efficient-Computing VanillaKD and Hao840/OFAKD
(DIST), huawei-noah/Efficient-Computing ``Distillation/ManifoldKD/losses.py`` (manifold),
yzd-v/cls_KD ``vitkd.py`` + configs (ViTKD), open-mmlab/mmrazor ``cwd.py`` and
irfanICMLL/TorchDistiller ``CriterionCWD`` (CWD), microsoft/Cream ``MiniViT/Mini-Swin/main.py``
(MiniViT relation losses), Hao840/OFAKD ``distillers/ofa.py`` + ``train.py`` (OFA), open-mmlab/mmrazor
``configs/distill/mmcls/byot`` + ``SelfDistill`` (BYOT).
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["check_logits", 
    "kd", "deit_soft", "deit_hard", "dkd", "dist", "soft_ce",
    "manifold_intra", "manifold_inter", "manifold_random",
    "hint_mse", "vitkd_mimic", "vitkd_generation",
    "attention_kl", "cwd",
    "minivit_attn_relation", "minivit_hidden_relation",
    "ofa_loss", "byot",
]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _check_same_shape(a: Tensor, b: Tensor, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{what}: student shape {tuple(a.shape)} != teacher shape {tuple(b.shape)}")


def check_logits(s: Tensor, t: Tensor, what: str) -> None:
    if s.dim() != 2:
        raise ValueError(f"{what}: expected logits [B, C], got {tuple(s.shape)}")
    _check_same_shape(s, t, what)


def _target_indices(target: Tensor, num_classes: int, what: str) -> Tensor:
    """Class indices [B] from indices [B] or from (soft / one-hot) targets [B, C] via argmax."""
    if target.dim() == 2:
        if target.shape[1] != num_classes:
            raise ValueError(f"{what}: target has {target.shape[1]} classes, logits have {num_classes}")
        return target.argmax(dim=1)
    if target.dim() != 1:
        raise ValueError(f"{what}: target must be [B] indices or [B, C] scores, got {tuple(target.shape)}")
    return target.long()


def _kl_rows(log_p_s: Tensor, log_p_t: Tensor) -> Tensor:
    """sum_j p_t * (log p_t - log p_s) over the last dim, from log-probabilities."""
    return F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True).sum(-1)


def _manifold_prepare(fs: Tensor, ft: Tensor, what: str):
    if fs.dim() != 3 or ft.dim() != 3:
        raise ValueError(f"{what}: expected patch tokens [B, N, C], got {tuple(fs.shape)} and {tuple(ft.shape)}")
    if fs.shape[0] != ft.shape[0]:
        raise ValueError(f"{what}: batch sizes differ ({fs.shape[0]} vs {ft.shape[0]})")
    if fs.shape[1] != ft.shape[1]:
        raise ValueError(f"{what}: {fs.shape[1]} student tokens vs {ft.shape[1]} teacher tokens; bring the teacher "
                         f"onto the student's patch grid first (vitkd.connectors.resize_tokens)")
    return F.normalize(fs, dim=-1), F.normalize(ft, dim=-1)


def _split_relation_heads(x: Tensor, m: int, what: str) -> Tensor:
    """[B, N, D] -> [B, M, N, D/M] (channel c belongs to relation head c // (D/M))."""
    b, n, d = x.shape
    if d % m != 0:
        raise ValueError(f"{what}: width {d} is not divisible by relation_heads={m}")
    return x.reshape(b, n, m, d // m).transpose(1, 2)


def _merge_heads(x: Tensor, what: str) -> Tensor:
    """Per-head tokens [B, heads, N, d] -> [B, N, heads*d]; [B, N, D] passes through."""
    if x.dim() == 4:
        b, h, n, d = x.shape
        return x.transpose(1, 2).reshape(b, n, h * d)
    if x.dim() == 3:
        return x
    raise ValueError(f"{what}: expected [B, heads, N, d] or [B, N, D], got {tuple(x.shape)}")


def _soft_ce_logits(s_logits: Tensor, t_logits: Tensor) -> Tensor:
    """-sum softmax(t) * log_softmax(s) over the last dim, mean over all other dims."""
    return -(F.softmax(t_logits, dim=-1) * F.log_softmax(s_logits, dim=-1)).sum(-1).mean()


# --------------------------------------------------------------------------------------------
# logit losses
# --------------------------------------------------------------------------------------------
def kd(s: Tensor, t: Tensor, T: float = 4.0) -> Tensor:
    """Hinton soft-target KD: ``T^2 * KL(softmax(t/T) || softmax(s/T))``.

    Shapes: ``s``, ``t`` logits [B, C].
    Reduction: KL summed over classes, mean over the batch (``batchmean``), times ``T^2``.
    Defaults: ``T=4`` (mdistiller CIFAR-100 ``CFG.KD.TEMPERATURE``; its ImageNet configs use T=1).
    Reference loss weights: mdistiller CIFAR-100 CE 0.1 / KD 0.9; ImageNet CE 0.5 / KD 0.5.
    """
    check_logits(s, t, "kd")
    log_p_s = F.log_softmax(s / T, dim=-1)
    log_p_t = F.log_softmax(t / T, dim=-1)
    return _kl_rows(log_p_s, log_p_t).mean() * (T * T)


def deit_soft(s_dist: Tensor, t: Tensor, T: float = 1.0, reduction: str = "batchmean") -> Tensor:
    """DeiT soft distillation on the distillation head: ``T^2 * KL(softmax(t/T) || softmax(s/T))``.

    Shapes: ``s_dist`` (distillation-token logits), ``t`` teacher logits, both [B, C].
    Reduction:
      * ``'batchmean'`` (default): KL summed over classes and batch, divided by B, times T^2
        (as ManifoldKD's DeiT-derived loss, and DeiT issue #61's alternative);
      * ``'deit'``: DeiT's original ``F.kl_div(..., reduction='sum') * T*T / s.numel()``, i.e.
        divided by B*C -- exactly ``batchmean / num_classes``. Use it to reproduce DeiT's
        published numbers (the published weight was tuned for this much smaller scale).
    Defaults: ``T=1`` (DeiT ``--distillation-tau 1.0``).
    Reference loss weight: DeiT ``--distillation-alpha 0.5``: total = 0.5*CE(cls head) +
    0.5*distillation loss.
    """
    check_logits(s_dist, t, "deit_soft")
    total = _kl_rows(F.log_softmax(s_dist / T, dim=-1), F.log_softmax(t / T, dim=-1)).sum() * (T * T)
    if reduction == "batchmean":
        return total / s_dist.shape[0]
    if reduction == "deit":
        return total / s_dist.numel()
    raise ValueError(f"deit_soft: reduction must be 'batchmean' or 'deit', got {reduction!r}")


def deit_hard(s_dist: Tensor, t: Tensor) -> Tensor:
    """DeiT hard distillation: cross-entropy of the distillation head against ``t.argmax(-1)``.

    Shapes: ``s_dist``, ``t`` logits [B, C]. Reduction: mean over the batch.
    Defaults: none (no temperature). Reference loss weight: DeiT ``--distillation-alpha 0.5``
    (0.5*CE(cls head, labels) + 0.5*this); DeiT's published distilled models use ``hard``.
    """
    check_logits(s_dist, t, "deit_hard")
    return F.cross_entropy(s_dist, t.argmax(dim=-1))


def dkd(s: Tensor, t: Tensor, target: Tensor, alpha: float = 1.0, beta: float = 8.0,
        T: float = 4.0) -> Tensor:
    """Decoupled KD (Zhao et al., CVPR 2022), as mdistiller's ``dkd_loss``.

    TCKD: KL between the binary (target, non-target) distributions of teacher and student at T.
    NCKD: KL between the distributions over the non-target classes, obtained as in mdistiller by
    subtracting 1000 from the target logit (after dividing by T) before the softmax.
    Shapes: ``s``, ``t`` logits [B, C]; ``target`` class indices [B] (or [B, C] soft/one-hot
    targets, whose argmax is used).
    Reduction: each KL summed over its classes and the batch, divided by B, times T^2;
    total ``alpha*TCKD + beta*NCKD``.
    Defaults: ``alpha=1, beta=8, T=4`` (mdistiller CIFAR-100 ``CFG.DKD``; its ImageNet configs use
    beta=0.5, T=1; cls_KD's DeiT configs use alpha=1, beta=0.5, T=1).
    Reference loss weight: 1.0 on top of CE weight 1.0, linearly warmed up over the first 20
    epochs (``min(epoch / 20, 1)``, mdistiller ``CFG.DKD.WARMUP``); the warm-up is the caller's.
    """
    check_logits(s, t, "dkd")
    idx = _target_indices(target, s.shape[1], "dkd")
    gt = F.one_hot(idx, s.shape[1]).to(dtype=torch.bool)
    zs, zt = s / T, t / T

    def binary_log_probs(z: Tensor) -> Tensor:
        # log p(target), log p(non-target) computed from logsumexp (stable version of
        # log(cat_mask(softmax(z)))).
        lse_all = torch.logsumexp(z, dim=1, keepdim=True)
        z_gt = z.gather(1, idx[:, None])
        lse_other = torch.logsumexp(z.masked_fill(gt, float("-inf")), dim=1, keepdim=True)
        return torch.cat([z_gt - lse_all, lse_other - lse_all], dim=1)

    b = s.shape[0]
    tckd = _kl_rows(binary_log_probs(zs), binary_log_probs(zt)).sum() / b
    mask = 1000.0 * gt.to(zs.dtype)
    nckd = _kl_rows(F.log_softmax(zs - mask, dim=1), F.log_softmax(zt - mask, dim=1)).sum() / b
    return (alpha * tckd + beta * nckd) * (T * T)


def _pearson_rows(a: Tensor, b: Tensor, eps: float) -> Tensor:
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist(s: Tensor, t: Tensor, beta: float = 1.0, gamma: float = 1.0, T: float = 1.0,
         eps: float = 1e-8) -> Tensor:
    """DIST (Huang et al., NeurIPS 2022): relation matching by Pearson correlation.

    ``p = softmax(s/T)``, ``q = softmax(t/T)`` (rows over classes);
    inter-class = 1 - mean over samples of Pearson(p_i, q_i) across classes;
    intra-class = 1 - mean over classes of Pearson(p[:, c], q[:, c]) across the batch.
    Returns ``T^2 * (beta*inter + gamma*intra)`` -- the T^2 factor is in the reference
    (hunto/image_classification_sota DIST with ``tau``; identical copies in
    Efficient-Computing VanillaKD and OFAKD). Pearson uses the reference's
    ``cov / (|a||b| + eps)`` with ``eps=1e-8``.
    Shapes: ``s``, ``t`` logits [B, C] (B >= 2 for the intra term).
    Defaults: ``beta=1, gamma=1, T=1`` (reference class defaults; OFAKD ``--dist-*`` defaults).
    Reference loss weight: 1.0 in the reference code defaults (``--kd-loss-weight 1``); the DIST
    paper's ImageNet recipes may scale it (e.g. 2.0) -- check the recipe being reproduced.
    """
    check_logits(s, t, "dist")
    p_s = F.softmax(s / T, dim=1)
    p_t = F.softmax(t / T, dim=1)
    inter = 1.0 - _pearson_rows(p_s, p_t, eps).mean()
    intra = 1.0 - _pearson_rows(p_s.t(), p_t.t(), eps).mean()
    return (T * T) * (beta * inter + gamma * intra)


def soft_ce(s: Tensor, t: Tensor, T: float = 1.0) -> Tensor:
    """Soft-target cross-entropy: ``-sum softmax(t/T) * log_softmax(s/T)`` over the last dim.

    Shapes: any ``[..., C]`` (same for both). Reduction: summed over the last dim, mean over all
    leading dims (the batch for logits [B, C]). No ``T^2`` factor (as MiniViT's
    ``soft_cross_entropy(outputs/T, teacher/T)`` and timm's ``SoftTargetCrossEntropy`` used by
    TinyViT). Equals KL(teacher || student) + H(teacher), so at student == teacher it equals the
    teacher entropy and its gradient w.r.t. the student logits is zero.
    Defaults: ``T=1`` (MiniViT ``DISTILL.TEMPERATURE``, TinyViT). Reference loss weight: Mini-Swin
    uses ``(1 - alpha)`` with ``--alpha 0.0``, i.e. weight 1.0 and no ground-truth CE.
    """
    _check_same_shape(s, t, "soft_ce")
    return _soft_ce_logits(s / T, t / T)


def ofa_loss(s: Tensor, t: Tensor, target: Tensor, eps: float = 1.0, T: float = 1.0) -> Tensor:
    """OFA-KD loss (Hao et al., NeurIPS 2023), as OFAKD ``distillers/ofa.py``.

    ``p_t = softmax(t/T)``, ``y = one_hot(target)``;
    ``loss_i = -sum_c ((p_t + y)^eps - y) * log_softmax(s/T)``; mean over the batch.
    No ``T^2`` factor (the reference has none). With ``eps=1`` this is the soft CE of the student
    against the teacher probabilities (``soft_ce``).
    Shapes: ``s``, ``t`` logits [B, C]; ``target`` indices [B] or [B, C] (mixup / smoothed
    targets: the argmax is one-hot encoded, as the reference does).
    Defaults: ``eps=1, T=1`` (OFAKD ``--ofa-eps 1``, ``--ofa-temperature 1``; its published recipes
    tune eps per pair, e.g. 1.5 for some CNN students).
    Reference loss weights: ``--kd-loss-weight 1`` on the final logits, ``--ofa-loss-weight 1``
    summed over the intermediate-stage branches, ``--gt-loss-weight 1``.
    """
    check_logits(s, t, "ofa_loss")
    idx = _target_indices(target, s.shape[1], "ofa_loss")
    y = F.one_hot(idx, s.shape[1]).to(s.dtype)
    p_t = F.softmax(t / T, dim=1)
    weight = (p_t + y) ** eps - y
    return -(weight * F.log_softmax(s / T, dim=1)).sum(dim=1).mean()


# --------------------------------------------------------------------------------------------
# manifold distillation (Hao et al., NeurIPS 2022)
# --------------------------------------------------------------------------------------------
def manifold_intra(fs: Tensor, ft: Tensor) -> Tensor:
    """Manifold KD, intra-image (patch-level) relation: ``MSE(F_s F_s^T, F_t F_t^T)`` per image.

    ``fs`` [B, N, Cs], ``ft`` [B, N, Ct] patch tokens on the same patch grid (prefix tokens stripped by
    the caller; a teacher on another grid is resampled by the caller with
    :func:`vitkd.connectors.resize_tokens`); widths may differ. Each token is L2-normalised over channels;
    relation [B, N, N].
    Reduction: mean of the squared differences over all B*N*N elements.
    Reference (Efficient-Computing ManifoldKD ``layer_mf_loss``, its ``loss_mf_patch``) weight:
    ``--w-patch 4`` times ``--distillation-beta 1``, averaged over the distilled layer pairs
    (``--s-id 0 1 2 3 8 9 10 11``).
    """
    fs, ft = _manifold_prepare(fs, ft, "manifold_intra")
    m_s = fs @ fs.transpose(1, 2)
    m_t = ft @ ft.transpose(1, 2)
    return (m_t - m_s).pow(2).mean()


def manifold_inter(fs: Tensor, ft: Tensor) -> Tensor:
    """Manifold KD, inter-image relation: per patch position, the [B, B] relation across the batch.

    Same inputs, normalisation and grid handling as :func:`manifold_intra`; relation [N, B, B].
    Reduction: mean of the squared differences over all N*B*B elements.
    Reference (ManifoldKD ``loss_mf_sample``) weight: ``--w-sample 0.1`` times
    ``--distillation-beta 1``, averaged over the distilled layer pairs.
    """
    fs, ft = _manifold_prepare(fs, ft, "manifold_inter")
    fs, ft = fs.transpose(0, 1), ft.transpose(0, 1)  # [N, B, C]
    m_s = fs @ fs.transpose(1, 2)
    m_t = ft @ ft.transpose(1, 2)
    return (m_t - m_s).pow(2).mean()


def manifold_random(fs: Tensor, ft: Tensor, k: int = 192, generator: Optional[torch.Generator] = None) -> Tensor:
    """Manifold KD, randomly sampled relation: K tokens drawn from all B*N, relation [K, K].

    The same K indices (``torch.randperm(B*N, generator=generator)[:k]``, drawn on the
    generator's device, CPU by default) select student and teacher tokens; if B*N < k all
    tokens are used. Same normalisation and grid handling as :func:`manifold_intra`.
    Reduction: mean of the squared differences over the K*K elements.
    Defaults: ``k=192`` (ManifoldKD ``--K 192``).
    Reference (ManifoldKD ``loss_mf_rand``) weight: ``--w-rand 0.2`` times
    ``--distillation-beta 1``, averaged over the distilled layer pairs.
    """
    fs, ft = _manifold_prepare(fs, ft, "manifold_random")
    b, n = fs.shape[:2]
    gen_device = generator.device if generator is not None else torch.device("cpu")
    idx = torch.randperm(b * n, generator=generator, device=gen_device)[:k].to(fs.device)
    f_s = fs.reshape(b * n, -1)[idx]
    f_t = ft.reshape(b * n, -1)[idx]
    m_s = f_s @ f_s.t()
    m_t = f_t @ f_t.t()
    return (m_t - m_s).pow(2).mean()


# --------------------------------------------------------------------------------------------
# feature mimicking
# --------------------------------------------------------------------------------------------
def hint_mse(fs: Tensor, ft: Tensor) -> Tensor:
    """FitNet hint loss: element-mean MSE between (connector-projected) student and teacher features.

    Shapes: identical (the caller applies the connector). Reduction: mean over all elements.
    Defaults: none. Reference loss weights: mdistiller ``CFG.FITNET.LOSS.FEAT_WEIGHT = 100``
    (CIFAR, CE 1.0); OFAKD ``--fitnet-loss-weight 1``.
    """
    _check_same_shape(fs, ft, "hint_mse")
    return F.mse_loss(fs, ft, reduction="mean")


def vitkd_mimic(fs: Tensor, ft: Tensor) -> Tensor:
    """ViTKD shallow-layer mimicking (Yang et al. 2022): ``sum((fs - ft)^2) / B``.

    Shapes: identical, batch first (e.g. [B, L, N, D] for the L shallow layers or [B, N, D]);
    the per-layer linear alignment is the caller's. Reduction: squared error summed over all
    elements, divided by the batch size (cls_KD ``MSELoss(reduction='sum') / B``).
    Reference loss weight: ``alpha_vitkd = 3e-5`` (cls_KD ``ViTKDLoss`` default and DeiT configs,
    applied to the first two student/teacher layers).
    """
    _check_same_shape(fs, ft, "vitkd_mimic")
    return (fs - ft).pow(2).sum() / fs.shape[0]


def vitkd_generation(fs_gen: Tensor, ft: Tensor, mask: Tensor) -> Tensor:
    """ViTKD deep-layer generation: squared error on the masked tokens only, summed, divided by B.

    ``fs_gen`` [B, N, D]: the generator's reconstruction of the teacher's last-layer tokens (the
    caller aligns, masks with a learnable mask token and runs the conv generator); ``ft`` [B, N, D];
    ``mask`` [B, N], bool or 0/1, 1 = masked (the only positions that count).
    Reduction: ``sum(((fs_gen - ft) * mask)^2) / B`` (cls_KD ``MSELoss(reduction='sum')`` on
    ``x*mask`` vs ``t*mask``, divided by B).
    Reference loss weight: cls_KD multiplies by ``beta_vitkd / lambda_vitkd`` with
    ``beta_vitkd = 3e-6`` and mask ratio ``lambda_vitkd = 0.5``, i.e. an effective weight of 6e-6;
    the division by the mask ratio is NOT done here.
    """
    _check_same_shape(fs_gen, ft, "vitkd_generation")
    if mask.shape != fs_gen.shape[:2]:
        raise ValueError(f"vitkd_generation: mask shape {tuple(mask.shape)} != tokens {tuple(fs_gen.shape[:2])}")
    m = mask.to(fs_gen.dtype).unsqueeze(-1)
    return ((fs_gen - ft) * m).pow(2).sum() / fs_gen.shape[0]


# --------------------------------------------------------------------------------------------
# attention / map distributions
# --------------------------------------------------------------------------------------------
def attention_kl(attn_s: Tensor, attn_t: Tensor, match: str = "mean", eps: float = 1e-8) -> Tensor:
    """KL(teacher || student) between attention probability rows.

    ``attn_s`` [B, Hs, N, N], ``attn_t`` [B, Ht, N, N] (rows already softmax-normalised).
    ``match='mean'``: average the heads of each first (head counts may differ) -> [B, N, N];
    ``match='heads'``: requires Hs == Ht, compares head by head.
    Per row ``sum_j a_t * (log max(a_t, eps) - log max(a_s, eps))``.
    Reduction: mean over batch, (heads) and query rows. Defaults: ``eps=1e-8`` clamp for the logs.
    Reference loss weight: 1.0 (generic attention-transfer term; MiniLM-style, no temperature).
    """
    if attn_s.dim() != 4 or attn_t.dim() != 4:
        raise ValueError(f"attention_kl: expected [B, H, N, N], got {tuple(attn_s.shape)} and {tuple(attn_t.shape)}")
    if attn_s.shape[0] != attn_t.shape[0] or attn_s.shape[2:] != attn_t.shape[2:]:
        raise ValueError(f"attention_kl: batch/token shapes differ: {tuple(attn_s.shape)} vs {tuple(attn_t.shape)}")
    if match == "mean":
        attn_s, attn_t = attn_s.mean(dim=1), attn_t.mean(dim=1)
    elif match == "heads":
        if attn_s.shape[1] != attn_t.shape[1]:
            raise ValueError(f"attention_kl(match='heads'): head counts differ "
                             f"({attn_s.shape[1]} vs {attn_t.shape[1]}); use match='mean'")
    else:
        raise ValueError(f"attention_kl: match must be 'mean' or 'heads', got {match!r}")
    kl = attn_t * (attn_t.clamp_min(eps).log() - attn_s.clamp_min(eps).log())
    return kl.sum(-1).mean()


def cwd(fs: Tensor, ft: Tensor, tau: float = 4.0) -> Tensor:
    """Channel-wise distillation (Shu et al., ICCV 2021) on maps [B, C, H, W].

    Each channel is turned into a distribution over its H*W positions by ``softmax(x / tau)``;
    ``KL(teacher || student)`` is summed over positions, summed over channels and batch and
    divided by B*C, times ``tau^2`` (mmrazor ``ChannelWiseDivergence``, TorchDistiller
    ``CriterionCWD`` with ``norm_type='channel', divergence='kl'``).
    Shapes: identical (align channels with a connector first).
    Defaults: ``tau=4`` (TorchDistiller ``CriterionCWD`` default temperature; mmrazor's class
    default and its segmentation logit configs use tau=1).
    Reference loss weights: mmrazor uses 3 (PSPNet logits, tau=1) and 5 on segmentation logits,
    10 on detection FPN features.
    """
    if fs.dim() != 4:
        raise ValueError(f"cwd: expected maps [B, C, H, W], got {tuple(fs.shape)}")
    _check_same_shape(fs, ft, "cwd")
    b, c = fs.shape[:2]
    log_p_s = F.log_softmax(fs.reshape(b * c, -1) / tau, dim=1)
    log_p_t = F.log_softmax(ft.reshape(b * c, -1) / tau, dim=1)
    return _kl_rows(log_p_s, log_p_t).sum() * (tau * tau) / (b * c)


# --------------------------------------------------------------------------------------------
# MiniViT relation distillation (Zhang et al., CVPR 2022)
# --------------------------------------------------------------------------------------------
_QKV = {"q": 0, "k": 1, "v": 2}
_ALL_PAIRS = tuple(a + b for a in "qkv" for b in "qkv")


def _parse_pairs(pairs: Optional[Iterable[Union[str, Tuple[int, int]]]]) -> Sequence[Tuple[int, int]]:
    if pairs is None:
        pairs = _ALL_PAIRS
    out = []
    for p in pairs:
        if isinstance(p, str):
            if len(p) != 2 or any(ch not in _QKV for ch in p.lower()):
                raise ValueError(f"minivit_attn_relation: bad pair {p!r}; use e.g. 'qk', 'vv'")
            out.append((_QKV[p[0].lower()], _QKV[p[1].lower()]))
        else:
            i, j = p
            if i not in (0, 1, 2) or j not in (0, 1, 2):
                raise ValueError(f"minivit_attn_relation: bad pair {p!r}; indices are 0=q, 1=k, 2=v")
            out.append((int(i), int(j)))
    if not out:
        raise ValueError("minivit_attn_relation: no relation pairs given")
    return out


def minivit_attn_relation(qkv_s: Sequence[Tensor], qkv_t: Sequence[Tensor], relation_heads: int = 1,
                          pairs: Optional[Iterable[Union[str, Tuple[int, int]]]] = None) -> Tensor:
    """MiniViT self-attention relation distillation (MiniLMv2-style, as Mini-Swin ``cal_relation_loss``).

    ``qkv_s`` / ``qkv_t``: tuples (q, k, v), each [B, heads, N, d] (as the taps return, q/k before
    the attention ``scale``) or already merged [B, N, D]. Heads are concatenated back to
    [B, N, D] and split into ``M = relation_heads`` relation heads of width D/M (student and
    teacher may have different D and head counts, but share M and N). For each pair (i, j):
    ``R_ij = softmax(X_i X_j^T / sqrt(D/M))`` [B, M, N, N]; the loss is the soft cross-entropy
    ``-sum R^t_ij log R^s_ij`` over the last dim, mean over B, M and the N query rows, then
    averaged over the pairs.
    Defaults: ``relation_heads=1`` (Mini-Swin ``--ar`` default, not overridden in its published
    commands), ``pairs`` = all 9 of {q,k,v} x {q,k,v} (the reference loops over all, divides by 9).
    Reference loss weight: ``--qkv_weight 1.0``, averaged over the distilled layers
    (``--student_layer_list 11_9_7_5_3_1``).
    CE-type: at student == teacher it equals the relations' mean entropy, with zero gradient.
    """
    if len(qkv_s) != 3 or len(qkv_t) != 3:
        raise ValueError("minivit_attn_relation: qkv_s and qkv_t must be (q, k, v) tuples")
    xs = [_merge_heads(x, "minivit_attn_relation") for x in qkv_s]
    xt = [_merge_heads(x, "minivit_attn_relation") for x in qkv_t]
    if xs[0].shape[:2] != xt[0].shape[:2]:
        raise ValueError(f"minivit_attn_relation: batch/token counts differ: {tuple(xs[0].shape[:2])} "
                         f"vs {tuple(xt[0].shape[:2])}")
    xs = [_split_relation_heads(x, relation_heads, "minivit_attn_relation (student)") for x in xs]
    xt = [_split_relation_heads(x, relation_heads, "minivit_attn_relation (teacher)") for x in xt]
    sc_s = xs[0].shape[-1] ** -0.5
    sc_t = xt[0].shape[-1] ** -0.5
    pair_list = _parse_pairs(pairs)
    total = 0.0
    for i, j in pair_list:
        r_s = (xs[i] @ xs[j].transpose(-1, -2)) * sc_s
        r_t = (xt[i] @ xt[j].transpose(-1, -2)) * sc_t
        total = total + _soft_ce_logits(r_s, r_t)
    return total / len(pair_list)


def minivit_hidden_relation(hs: Tensor, ht: Tensor, relation_heads: int = 1, mode: str = "softmax",
                            cosine_scale: float = 49.0) -> Tensor:
    """MiniViT hidden-state relation distillation on block output tokens [B, N, Ds] / [B, N, Dt].

    ``mode='softmax'`` (default, the paper's formulation): split the tokens into
    ``M = relation_heads`` heads of width d_r = D/M, ``R = softmax(H_m H_m^T / sqrt(d_r))``
    [B, M, N, N], soft cross-entropy of the student relation against the teacher's, summed over
    the last dim, mean over B, M and rows. CE-type: at equality it is the relation entropy and
    its gradient is zero.
    ``mode='cosine'``: what the released Mini-Swin code runs with ``--hidden_relation``:
    tokens L2-normalised, cosine relation ``H H^T`` [B, N, N], element-mean squared difference
    times ``cosine_scale`` (49 = its 7x7 window area); ``relation_heads`` is ignored.
    Widths may differ; N must match.
    Defaults: ``relation_heads=1``. Reference loss weight: Mini-Swin ``--hidden_weight 0.1``
    (with ``--hidden_relation``), averaged over the distilled layers.
    """
    if hs.dim() != 3 or ht.dim() != 3:
        raise ValueError(f"minivit_hidden_relation: expected [B, N, D], got {tuple(hs.shape)} and {tuple(ht.shape)}")
    if hs.shape[:2] != ht.shape[:2]:
        raise ValueError(f"minivit_hidden_relation: batch/token counts differ: {tuple(hs.shape[:2])} "
                         f"vs {tuple(ht.shape[:2])}")
    if mode == "softmax":
        xs = _split_relation_heads(hs, relation_heads, "minivit_hidden_relation (student)")
        xt = _split_relation_heads(ht, relation_heads, "minivit_hidden_relation (teacher)")
        r_s = (xs @ xs.transpose(-1, -2)) * xs.shape[-1] ** -0.5
        r_t = (xt @ xt.transpose(-1, -2)) * xt.shape[-1] ** -0.5
        return _soft_ce_logits(r_s, r_t)
    if mode == "cosine":
        ns, nt = F.normalize(hs, dim=-1), F.normalize(ht, dim=-1)
        r_s = ns @ ns.transpose(-1, -2)
        r_t = nt @ nt.transpose(-1, -2)
        return (r_s - r_t).pow(2).mean() * cosine_scale
    raise ValueError(f"minivit_hidden_relation: mode must be 'softmax' or 'cosine', got {mode!r}")


# --------------------------------------------------------------------------------------------
# self distillation
# --------------------------------------------------------------------------------------------
def byot(s_logits: Sequence[Tensor], s_feats: Sequence[Tensor], t_logits: Tensor, t_feats: Tensor, target: Tensor,
         T: float = 3.0, ce: float = 0.7, kl: float = 0.3, feature: float = 0.03,
         label_smoothing: float = 0.0) -> Tensor:
    """Be Your Own Teacher (Zhang et al., ICCV 2019): the shallow classifiers learn from the labels, from the
    deepest classifier's softened prediction and from its features:

    ``sum_k [ce * CE(z_k, y) + kl * T^2 * KL(softmax(z_D/T) || softmax(z_k/T)) + feature * ||f_k - f_D||^2 / B]``

    Shapes: ``s_logits`` K shallow classifiers' logits [B, C] each, ``s_feats`` their features [B, D] each;
    ``t_logits`` [B, C] and ``t_feats`` [B, D] the deepest classifier's (pass them detached: the deepest is the
    teacher of the shallow ones, its own CE is a separate term). ``target``: class indices [B] (CE with
    ``label_smoothing``) or a label distribution [B, C] (soft-target CE, mixup).
    Reduction: CE and KL batch means (KL summed over classes); the hint is the mean squared error over the batch
    and the feature's D elements (``||f_k - f_D||^2 / (B * D)``); summed over the K sections, not averaged.
    Defaults (mmrazor's BYOT configs): ``T=3``, CE 0.7, soft KL 0.3, feature 0.03 (BYOT's lambda).
    Why per element, not mmrazor's sum over the feature / B: in a ViT the deepest features are the same network's
    final token, so a constant representation satisfies the hint exactly; summed over D (a width's worth of terms)
    the hint outweighs the deepest classifier's CE and training finds that collapse: measured on digits
    (``configs/compare/digits_online.yaml``, vit_digits_small, blocks 1 and 3), the summed hint left the deployed
    classifier at chance (CE 2.25 after 300 epochs, 14.3% test over 5 seeds) where the term without a hint gave 88.25
    (seed 0). Per element, the hint's scale is the CE's whatever the width. Reference loss weight of the whole term:
    1, beside the deepest classifier's CE at 1.
    """
    s_logits, s_feats = list(s_logits), list(s_feats)
    if not s_logits or len(s_logits) != len(s_feats):
        raise ValueError(f"byot: {len(s_logits)} shallow classifiers' logits but {len(s_feats)} features; "
                         f"one of each per section, at least one section")
    if T <= 0:
        raise ValueError(f"byot: T must be > 0, got {T}")
    log_p_t = F.log_softmax(t_logits / T, dim=-1)
    total = t_logits.new_zeros(())
    for z, f in zip(s_logits, s_feats):
        check_logits(z, t_logits, "byot")
        _check_same_shape(f, t_feats, "byot features")
        if target.dim() == 2:
            hard = -(target * F.log_softmax(z, dim=-1)).sum(-1).mean()
        else:
            hard = F.cross_entropy(z, target.long(), label_smoothing=label_smoothing)
        soft = _kl_rows(F.log_softmax(z / T, dim=-1), log_p_t).mean() * (T * T)
        hint = (f - t_feats).pow(2).mean()
        total = total + ce * hard + kl * soft + feature * hint
    return total
