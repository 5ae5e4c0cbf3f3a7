"""MiniViT weight multiplexing (Zhang et al., "MiniViT: Compressing Vision Transformers with Weight
Multiplexing", CVPR 2022; reference code microsoft/Cream, MiniViT/Mini-DeiT and MiniViT/Mini-Swin).

What is shared and what is not
------------------------------
Consecutive blocks are grouped ``share`` at a time (the last group may be shorter). Inside a group every
block references the SAME ``nn.Linear`` objects for the attention ``qkv`` / ``proj`` (and ``gate`` if any)
and for every linear layer of the MLP (``fc1`` / ``fc2``); those are the multiplexed weights. Each block
keeps its own module *instances* around them, and its own small parameters:

* ``norm1`` / ``norm2`` (and ``ls1`` / ``ls2`` layer-scale, q/k norms, drop-path): per block, as in the
  reference (``RepeatedModuleList`` of norms in Mini-DeiT, ``norm*_list`` in Mini-Swin);
* attention transformation (``attn.head_mix_pre`` / ``attn.head_mix_post``): a ``heads x heads`` linear
  map across heads applied to the attention logits before the softmax and to the probabilities after the
  softmax (Mini-DeiT ``conv_l`` / ``conv_w``: 1x1 conv over the head axis, no bias);
* MLP transformation (``mlp_transform``): a depthwise ``k x k`` conv on the patch grid (prefix tokens pass
  through unchanged) placed after the attention residual and before ``norm2`` / MLP, as Mini-Swin's
  ``local_norm`` + ``local_conv`` (7x7 depthwise, bias). Mini-DeiT's released code does not use it
  (pass ``mlp_transform=False`` for that variant).

Attention order in the explicit path of :class:`MiniAttention` (the taps rely on it)::

    logits = (q * scale) @ k^T  ->  head_mix_pre  ->  (+ mask)  ->  softmax  ->  head_mix_post
           ->  attn_drop(probs)  [called exactly once; its input is what multiplies V]  ->  probs @ v

So the tensor seen by a pre-hook on ``attn_drop`` is the *mixed* probability map (rows need not sum to 1
once ``head_mix_post`` has been trained). A MiniAttention with head transforms never uses SDPA: its
``fused_attn`` starts False and the explicit path is used whatever the flag says.

Deviations from the reference, chosen so that a converted model is lossless at initialisation
---------------------------------------------------------------------------------------------
* ``transform_init='identity'`` (default): head mixes are the identity, the depthwise conv is zero, so a
  conversion with ``share=1`` reproduces the source logits. ``'reference'`` uses the reference inits
  (trunc-normal std .02 head mixes as Mini-DeiT, PyTorch default conv init as Mini-Swin).
* MLP transformation is a pre-norm residual ``x + dwconv(LN(x))`` on the patch tokens. Mini-Swin writes
  ``x = LN(x); x = x + dwconv(x)``, which replaces the residual stream by its normalisation and can never
  be an identity; the parameter count (LN + depthwise conv + bias) is the same.
* Shared weights are initialised from the source ViT (``shared_init='first'``: the first block of each
  group, default; ``'mean'``: the element-wise mean over the group). The reference has no conversion
  routine: Mini-DeiT builds the shared model from scratch (trunc-normal init) and trains it with
  distillation from a teacher; 'first' keeps one pretrained block exact, 'mean' is the usual alternative.
* No iRPE (image relative position encoding) and the cls token is kept (Mini-DeiT drops it and
  average-pools): the model stays a plain timm ViT with the same prefix/pooling as its source.
* Drop-path: each block keeps its own rate (as the reference's per-repeat ``drop_paths``).

Registered: ``minivit_deit_{tiny,small,base}_patch16_224`` (share=2), ``minivit_digits_{small,base}`` and
``minivit_fmnist_small`` (vit_fmnist_small dims, share=2, 7x7 depthwise transform on the 7x7 grid).
"""
from __future__ import annotations

import copy
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import LayerNorm, maybe_add_mask, register_notrace_function, resolve_self_attn_mask, trunc_normal_
from timm.layers.attention import Attention
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import Block, VisionTransformer, checkpoint_filter_fn

from ._common import digits_cfg, fmnist_cfg, imagenet_cfg
from .digits import DIGITS_VIT_ARGS
from .fmnist import FMNIST_VIT_ARGS

__all__ = ['HeadMix', 'LocalConvTransform', 'MiniAttention', 'MiniBlock', 'MiniVisionTransformer',
           'minivit_convert', 'minivit_groups', 'shared_linears']

