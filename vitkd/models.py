"""Creating students and teachers through timm (vitkd's own architectures are registered in timm)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import timm
from torch import nn

from .config import ConfigError
from .data import DataSpec
from .rundir import RunDir
from .taps import input_channels

__all__ = ["create", "create_from_folder", "resolve_weights", "run_model_spec", "data_spec", "student_spec", "freeze"]


def resolve_weights(path: str, key: str = "checkpoint") -> Path:
    """A finished run folder (its exported student weights) or a weights file (``key``: the config key named
    in errors)."""
    p = Path(path)
    if p.is_dir():
        return RunDir(p).finished_weights(key)
    if not p.is_file():
        raise ConfigError(f"{key}: file or folder not found: {path}")
    return p


def run_model_spec(path: str) -> Optional[Tuple[str, Dict[str, Any], int]]:
    """(model name, args, num_classes) recorded in a run folder's config, if ``path`` is (in) a run folder."""
    p = Path(path)
    run = RunDir(p if p.is_dir() else p.parent)
    if not run.config_path.is_file():
        return None
    return run.model_spec()


def create(name: str, num_classes: Optional[int] = None, args: Optional[Dict[str, Any]] = None,
           checkpoint: Optional[str] = None, where: str = "model") -> nn.Module:
    """``timm.create_model`` with optional weights loaded through timm's pretrained-config mechanism
    (``pretrained_cfg_overlay=dict(file=...)``), so timm's own filters and checks apply."""
    kwargs = dict(args or {})
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if not timm.is_model(name):
        import difflib
        hint = difflib.get_close_matches(name, timm.list_models(), n=1)
        extra = f" (did you mean '{hint[0]}'?)" if hint else ""
        raise ConfigError(f"{where}.name: unknown timm model '{name}'{extra}")
    try:
        if checkpoint is not None:
            weights = resolve_weights(checkpoint, f"{where}.checkpoint")
            overlay = dict(file=str(weights), custom_load=False)   # a plain state dict, never a model's npz loader
            if num_classes is not None:
                # timm drops the classifier weights when num_classes differs from the pretrained cfg's
                overlay["num_classes"] = num_classes
            return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
        return timm.create_model(name, pretrained=False, **kwargs)
    except ConfigError:
        raise
    except TypeError as e:
        raise ConfigError(f"{where}.args: {name} rejects its arguments: {e}") from None
    except RuntimeError as e:   # load_state_dict: a title line, then the missing / unexpected keys
        detail = (" ".join(line.strip() for line in str(e).strip().splitlines()[:2]) or type(e).__name__)[:240]
        if checkpoint is None:
            raise ConfigError(f"{where}.args: {name} cannot be built with these arguments ({detail})") from None
        raise ConfigError(f"{where}.checkpoint: weights in {checkpoint} do not fit {name}: {detail}") from None
    except Exception as e:   # a truncated, zeroed or garbage weights file
        if checkpoint is None:
            raise
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise ConfigError(f"{where}.checkpoint: cannot read the weights in {checkpoint} "
                          f"({type(e).__name__}: {first})") from None


def create_from_folder(folder, where: str = "zoo") -> nn.Module:
    """A model folder in timm's Hugging Face Hub layout (``config.json`` + safetensors weights), through timm's
    own ``local-dir:`` source: architecture, ``model_args`` and pretrained config come from ``config.json``."""
    folder = Path(folder)
    try:
        return timm.create_model(f"local-dir:{folder}", pretrained=True)
    except (RuntimeError, FileNotFoundError, TypeError, ValueError, KeyError, AssertionError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ConfigError(f"{where}: cannot load the model folder {folder} ({type(e).__name__}: {first})") from None


def data_spec(model: nn.Module, img_size: Optional[int] = None) -> DataSpec:
    """The input a model expects, from its pretrained config (img_size overrides the size); one mean and std per
    input channel the model takes (a model built with ``in_chans`` other than its cfg's gets the cfg's averages)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size", (3, 224, 224))[-2:]
    fixed = getattr(getattr(model, "patch_embed", None), "img_size", None)   # a ViT built for another size
    if fixed is not None:
        size = fixed
    if img_size is not None:
        size = (img_size, img_size)
    mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(cfg.get("std", (0.229, 0.224, 0.225)))
    channels = input_channels(model)
    if len(mean) != channels:   # a model built with another in_chans than its cfg's: one value per channel
        mean = (sum(mean) / len(mean),) * channels
        std = (sum(std) / len(std),) * channels
    return DataSpec(img_size=tuple(int(s) for s in size), mean=mean, std=std,
                    interpolation=cfg.get("interpolation", "bicubic"), crop_pct=cfg.get("crop_pct", 0.875))


def student_spec(cfg) -> DataSpec:
    """The input spec (size, normalisation, channels) of run config ``cfg``'s student, read from an untrained probe
    of it: what its images are made for, known before the data (and its class count) is read."""
    probe = create(cfg.model.name, 10, cfg.model.args, where="model")
    return data_spec(probe, cfg.data.img_size)


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
