"""Taps: one forward pass of any timm model that also returns what distillation needs.

A :class:`TapRequest` names, per model, the blocks whose tokens are wanted, the blocks whose
attention maps or per-head Q/K/V are wanted, the CNN stages (by stride) and whether each
classifier head's logits are wanted separately. :class:`Tapped` wraps a model for one request:

    with Tapped(model, TapRequest(tokens={-1}, attn={0}, heads=True)) as tapped:
        out = tapped(images)
        out.logits, out.heads["dist"], out.prefix[-1]["cls"], out.patches[-1], out.grid(-1)

Everything is read through the model's own metadata and timm's own APIs:

* tokens come from ``forward_intermediates`` (timm splits the ``num_prefix_tokens`` prefix off);
  the patch grid comes from ``patch_embed.dynamic_feat_size`` (non-square inputs included);
  prefix tokens are named ``cls``/``dist``/``reg0..`` or by the model's ``prefix_token_names``;
* attention probabilities are captured with a forward pre-hook on the block's ``attn_drop``
  (so before dropout), after switching off ``fused_attn`` on the requested block instances only;
  Q and K come from hooks on ``q_norm``/``k_norm`` (so after timm's q/k norms), V from ``qkv``;
* CNN stage maps come from forward hooks on the modules that timm's ``feature_info`` names,
  chosen by reduction (stride), never by list position;
* heads: timm's distilled DeiT (``head``/``head_dist``) or any model with ``forward_heads``.

Closing the wrapper (or leaving the ``with`` block) removes every hook and restores every flag.
Hooks on modules shared by several blocks (MiniViT weight sharing) are dispatched by which
block's attention module is running.
"""
from __future__ import annotations

import copy
import dataclasses
import operator
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

import torch
from torch import Tensor, nn

from .config import ConfigError

__all__ = ["TapError", "TapRequest", "TapOutput", "Tapped", "ModelInfo", "describe", "patch_grid", "head_names", "prefix_token_names", "num_blocks",
           "is_vit_like", "stage_reductions", "model_name"]


class TapError(ValueError):
    """A tap asked of a model that cannot provide it (the message names model and valid range)."""