# leaves for plain torch.fx.symbolic_trace too, as they are in timm's own attention module (timm's tracer
# settings already treat them as leaves): they branch on is_causal / the mask, which a traced root forward
# receives as graph inputs
torch.fx.wrap('resolve_self_attn_mask')
torch.fx.wrap('maybe_add_mask')


class HeadMix(nn.Module):
    """Linear map across the head axis of [B, heads, N, N] maps: out[:, g] = sum_h W[g, h] * x[:, h]."""

    def __init__(self, num_heads: int, init: str = 'identity'):
        super().__init__()
        self.num_heads = num_heads
        self.init_mode = init
        self.weight = nn.Parameter(torch.empty(num_heads, num_heads))
        self.init_weights()

    def init_weights(self) -> None:
        with torch.no_grad():
            if self.init_mode == 'identity':
                self.weight.copy_(torch.eye(self.num_heads))
            else:
                trunc_normal_(self.weight, std=.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum('gh,bhnm->bgnm', self.weight.to(x.dtype), x)

    def extra_repr(self) -> str:
        return f'num_heads={self.num_heads}'


@torch.fx.wrap
@register_notrace_function
def _patch_grid(num_patches: int, grid_size: Tuple[int, int]) -> Tuple[int, int]:
    """(H, W) of ``num_patches`` tokens: the model's own ``grid_size`` (its patch embedding's), checked.

    A leaf for torch.fx (``torch.fx.wrap`` and timm's no-trace registry): the check depends on the token
    count, which is only known when the model runs, so a traced graph calls it instead of baking one in."""
    if grid_size[0] * grid_size[1] == num_patches:
        return grid_size[0], grid_size[1]
    raise RuntimeError(f'LocalConvTransform: {num_patches} patch tokens do not form the model\'s '
                       f'{tuple(grid_size)} patch grid (patch dropout / dynamic input sizes are not supported)')


class LocalConvTransform(nn.Module):
    """MLP transformation: ``patches + dwconv(LN(patches))`` on the patch grid; prefix tokens untouched."""

    def __init__(self, dim: int, num_prefix_tokens: int, grid_size: Tuple[int, int], kernel_size: int = 7,
                 bias: bool = True, init: str = 'identity', norm_layer=LayerNorm):
        super().__init__()
        self.num_prefix_tokens = num_prefix_tokens
        self.grid_size = tuple(grid_size)
        self.init_mode = init
        self.norm = norm_layer(dim)
        self.conv = nn.Conv2d(dim, dim, kernel_size, 1, kernel_size // 2, groups=dim, bias=bias)
        self.init_weights()

    def init_weights(self) -> None:
        if self.init_mode == 'identity':
            nn.init.zeros_(self.conv.weight)
            if self.conv.bias is not None:
                nn.init.zeros_(self.conv.bias)
        else:
            self.conv.reset_parameters()
        self.norm.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        npt = self.num_prefix_tokens
        prefix, patches = x[:, :npt], x[:, npt:]
        B, N, C = patches.shape
        H, W = _patch_grid(N, self.grid_size)
        y = self.norm(patches).transpose(1, 2).reshape(B, C, H, W)
        y = self.conv(y).flatten(2).transpose(1, 2)
        return torch.cat([prefix, patches + y], dim=1)


class MiniAttention(nn.Module):
    """timm-compatible attention whose ``qkv`` / ``proj`` (/ ``gate``) may be shared with other blocks, with
    optional per-block head-mixing transforms around the softmax. Same attribute names as timm's
    ``Attention`` (``qkv``, ``q_norm``, ``k_norm``, ``attn_drop``, ``norm``, ``proj``, ``proj_drop``,
    ``fused_attn``, ``num_heads``, ``head_dim``, ``scale``)."""

    def __init__(self, qkv: nn.Linear, proj: nn.Linear, num_heads: int, head_dim: int, scale: float,
                 q_norm: nn.Module, k_norm: nn.Module, attn_drop: nn.Module, norm: nn.Module,
                 proj_drop: nn.Module, gate: Optional[nn.Linear] = None, head_transform: bool = True,
                 init: str = 'identity', fused_attn: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.attn_dim = num_heads * head_dim
        self.scale = scale
        self.qkv = qkv
        self.q_norm = q_norm
        self.k_norm = k_norm
        self.attn_drop = attn_drop
        self.norm = norm
        self.gate = gate
        self.proj = proj
        self.proj_drop = proj_drop
        if head_transform:
            self.head_mix_pre = HeadMix(num_heads, init)
            self.head_mix_post = HeadMix(num_heads, init)
        else:
            self.head_mix_pre = self.head_mix_post = None
        # the head transforms need the explicit path; SDPA only when there are none
        self.fused_attn = bool(fused_attn) and not head_transform

    @classmethod
    def from_timm(cls, attn: Attention, qkv: nn.Linear, proj: nn.Linear, gate: Optional[nn.Linear] = None,
                  head_transform: bool = True, init: str = 'identity') -> 'MiniAttention':
        """Wrap a timm ``Attention``: its own q/k norms, dropouts and scale norm are kept (moved, not
        copied), the linear layers are the given (shared) ones."""
        return cls(qkv=qkv, proj=proj, num_heads=attn.num_heads, head_dim=attn.head_dim, scale=attn.scale,
                   q_norm=attn.q_norm, k_norm=attn.k_norm, attn_drop=attn.attn_drop,
                   norm=getattr(attn, 'norm', nn.Identity()), proj_drop=attn.proj_drop, gate=gate,
                   head_transform=head_transform, init=init, fused_attn=attn.fused_attn)

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
                is_causal: bool = False) -> torch.Tensor:
        B, N, C = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)

        if self.fused_attn and self.head_mix_pre is None and self.head_mix_post is None:
            x = F.scaled_dot_product_attention(
                q, k, v,
                attn_mask=attn_mask,
                dropout_p=self.attn_drop.p if self.training else 0.,
                is_causal=is_causal,
            )
        else:
            q = q * self.scale
            attn = q @ k.transpose(-2, -1)
            if self.head_mix_pre is not None:
                attn = self.head_mix_pre(attn)
            attn_bias = resolve_self_attn_mask(N, attn, attn_mask, is_causal)
            attn = maybe_add_mask(attn, attn_bias)
            attn = attn.softmax(dim=-1)
            if self.head_mix_post is not None:
                attn = self.head_mix_post(attn)
            attn = self.attn_drop(attn)
            x = attn @ v

        x = x.transpose(1, 2).reshape(B, N, self.attn_dim)
        x = self.norm(x)
        if gate is not None:
            x = x * gate
        x = self.proj(x)
        x = self.proj_drop(x)
        return x


class MiniBlock(nn.Module):
    """Pre-norm transformer block with a MiniViT MLP transformation between attention and MLP.

    ``x = x + dp1(ls1(attn(norm1(x)))); x = mlp_transform(x); x = x + dp2(ls2(mlp(norm2(x))))``
    """

    def __init__(self, norm1: nn.Module, attn: MiniAttention, ls1: nn.Module, drop_path1: nn.Module,
                 mlp_transform: nn.Module, norm2: nn.Module, mlp: nn.Module, ls2: nn.Module,
                 drop_path2: nn.Module):
        super().__init__()
        self.norm1 = norm1
        self.attn = attn
        self.ls1 = ls1
        self.drop_path1 = drop_path1
        self.mlp_transform = mlp_transform
        self.norm2 = norm2
        self.mlp = mlp
        self.ls2 = ls2
        self.drop_path2 = drop_path2

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
                is_causal: bool = False) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal)))
        x = self.mlp_transform(x)
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x


