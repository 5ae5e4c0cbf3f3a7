"""A timm ViT whose first blocks use ConViT's gated positional self-attention (DearKD's optional stage-1 prior).

DearKD (CVPR 2022) makes the early blocks of its ViT student convolution-like with a locality prior. timm's
ConViT ``GPSA`` is the nearest existing module, so it is reused as it is: :class:`GPSAVisionTransformer` is
timm's ``VisionTransformer`` whose first ``gpsa_blocks`` blocks get a GPSA (``local_init``: heads start as
local, offset-shaped attention, ``locality_strength`` as in ConViT) instead of timm's ``Attention``.

GPSA's relative positions cover patch tokens on a square grid only. In ConViT the class token joins after the
local blocks; here the prefix tokens (``num_prefix_tokens`` from the model's metadata) stay in the sequence
and the GPSA blocks leave them unchanged by attention (their attention update is zero; the MLP still runs):
vitkd's choice, so that taps, heads and checkpoints work as for any timm ViT.

Registered: ``vit_digits_small_gpsa`` (``vit_digits_small`` dims; ``gpsa_blocks`` default 2).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn
from timm.layers import trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.convit import GPSA
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

from ._common import digits_cfg
from .digits import DIGITS_VIT_ARGS

__all__ = ['PrefixPassGPSA', 'GPSAVisionTransformer']


class PrefixPassGPSA(nn.Module):
    """timm's ``GPSA`` over the patch tokens; the ``num_prefix_tokens`` prefix tokens get a zero update.

    Called like timm's ``Attention`` (no ``attn_mask``; ``is_causal`` is ignored: a ViT's tokens all see each other).
    Attention taps refuse these blocks (:mod:`vitkd.taps` needs timm's ``Attention`` attributes); token taps work."""

    def __init__(self, dim: int, num_heads: int, num_prefix_tokens: int, qkv_bias: bool = False,
                 locality_strength: float = 1.0):
        super().__init__()
        self.num_prefix_tokens = int(num_prefix_tokens)
        self.gpsa = GPSA(dim, num_heads=num_heads, qkv_bias=qkv_bias, locality_strength=locality_strength)

    def forward(self, x: Tensor, attn_mask: Optional[Tensor] = None, is_causal: bool = False) -> Tensor:
        if isinstance(attn_mask, Tensor):   # (under torch.fx tracing the arguments are proxies: nothing to check)
            raise ValueError("GPSA blocks take no attention mask")
        prefix, patches = x.split([self.num_prefix_tokens, x.shape[1] - self.num_prefix_tokens], dim=1)
        return torch.cat([torch.zeros_like(prefix), self.gpsa(patches)], dim=1)


class GPSAVisionTransformer(VisionTransformer):
    """timm ``VisionTransformer`` with ConViT ``GPSA`` in its first ``gpsa_blocks`` blocks (see the module)."""

    def __init__(self, *args, gpsa_blocks: int = 2, locality_strength: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        if not 0 <= gpsa_blocks <= len(self.blocks):
            raise ValueError(f"gpsa_blocks: {gpsa_blocks} is outside 0..{len(self.blocks)} (the model's depth)")
        grid = tuple(self.patch_embed.grid_size)
        if gpsa_blocks and grid[0] != grid[1]:
            raise ValueError(f"gpsa_blocks: GPSA needs a square patch grid, got {grid[0]}x{grid[1]}")
        self.gpsa_blocks = int(gpsa_blocks)
        for blk in self.blocks[:gpsa_blocks]:
            old = blk.attn
            dev = old.proj.weight.device
            blk.attn = PrefixPassGPSA(self.embed_dim, old.num_heads, self.num_prefix_tokens,
                                      qkv_bias=old.qkv.bias is not None,
                                      locality_strength=locality_strength).to(dev)
            for m in blk.attn.modules():   # ConViT's init: truncated-normal linears, then the local prior
                if isinstance(m, nn.Linear):
                    trunc_normal_(m.weight, std=.02)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
            blk.attn.gpsa.local_init()


default_cfgs = generate_default_cfgs({'vit_digits_small_gpsa': digits_cfg(reduction=DIGITS_VIT_ARGS['small']['patch_size'])})


@register_model
def vit_digits_small_gpsa(pretrained: bool = False, **kwargs) -> GPSAVisionTransformer:
    """``vit_digits_small`` whose first ``gpsa_blocks`` (default 2) blocks use ConViT's GPSA."""
    out_indices = kwargs.pop('out_indices', 3)
    return build_model_with_cfg(GPSAVisionTransformer, 'vit_digits_small_gpsa', pretrained,
                                pretrained_filter_fn=checkpoint_filter_fn,
                                feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
                                **dict(DIGITS_VIT_ARGS['small'], **kwargs))
