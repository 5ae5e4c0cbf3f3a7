"""Zoo entries evaluated on their own dataset and split, read exactly as their training run read it."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

from .. import models as model_lib
from ..config import parse_config
from ..data import build_datasets
from ..dist import resolve_device
from ..evaluate import evaluate
from .index import ZooError
from .load import entry_config, model_folder

__all__ = ["evaluate_folder", "evaluate_entry"]


def evaluate_folder(folder: Path, config: Dict[str, Any], split: str, device: str = "cpu") -> Dict[str, float]:
    """Top-1 and loss of the model in ``folder`` (loaded through ``local-dir:``) on ``split`` of the data its
    training ``config`` describes, read exactly as the run read it (same transforms, batch size, order)."""
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
