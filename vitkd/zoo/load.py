"""Using zoo entries: a ready timm model (through timm's ``local-dir:`` source), the training config shipped
with it, and evaluation on the entry's own dataset and split."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

from torch import nn

from .. import models as model_lib
from ..config import load_yaml, path_under
from .fetch import cached_folder, fetch_entry
from .index import ZooEntry, ZooError, load_index

__all__ = ["create_model", "list_models", "model_folder", "entry_config", "evaluate_folder", "evaluate_entry"]


def list_models(dataset: Optional[str] = None, family: Optional[str] = None, method: Optional[str] = None,
                manifest: Optional[str] = None) -> List[str]:
    """Names of the published models, optionally filtered."""
    return [e.name for e in load_index(manifest).select(dataset, family, method)]


def model_folder(name: str, manifest: Optional[str] = None, download: bool = True, force: bool = False,
                 progress: Optional[bool] = None, log=lambda m: None):
    """(entry, its verified cache folder): downloaded when ``download``, else only re-verified."""
    index = load_index(manifest)
    entry = index.get(name)
    folder = fetch_entry(index, entry, force=force, progress=progress, log=log) if download else cached_folder(entry)
    return entry, folder


def create_model(name: str, pretrained: bool = True, manifest: Optional[str] = None,
                 progress: Optional[bool] = None) -> nn.Module:
    """A timm model of zoo entry ``name``: with ``pretrained``, its verified weights (downloaded into the
    cache when needed) loaded through ``timm.create_model("local-dir:...")``; without, the architecture with
    the entry's ``model_args`` and class count, randomly initialised."""
    if not pretrained:
        entry = load_index(manifest).get(name)
        return model_lib.create(entry.architecture, entry.num_classes or None, entry.model_args, where=f"zoo {name}")
    _, folder = model_folder(name, manifest, progress=progress)
    return model_lib.create_from_folder(folder, where=f"zoo {name}")


def entry_config(entry: ZooEntry, folder: Path) -> Dict[str, Any]:
    """The training config shipped with an entry (its ``config`` file)."""
    if not entry.config:
        raise ZooError(f"zoo: entry {entry.name} ships no training config")
    return load_yaml(path_under(folder, entry.config, key=f"zoo: {entry.name}.config")) or {}


def evaluate_folder(folder: Path, config: Dict[str, Any], split: str, device: str = "cpu") -> Dict[str, float]:
    """Top-1 and loss of the model in ``folder`` (loaded through ``local-dir:``) on ``split`` of the data its
    training ``config`` describes, read exactly as the run read it (same transforms, batch size, order)."""
    from ..config import parse_config
    from ..data import build_datasets
    from ..evaluate import evaluate
    from ..dist import resolve_device
    raw = {k: v for k, v in config.items() if k != "distill"}   # the student alone
    raw["model"] = {**(raw.get("model") or {}), "checkpoint": None}
    cfg = parse_config(raw)
    model = model_lib.create_from_folder(folder)
    spec = model_lib.data_spec(model, cfg.data.img_size)
    datasets, _ = build_datasets(cfg.data, spec, cfg.seed)
    if split not in datasets:
        raise ZooError(f"zoo: split '{split}' not available (have: {', '.join(datasets)})")
    dev = resolve_device(device)
    r = evaluate(model.to(dev), datasets[split], cfg.data.eval_batch_size, dev, cfg.data.num_workers)
    return {"top1": float(r["top1"]), "loss": float(r["loss"])}


def evaluate_entry(name: str, manifest: Optional[str] = None, split: Optional[str] = None, device: str = "cpu",
                   progress: Optional[bool] = None) -> Dict[str, Any]:
    """Download (verified), load through ``local-dir:`` and evaluate on the entry's dataset and split."""
    entry, folder = model_folder(name, manifest, progress=progress)
    split = split or entry.split
    r = evaluate_folder(folder, entry_config(entry, folder), split, device)
    return {"name": name, "dataset": entry.dataset, "split": split, f"{split}_top1": r["top1"],
            f"{split}_loss": r["loss"], "index_top1": entry.top1 if split == entry.split else None}