def model_name(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("architecture") or type(model).__name__


def is_vit_like(model: nn.Module) -> bool:
    return hasattr(model, "blocks") and hasattr(model, "num_prefix_tokens")


def num_blocks(model: nn.Module) -> int:
    return len(model.blocks) if is_vit_like(model) else 0


def prefix_token_names(model: nn.Module) -> List[str]:
    """Names of the prefix tokens in sequence order, from the model's own metadata."""
    names = getattr(model, "prefix_token_names", None)
    if names is None:
        names = []
        if getattr(model, "cls_token", None) is not None:
            names.append("cls")
        if getattr(model, "dist_token", None) is not None:
            names.append("dist")
        names += [f"reg{i}" for i in range(getattr(model, "num_reg_tokens", 0) or 0)]
    names = list(names)
    if len(names) != model.num_prefix_tokens:
        raise TapError(f"{model_name(model)}: prefix token names {names} do not match "
                       f"num_prefix_tokens={model.num_prefix_tokens}; declare `prefix_token_names` on the model")
    return names


def stage_reductions(model: nn.Module) -> Dict[int, Tuple[str, int]]:
    """reduction -> (module name, channels) from timm's feature_info (deepest module per reduction)."""
    info = getattr(model, "feature_info", None)
    if not info or is_vit_like(model):
        return {}
    entries = info.get_dicts() if hasattr(info, "get_dicts") else list(info)
    out = {}
    for e in entries:
        out[int(e["reduction"])] = (e["module"], int(e["num_chs"]))
    return out


def _as_set(v, what: str) -> frozenset:
    """Block indices (or stage strides) as a set of ints; anything but an integer (1.5, '1', True) is refused,
    never truncated to a block."""
    if v is None:
        return frozenset()
    items = [v] if not isinstance(v, (set, frozenset, list, tuple, range)) else list(v)
    for i in items:
        if isinstance(i, bool) or not hasattr(i, "__index__"):
            raise ConfigError(f"tap request {what}: {i!r} is not an integer block index or stage stride")
    return frozenset(operator.index(i) for i in items)


def patch_grid(model: nn.Module, img_size: Tuple[int, int]) -> Tuple[int, int]:
    """The patch grid (H, W) a ViT-like model lays ``img_size`` out on, from its patch embedding."""
    pe = model.patch_embed
    if hasattr(pe, "dynamic_feat_size"):
        return tuple(int(v) for v in pe.dynamic_feat_size(tuple(img_size)))
    return tuple(int(v) for v in pe.grid_size)


@dataclass
class ModelInfo:
    """Shapes of a model that loss terms check and build connectors from (no live module)."""
    name: str
    vit: bool
    depth: int
    embed_dim: Optional[int]
    num_heads: Optional[int]
    num_classes: int
    grid: Optional[tuple]
    prefix_names: list
    stages: Dict[int, tuple]             # reduction -> (module, channels)
    head_names: list
    device: torch.device = torch.device("cpu")


def input_channels(model: nn.Module) -> int:
    """The channels ``model`` takes, from its own metadata: its first conv (the pretrained cfg's ``first_conv``),
    else the cfg's ``input_size``, else 3."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    first = cfg.get("first_conv")
    if isinstance(first, str):
        try:
            return int(model.get_submodule(first).in_channels)
        except (AttributeError, TypeError):
            pass
    size = cfg.get("input_size")
    return int(size[0]) if size else 3


def head_names(model: nn.Module, img_size: Tuple[int, int]) -> List[str]:
    """The classifier heads by name: the model's own ``head_names``, DeiT's cls + dist, a probe of
    ``forward_heads`` when the model names its heads only there, else the single ``cls``."""
    if hasattr(model, "forward_heads"):
        names = list(getattr(model, "head_names", None) or [])
        if names:
            return names
        with torch.no_grad():
            was = model.training
            model.eval()
            probe = torch.zeros(1, input_channels(model), *img_size, device=next(model.parameters()).device)
            names = list(model.forward_heads(model.forward_features(probe)))
            model.train(was)
        return names
    if getattr(model, "head_dist", None) is not None:
        return ["cls", "dist"]
    return ["cls"]


def describe(model: nn.Module, img_size: Tuple[int, int]) -> ModelInfo:
    """What loss terms need to know of ``model`` at input ``img_size``, from its own metadata."""
    vit = is_vit_like(model)
    attn = getattr(model.blocks[0], "attn", None) if vit else None
    param = next(model.parameters(), None)
    return ModelInfo(name=model_name(model), vit=vit, depth=num_blocks(model),
                     embed_dim=getattr(model, "embed_dim", None) if vit else None,
                     num_heads=getattr(attn, "num_heads", None), num_classes=getattr(model, "num_classes", 0),
                     grid=patch_grid(model, img_size) if vit else None,
                     prefix_names=prefix_token_names(model) if vit else [],
                     stages=stage_reductions(model), head_names=head_names(model, img_size) if vit else ["cls"],
                     device=param.device if param is not None else torch.device("cpu"))


@dataclass(frozen=True)
class TapRequest:
    """What one model must return besides its logits."""

    tokens: frozenset = frozenset()   # block indices (negatives allowed): prefix + patch tokens
    attn: frozenset = frozenset()     # block indices: attention probabilities [B, heads, N, N]
    qkv: frozenset = frozenset()      # block indices: per-head (q, k, v), each [B, heads, N, d]
    stages: frozenset = frozenset()   # CNN reductions (strides): maps [B, C, H, W]
    heads: bool = False               # each classifier head's logits by name
    features: bool = False            # final normed tokens of forward_features (ViTs: split as final_*)

    def __post_init__(self):
        for f in ("tokens", "attn", "qkv", "stages"):
            object.__setattr__(self, f, _as_set(getattr(self, f), f))

    def merge(self, other: "TapRequest") -> "TapRequest":
        return TapRequest(self.tokens | other.tokens, self.attn | other.attn, self.qkv | other.qkv,
                          self.stages | other.stages, self.heads or other.heads,
                          self.features or other.features)

    @staticmethod
    def union(requests: Iterable["TapRequest"]) -> "TapRequest":
        out = TapRequest()
        for r in requests:
            out = out.merge(r)
        return out

    def __bool__(self) -> bool:
        return bool(self.tokens or self.attn or self.qkv or self.stages or self.heads or self.features)


class BlockDict(dict):
    """A dict keyed by block index that also answers negative indices."""

    def __init__(self, depth: int, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.depth = depth

    def _norm(self, key):
        return key + self.depth if isinstance(key, int) and key < 0 else key

    def __getitem__(self, key):
        return super().__getitem__(self._norm(key))

    def __contains__(self, key):
        return super().__contains__(self._norm(key))

    def get(self, key, default=None):
        return super().get(self._norm(key), default)


@dataclass
class TapOutput:
    logits: Tensor
    heads: Dict[str, Tensor] = field(default_factory=dict)
    prefix: Dict[int, Dict[str, Tensor]] = field(default_factory=dict)
    patches: Dict[int, Tensor] = field(default_factory=dict)
    attn: Dict[int, Tensor] = field(default_factory=dict)
    qkv: Dict[int, Tuple[Tensor, Tensor, Tensor]] = field(default_factory=dict)
    stages: Dict[int, Tensor] = field(default_factory=dict)
    features: Optional[Tensor] = None
    final_prefix: Dict[str, Tensor] = field(default_factory=dict)   # ViTs: forward_features' prefix tokens
    final_patches: Optional[Tensor] = None                          # ViTs: forward_features' patch tokens
    grid_size: Optional[Tuple[int, int]] = None
    num_prefix: int = 0                                             # prefix tokens before the patch tokens

    def detach(self) -> "TapOutput":
        """The same outputs cut from the graph (a prediction used as another model's target gives it no gradient)."""
        def cut(v):
            if isinstance(v, Tensor):
                return v.detach()
            if isinstance(v, dict):
                out = copy.copy(v)   # keeps a BlockDict's negative indices
                for k in out:
                    dict.__setitem__(out, k, cut(v[k]))
                return out
            if isinstance(v, (tuple, list)):
                return type(v)(cut(x) for x in v)
            return v
        return dataclasses.replace(self, **{f.name: cut(getattr(self, f.name)) for f in dataclasses.fields(self)})

    def grid(self, block: int) -> Tensor:
        """Patch tokens of ``block`` as a map [B, D, H, W] on the model's own patch grid."""
        from .connectors import tokens_to_map
        return tokens_to_map(self.patches[block], self.grid_size)

    def tokens(self, block: int, prefix: bool = True) -> Tensor:
        """Output tokens of ``block`` [B, N, D]: the prefix tokens (in sequence order) then the patch tokens,
        or the patch tokens alone with ``prefix=False``."""
        pre = self.prefix.get(block) or {}
        if not prefix or not pre:
            return self.patches[block]
        return torch.cat([torch.stack(list(pre.values()), dim=1), self.patches[block]], dim=1)

    def attention(self, block: int, prefix: bool = True) -> Tensor:
        """Attention probabilities of ``block`` [B, heads, N, N]; ``prefix=False``: the patch-to-patch block
        only (rows as they are: not re-normalised)."""
        a = self.attn[block]
        return a if prefix else a[:, :, self.num_prefix:, self.num_prefix:]

    def qkv_tokens(self, block: int, prefix: bool = True) -> Tuple[Tensor, Tensor, Tensor]:
        """Per-head (q, k, v) of ``block``, each [B, heads, N, d]; ``prefix=False``: patch tokens only."""
        q, k, v = self.qkv[block]
        return (q, k, v) if prefix else tuple(x[:, :, self.num_prefix:] for x in (q, k, v))


def _pre_hook_calling(fns):
    def hook(_module, args):
        for f in fns:
            f(args[0])
    return hook


def _post_hook_calling(fns):
    def hook(_module, _args, out):
        for f in fns:
            f(out)
    return hook


class Tapped(nn.Module):
    """Wrap ``model`` so that ``forward`` returns a :class:`TapOutput` for ``request``."""

    def __init__(self, model: nn.Module, request: Optional[TapRequest] = None):
        super().__init__()
        self.model = model
        self.request = request or TapRequest()
        self._handles: list = []
        self._restore: list = []   # (module, attribute, old value)
        self._active: Optional[int] = None
        self._attn: Dict[int, Tensor] = {}
        self._q: Dict[int, Tensor] = {}
        self._k: Dict[int, Tensor] = {}
        self._v: Dict[int, Tensor] = {}
        self._stages: Dict[int, Tensor] = {}
        self._closed = False
        try:
            self._check_and_install()
        except Exception:
            self.close()
            raise

    # ----------------------------------------------------------------- set-up
    def _block_index(self, i: int, what: str) -> int:
        depth = num_blocks(self.model)
        if not -depth <= i < depth:
            raise TapError(f"{model_name(self.model)}: {what} block {i} out of range; valid blocks are "
                           f"0..{depth - 1} or -{depth}..-1")
        return i % depth

    def _check_and_install(self):
        m, r = self.model, self.request
        name = model_name(m)
        vit = is_vit_like(m)
        if (r.tokens or r.attn or r.qkv) and not vit:
            raise TapError(f"{name}: tokens/attention/qkv taps need a ViT-like model (blocks + "
                           f"num_prefix_tokens); this model has CNN stages {sorted(stage_reductions(m))}")
        if r.tokens and not hasattr(m, "forward_intermediates"):
            raise TapError(f"{name}: token taps need timm's forward_intermediates, which this model lacks")
        self.depth = num_blocks(m)
        self.token_blocks = sorted({self._block_index(i, "token") for i in r.tokens})
        self.attn_blocks = sorted({self._block_index(i, "attention") for i in r.attn})
        self.qkv_blocks = sorted({self._block_index(i, "qkv") for i in r.qkv})
        self.vit = vit
        if vit:
            self.prefix_names = prefix_token_names(m)
        if r.stages:
            if vit:
                raise TapError(f"{name}: CNN stage taps asked of a ViT; use token taps (grid view) instead")
            avail = stage_reductions(m)
            missing = sorted(set(r.stages) - set(avail))
            if missing:
                raise TapError(f"{name}: no stage with stride {missing}; valid strides are {sorted(avail)}")
            for red in sorted(r.stages):
                mod = m.get_submodule(avail[red][0])
                self._handles.append(mod.register_forward_hook(self._stage_hook(red)))
        if self.attn_blocks or self.qkv_blocks:
            self._install_attention_hooks()

    def _install_attention_hooks(self):
        wanted = sorted(set(self.attn_blocks) | set(self.qkv_blocks))
        per_module: Dict[int, Tuple[nn.Module, list]] = {}

        def add(mod: nn.Module, kind: str, fn):
            per_module.setdefault(id(mod), (mod, []))[1].append((kind, fn))

        for i in wanted:
            attn = getattr(self.model.blocks[i], "attn", None)
            required = ("fused_attn", "attn_drop", "q_norm", "k_norm", "qkv", "num_heads", "head_dim")
            if attn is None or not all(hasattr(attn, a) for a in required) or not isinstance(attn.qkv, nn.Linear):
                cls = type(attn).__name__ if attn is not None else type(self.model.blocks[i]).__name__
                raise TapError(f"{model_name(self.model)}: attention module {cls} of block {i} cannot be tapped "
                               f"(needs {', '.join(required)} with qkv an nn.Linear, as timm's Attention)")
            self._handles.append(attn.register_forward_pre_hook(self._enter_block(i)))
            self._handles.append(attn.register_forward_hook(self._leave_block()))
            if i in self.attn_blocks:
                self._restore.append((attn, "fused_attn", attn.fused_attn))
                attn.fused_attn = False
                add(attn.attn_drop, "pre", self._capture_attn)
            if i in self.qkv_blocks:
                add(attn.q_norm, "post", self._capture_into(self._q))
                add(attn.k_norm, "post", self._capture_into(self._k))
                add(attn.qkv, "post", self._capture_v(attn.num_heads, attn.head_dim))
        # one hook per distinct module (modules may be shared between blocks) dispatching all captures
        for mod, fns in per_module.values():
            pre = [f for k, f in fns if k == "pre"]
            post = [f for k, f in fns if k == "post"]
            if pre:
                self._handles.append(mod.register_forward_pre_hook(_pre_hook_calling(pre)))
            if post:
                self._handles.append(mod.register_forward_hook(_post_hook_calling(post)))

    # ----------------------------------------------------------------- hooks
    def _enter_block(self, i: int):
        def hook(_m, _args):
            self._active = i
        return hook

    def _leave_block(self):
        def hook(_m, _args, _out):
            self._active = None
        return hook

    def _capture_attn(self, probs: Tensor):
        if self._active in self.attn_blocks:
            self._attn[self._active] = probs

    def _capture_into(self, store: Dict[int, Tensor]):
        def fn(out: Tensor):
            if self._active in self.qkv_blocks:
                store[self._active] = out
        return fn

    def _capture_v(self, heads: int, head_dim: int):
        def fn(out: Tensor):
            if self._active in self.qkv_blocks:
                B, N, _ = out.shape
                self._v[self._active] = out.reshape(B, N, 3, heads, head_dim)[:, :, 2].transpose(1, 2)
        return fn

    def _stage_hook(self, reduction: int):
        def hook(_m, _args, out):
            if out.ndim != 4:
                raise TapError(f"{model_name(self.model)}: stage at stride {reduction} returned shape "
                               f"{tuple(out.shape)}, not a [B, C, H, W] map")
            self._stages[reduction] = out
        return hook

    # ----------------------------------------------------------------- forward
    def forward(self, x: Tensor) -> TapOutput:
        if self._closed:
            raise RuntimeError("Tapped model used after close()")
        m, r = self.model, self.request
        self._clear_buffers()
        prefix, patches = BlockDict(self.depth), BlockDict(self.depth)
        grid_size = None
        try:
            if self.token_blocks:
                feats, inter = m.forward_intermediates(x, indices=self.token_blocks, return_prefix_tokens=True,
                                                       norm=False, output_fmt="NLC")
                for i, item in zip(self.token_blocks, inter):
                    tokens, pre = item if isinstance(item, tuple) else (item, None)
                    patches[i] = tokens
                    prefix[i] = {n: pre[:, j] for j, n in enumerate(self.prefix_names)} if pre is not None else {}
                grid_size = self._grid_size(x, patches[self.token_blocks[0]].shape[1])
            else:
                feats = m.forward_features(x)
            logits = m.forward_head(feats)
            if isinstance(logits, (tuple, list)):   # a distilled model in distilled-training mode
                logits = sum(logits) / len(logits)
            heads = self._heads(feats, logits) if r.heads else {}
            final_prefix, final_patches = {}, None
            if r.features and self.vit:   # after the final norm, split by the model's own prefix count
                n = len(self.prefix_names)
                final_prefix = {name: feats[:, j] for j, name in enumerate(self.prefix_names)}
                final_patches = feats[:, n:]
                grid_size = grid_size or self._grid_size(x, final_patches.shape[1])
            out = TapOutput(
                logits=logits, heads=heads, prefix=prefix, patches=patches,
                attn=BlockDict(self.depth, dict(self._attn)),
                qkv=BlockDict(self.depth, {i: (self._q[i], self._k[i], self._v[i]) for i in self.qkv_blocks
                                           if i in self._v}),
                stages=dict(self._stages), features=feats if r.features else None, final_prefix=final_prefix,
                final_patches=final_patches, grid_size=grid_size,
                num_prefix=len(self.prefix_names) if self.vit else 0)
        finally:
            self._clear_buffers()
            self._active = None
        return out

    def _grid_size(self, x: Tensor, n: int) -> Tuple[int, int]:
        hw = patch_grid(self.model, tuple(x.shape[-2:]))
        if hw[0] * hw[1] != n:
            raise TapError(f"{model_name(self.model)}: patch grid {hw} does not hold {n} patch tokens")
        return hw

    def _heads(self, feats: Tensor, logits: Tensor) -> Dict[str, Tensor]:
        m = self.model
        if hasattr(m, "forward_heads"):
            return dict(m.forward_heads(feats))
        if getattr(m, "head_dist", None) is not None and is_vit_like(m):
            # timm's distilled DeiT: its forward_head averages the two heads, so read them here
            drop = getattr(m, "head_drop", nn.Identity())
            ci, di = self.prefix_names.index("cls"), self.prefix_names.index("dist")
            return {"cls": m.head(drop(feats[:, ci])), "dist": m.head_dist(drop(feats[:, di]))}
        return {"cls": logits}

    # ----------------------------------------------------------------- close
    def close(self):
        for h in self._handles:
            h.remove()
        self._handles = []
        for mod, attr, old in reversed(self._restore):
            setattr(mod, attr, old)
        self._restore = []
        self._clear_buffers()
        self._closed = True

    def _clear_buffers(self):
        # cleared in place: the capture closures hold these very dicts
        for buf in (self._attn, self._q, self._k, self._v, self._stages):
            buf.clear()

    def __enter__(self) -> "Tapped":
        return self

    def __exit__(self, *exc):
        self.close()
        return False