def minivit_groups(depth: int, share: int) -> List[List[int]]:
    """Block indices of each weight-sharing group: consecutive runs of ``share`` (last may be shorter)."""
    assert share >= 1, 'share must be >= 1'
    return [list(range(i, min(i + share, depth))) for i in range(0, depth, share)]


def _linear_children(module: nn.Module) -> List[str]:
    return [n for n, m in module.named_children() if isinstance(m, nn.Linear)]


def _merge_linears(linears: Sequence[nn.Linear], mode: str) -> nn.Linear:
    out = copy.deepcopy(linears[0])
    if mode == 'mean' and len(linears) > 1:
        with torch.no_grad():
            out.weight.copy_(torch.stack([m.weight for m in linears]).mean(0))
            if out.bias is not None:
                out.bias.copy_(torch.stack([m.bias for m in linears]).mean(0))
    elif mode not in ('first', 'mean'):
        raise ValueError(f"shared_init must be 'first' or 'mean', got {mode!r}")
    return out


def _default_kernel(grid_size: Tuple[int, int]) -> int:
    return 7 if min(grid_size) >= 7 else 3


def _multiplex_(
        vit: VisionTransformer,
        share: int = 2,
        attn_transform: bool = True,
        mlp_transform: bool = True,
        mlp_kernel_size: Optional[int] = None,
        shared_init: str = 'first',
        transform_init: str = 'identity',
) -> VisionTransformer:
    """In-place MiniViT conversion of ``vit.blocks`` (see module docstring)."""
    if transform_init not in ('identity', 'reference'):
        raise ValueError(f"transform_init must be 'identity' or 'reference', got {transform_init!r}")
    blocks = list(vit.blocks)
    for i, b in enumerate(blocks):
        if not isinstance(b, (Block, MiniBlock)) or not isinstance(b.attn, (Attention, MiniAttention)):
            raise TypeError(f'minivit_convert: block {i} is {type(b).__name__} with '
                            f'{type(getattr(b, "attn", None)).__name__}; only timm Block/Attention are supported')
        if isinstance(b, MiniBlock):
            raise TypeError('minivit_convert: model is already weight-multiplexed')
    grid = tuple(vit.patch_embed.grid_size)
    kernel = mlp_kernel_size or _default_kernel(grid)
    dim = vit.embed_dim
    new_blocks = []
    for group in minivit_groups(len(blocks), share):
        src = [blocks[i] for i in group]
        qkv = _merge_linears([b.attn.qkv for b in src], shared_init)
        proj = _merge_linears([b.attn.proj for b in src], shared_init)
        gate = None
        if getattr(src[0].attn, 'gate', None) is not None:
            gate = _merge_linears([b.attn.gate for b in src], shared_init)
        mlp_names = _linear_children(src[0].mlp)
        mlp_shared = {n: _merge_linears([getattr(b.mlp, n) for b in src], shared_init) for n in mlp_names}
        for b in src:
            attn = MiniAttention.from_timm(b.attn, qkv=qkv, proj=proj, gate=gate, head_transform=attn_transform,
                                           init=transform_init)
            mlp = b.mlp   # the block keeps its own MLP instance (act, dropouts, norm); only linears are shared
            for n, lin in mlp_shared.items():
                setattr(mlp, n, lin)
            if mlp_transform:
                bias = b.attn.qkv.bias is not None
                mt = LocalConvTransform(dim, vit.num_prefix_tokens, grid, kernel, bias=bias, init=transform_init)
                ref = b.norm1.weight if getattr(b.norm1, 'weight', None) is not None else None
                if ref is not None:
                    mt.to(device=ref.device, dtype=ref.dtype)
            else:
                mt = nn.Identity()
            if attn_transform:
                attn.to(device=qkv.weight.device, dtype=qkv.weight.dtype)
            new_blocks.append(MiniBlock(b.norm1, attn, b.ls1, b.drop_path1, mt, b.norm2, mlp, b.ls2, b.drop_path2))
    for i, nb in enumerate(new_blocks):
        vit.blocks[i] = nb
    vit.minivit_share = share
    vit.minivit_groups = minivit_groups(len(blocks), share)
    return vit


