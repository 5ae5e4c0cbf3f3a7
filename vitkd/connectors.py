"""Connectors: the only place where student and teacher shapes are reconciled.

A connector is a small trainable module a loss term owns (so its parameters train with the student,
are saved by ``Distiller.connector_state_dict()`` and never end up in the exported student weights).
Kinds (:func:`make_connector`):

* ``identity``: nothing to learn (widths must already agree);
* ``linear``: a linear map over the channel dim of tokens ``[B, N, D]`` (applied to maps
  ``[B, C, H, W]`` it acts as a 1x1 convolution, so it works on both layouts);
* ``conv1x1``: a 1x1 convolution over maps ``[B, C, H, W]`` (on tokens it acts per token, i.e.
  as a linear layer), optionally followed by BatchNorm (``norm=True``, as FitNet/OFA-style
  regressors often use);
* ``mlp``: LayerNorm + Linear + GELU + Linear over the last dim (``hidden`` wide);
* ``heads``: a 1x1 convolution over the head axis of attention maps ``[B, H, N, N]``
  (``in_dim`` student heads -> ``out_dim`` teacher heads), rows re-normalised to sum to 1.

Layout and size helpers (no parameters): :func:`tokens_to_map` / :func:`map_to_tokens` reshape
using the grid sizes the taps give (never ``sqrt(N)``), :func:`resize_map` / :func:`resize_tokens`
resample bilinearly. :class:`FeatureAligner` chains them: it brings a student feature (tokens on a
grid, or a CNN map) onto a teacher feature's layout, width and spatial size.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CONNECTOR_KINDS", "make_connector", "Identity", "TokenLinear", "Conv1x1", "MLPConnector",
           "HeadMixer", "tokens_to_map", "map_to_tokens", "resize_map", "resize_tokens", "Feature",
           "FeatureAligner"]

CONNECTOR_KINDS = ("auto", "identity", "none", "linear", "conv1x1", "mlp")


def tokens_to_map(x: Tensor, grid: Tuple[int, int]) -> Tensor:
    """Patch tokens [B, N, D] on a (H, W) grid -> map [B, D, H, W]."""
    B, N, D = x.shape
    H, W = int(grid[0]), int(grid[1])
    if H * W != N:
        raise ValueError(f"tokens_to_map: grid {H}x{W} does not hold {N} tokens")
    return x.transpose(1, 2).reshape(B, D, H, W)


def map_to_tokens(x: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
    """Map [B, C, H, W] -> (tokens [B, H*W, C], (H, W))."""
    B, C, H, W = x.shape
    return x.flatten(2).transpose(1, 2), (H, W)


def resize_map(x: Tensor, size: Tuple[int, int], mode: str = "bilinear") -> Tensor:
    """Resample a map [B, C, H, W] to ``size`` (no-op when already there)."""
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    if mode in ("bilinear", "bicubic"):
        return F.interpolate(x, size=size, mode=mode, align_corners=False)
    return F.interpolate(x, size=size, mode=mode)


def resize_tokens(x: Tensor, grid_in: Tuple[int, int], grid_out: Tuple[int, int], mode: str = "bilinear") -> Tensor:
    """Resample patch tokens [B, N, D] from one patch grid onto another (bilinear over the grid)."""
    if tuple(grid_in) == tuple(grid_out):
        return x
    return map_to_tokens(resize_map(tokens_to_map(x, grid_in), grid_out, mode))[0]


class Identity(nn.Module):
    """Connector that changes nothing."""

    def __init__(self, dim: Optional[int] = None):
        super().__init__()
        self.in_dim = self.out_dim = dim

    def forward(self, x: Tensor) -> Tensor:
        return x


class TokenLinear(nn.Module):
    """Linear map over channels: tokens [..., D_in] -> [..., D_out]; maps [B, C, H, W] handled as 1x1 conv."""

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True):
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.proj = nn.Linear(in_dim, out_dim, bias=bias)

    def forward(self, x: Tensor, layout: str = "tokens") -> Tensor:
        if layout == "map":
            return self.proj(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.proj(x)


class Conv1x1(nn.Module):
    """1x1 convolution over maps [B, C, H, W] (tokens [B, N, D] are handled per token), optional BN."""

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True, norm: bool = False):
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.conv = nn.Conv2d(in_dim, out_dim, kernel_size=1, bias=bias and not norm)
        self.norm = nn.BatchNorm2d(out_dim) if norm else nn.Identity()

    def forward(self, x: Tensor, layout: str = "map") -> Tensor:
        if layout == "tokens":
            return self.norm(self.conv(x.transpose(1, 2).unsqueeze(-1))).squeeze(-1).transpose(1, 2)
        return self.norm(self.conv(x))


class MLPConnector(nn.Module):
    """LayerNorm + Linear + GELU + Linear over the last dim (tokens or pooled vectors)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: Optional[int] = None):
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        hidden = hidden or max(in_dim, out_dim)
        self.net = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))

    def forward(self, x: Tensor, layout: str = "tokens") -> Tensor:
        if layout == "map":
            return self.net(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.net(x)


class HeadMixer(nn.Module):
    """Mix the heads of attention maps [B, Hs, N, N] into [B, Ht, N, N] (softmax-normalised weights, so
    each output head is a convex combination of the input heads and rows still sum to 1)."""

    def __init__(self, in_heads: int, out_heads: int):
        super().__init__()
        self.in_dim, self.out_dim = in_heads, out_heads
        w = torch.zeros(out_heads, in_heads)
        if in_heads == out_heads:
            w += torch.eye(in_heads) * 4.0
        self.logits = nn.Parameter(w)

    def forward(self, attn: Tensor) -> Tensor:
        w = self.logits.softmax(dim=1).to(attn.dtype)
        return torch.einsum("oh,bhnm->bonm", w, attn)


def make_connector(kind: str, in_dim: int, out_dim: int, *, layout: str = "tokens", hidden: Optional[int] = None,
                   norm: bool = False) -> nn.Module:
    """Build a connector from ``in_dim`` (student) to ``out_dim`` (teacher) channels.

    ``kind='auto'``: identity when the widths agree, else ``linear`` for tokens / ``conv1x1`` for maps.
    ``identity``/``none`` with different widths raises ValueError (the caller reports it).
    """
    kind = (kind or "auto").lower()
    if kind == "auto":
        kind = "identity" if in_dim == out_dim else ("linear" if layout == "tokens" else "conv1x1")
    if kind in ("identity", "none"):
        if in_dim != out_dim:
            raise ValueError(f"widths differ ({in_dim} vs {out_dim}) and connector is '{kind}'; "
                             f"use connector: auto, linear or conv1x1")
        return Identity(in_dim)
    if kind == "linear":
        return TokenLinear(in_dim, out_dim)
    if kind == "conv1x1":
        return Conv1x1(in_dim, out_dim, norm=norm)
    if kind == "mlp":
        return MLPConnector(in_dim, out_dim, hidden)
    if kind == "heads":
        return HeadMixer(in_dim, out_dim)
    raise ValueError(f"unknown connector kind '{kind}' (valid: {', '.join(CONNECTOR_KINDS + ('heads',))})")


def _apply(conn: nn.Module, x: Tensor, layout: str) -> Tensor:
    if isinstance(conn, (TokenLinear, Conv1x1, MLPConnector)):
        return conn(x, layout=layout)
    return conn(x)


@dataclass(frozen=True)
class Feature:
    """Where a feature comes from and what it looks like (known at build time)."""
    role: str                 # "student" or a teacher name
    kind: str                 # "block" (ViT tokens) or "stage" (CNN map)
    index: int                # block index or stage stride
    channels: int
    size: Optional[Tuple[int, int]] = None   # patch grid (blocks); stage maps are sized at run time

    def describe(self) -> str:
        return f"{self.role} {self.kind} {self.index} ({self.channels} ch)"

    def read(self, out) -> Tensor:
        """The feature as a map [B, C, H, W] from a TapOutput."""
        if self.kind == "block":
            return tokens_to_map(out.patches[self.index], out.grid_size)
        return out.stages[self.index]


class FeatureAligner(nn.Module):
    """Student feature -> teacher feature's width, layout and spatial size.

    Width: ``connector`` (auto: linear on ViT tokens, 1x1 conv on CNN maps; identity when equal).
    Spatial: ``resize='student'`` resamples the (projected) student map onto the teacher's size;
    ``resize='teacher'`` resamples the teacher's map onto the student's size instead (cheaper; the
    teacher needs no gradient). Both are bilinear. ``forward`` returns ``(student_map, teacher_map)``
    as [B, C_t, H, W] float maps ready for a loss.
    """

    def __init__(self, s: Feature, t: Feature, connector: str = "auto", resize: str = "student",
                 norm: bool = False):
        super().__init__()
        if resize not in ("student", "teacher"):
            raise ValueError(f"resize must be 'student' or 'teacher', got {resize!r}")
        self.s, self.t, self.resize = s, t, resize
        self.layout = "tokens" if s.kind == "block" else "map"
        self.proj = make_connector(connector, s.channels, t.channels, layout=self.layout, norm=norm)

    def forward(self, s_out, t_out) -> Tuple[Tensor, Tensor]:
        ft = self.t.read(t_out).float()
        if self.layout == "tokens":
            xs = _apply(self.proj, s_out.patches[self.s.index], "tokens")
            fs = tokens_to_map(xs, s_out.grid_size)
        else:
            fs = _apply(self.proj, s_out.stages[self.s.index], "map")
        fs = fs.float()
        if self.resize == "student":
            fs = resize_map(fs, ft.shape[-2:])
        else:
            ft = resize_map(ft, fs.shape[-2:])
        return fs, ft