def minivit_convert(
        vit: VisionTransformer,
        share: int = 2,
        transforms: bool = True,
        *,
        attn_transform: Optional[bool] = None,
        mlp_transform: Optional[bool] = None,
        mlp_kernel_size: Optional[int] = None,
        shared_init: str = 'first',
        transform_init: str = 'identity',
        inplace: bool = False,
) -> VisionTransformer:
    """Turn a timm ``VisionTransformer`` (or subclass, e.g. distilled DeiT) into a MiniViT.

    Args:
        vit: source model (timm ``Block`` / ``Attention`` blocks).
        share: number of consecutive blocks sharing one set of qkv/proj/MLP linear weights.
        transforms: enable both weight transformations (attention head mixes, MLP depthwise conv);
            ``attn_transform`` / ``mlp_transform`` override each one.
        mlp_kernel_size: depthwise kernel (default 7 as Mini-Swin when the grid is >= 7, else 3).
        shared_init: 'first' (first block of each group) or 'mean' (mean over the group).
        transform_init: 'identity' (lossless conversion) or 'reference' (MiniViT's random inits).
        inplace: convert ``vit`` itself instead of a deep copy.

    The returned model keeps the source's class and all its methods (forward_features,
    forward_intermediates, heads, ...); it gains ``minivit_share`` and ``minivit_groups``.
    """
    model = vit if inplace else copy.deepcopy(vit)
    return _multiplex_(
        model, share=share,
        attn_transform=transforms if attn_transform is None else attn_transform,
        mlp_transform=transforms if mlp_transform is None else mlp_transform,
        mlp_kernel_size=mlp_kernel_size, shared_init=shared_init, transform_init=transform_init)


def shared_linears(model: nn.Module) -> List[Tuple[List[str], nn.Linear]]:
    """Every ``nn.Linear`` referenced from more than one place: (all its qualified names, module)."""
    seen = {}
    for name, m in model.named_modules(remove_duplicate=False):
        if isinstance(m, nn.Linear):
            seen.setdefault(id(m), ([], m))[0].append(name)
    return [(names, m) for names, m in seen.values() if len(names) > 1]


class MiniVisionTransformer(VisionTransformer):
    """A timm ``VisionTransformer`` built, then weight-multiplexed in place at construction (so that
    ``timm.create_model`` and state-dict round trips give the same structure)."""

    def __init__(self, *args, share: int = 2, attn_transform: bool = True, mlp_transform: bool = True,
                 mlp_kernel_size: Optional[int] = None, shared_init: str = 'first',
                 transform_init: str = 'identity', **kwargs):
        super().__init__(*args, **kwargs)
        _multiplex_(self, share=share, attn_transform=attn_transform, mlp_transform=mlp_transform,
                    mlp_kernel_size=mlp_kernel_size, shared_init=shared_init, transform_init=transform_init)


def _create_minivit(variant: str, pretrained: bool = False, **kwargs) -> MiniVisionTransformer:
    out_indices = kwargs.pop('out_indices', 3)
    return build_model_with_cfg(
        MiniVisionTransformer, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs,
    )


default_cfgs = generate_default_cfgs({
    'minivit_deit_tiny_patch16_224': imagenet_cfg(reduction=16),
    'minivit_deit_small_patch16_224': imagenet_cfg(reduction=16),
    'minivit_deit_base_patch16_224': imagenet_cfg(reduction=16),
    'minivit_digits_small': digits_cfg(reduction=DIGITS_VIT_ARGS['small']['patch_size']),
    'minivit_digits_base': digits_cfg(reduction=DIGITS_VIT_ARGS['base']['patch_size']),
    'minivit_fmnist_small': fmnist_cfg(reduction=FMNIST_VIT_ARGS['small']['patch_size']),
})


@register_model
def minivit_deit_tiny_patch16_224(pretrained: bool = False, **kwargs) -> MiniVisionTransformer:
    """Mini-DeiT-Ti: DeiT-Ti (192, 12 blocks, 3 heads) with share=2 (6 weight groups)."""
    args = dict(patch_size=16, embed_dim=192, depth=12, num_heads=3, share=2)
    return _create_minivit('minivit_deit_tiny_patch16_224', pretrained, **dict(args, **kwargs))


@register_model
def minivit_deit_small_patch16_224(pretrained: bool = False, **kwargs) -> MiniVisionTransformer:
    """Mini-DeiT-S: DeiT-S (384, 12 blocks, 6 heads) with share=2."""
    args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, share=2)
    return _create_minivit('minivit_deit_small_patch16_224', pretrained, **dict(args, **kwargs))


@register_model
def minivit_deit_base_patch16_224(pretrained: bool = False, **kwargs) -> MiniVisionTransformer:
    """Mini-DeiT-B: DeiT-B (768, 12 blocks, 12 heads) with share=2."""
    args = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, share=2)
    return _create_minivit('minivit_deit_base_patch16_224', pretrained, **dict(args, **kwargs))


@register_model
def minivit_digits_small(pretrained: bool = False, **kwargs) -> MiniVisionTransformer:
    """vit_digits_small dims (64, 6 blocks, 4 heads, patch 4) with share=2, 3x3 depthwise transform."""
    args = dict(DIGITS_VIT_ARGS['small'], share=2)
    return _create_minivit('minivit_digits_small', pretrained, **dict(args, **kwargs))


@register_model
def minivit_digits_base(pretrained: bool = False, **kwargs) -> MiniVisionTransformer:
    """vit_digits_base dims (128, 6 blocks, 4 heads, patch 4) with share=2, 3x3 depthwise transform."""
    args = dict(DIGITS_VIT_ARGS['base'], share=2)
    return _create_minivit('minivit_digits_base', pretrained, **dict(args, **kwargs))


@register_model
def minivit_fmnist_small(pretrained: bool = False, **kwargs) -> MiniVisionTransformer:
    """vit_fmnist_small dims (48, 4 blocks, 3 heads, MLP x2, patch 4; 1 x 28 px) with share=2, 7x7 depthwise
    transform (the default kernel on a 7x7 grid)."""
    args = dict(FMNIST_VIT_ARGS['small'], share=2)
    return _create_minivit('minivit_fmnist_small', pretrained, **dict(args, **kwargs))
