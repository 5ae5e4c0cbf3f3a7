"""Evaluation of a model's plain forward on a whole split (rank-sharded, reduced): what training, ``vitkd eval``,
the zoo and m2mKD's compatibility check all measure with."""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from .dist import Reducer, World

__all__ = ["evaluate"]


@torch.no_grad()
def evaluate(model: nn.Module, dataset, batch_size: int, device: torch.device, num_workers: int = 0,
             amp: bool = False, world: World = World(), reducer: Reducer = Reducer(),
             keep_logits: bool = False) -> Dict[str, object]:
    """Top-1 (%) and mean cross-entropy of ``model`` (its plain forward) on a whole split, each rank on its
    share of the images. With ``keep_logits``: also every image's logits, target and index, gathered."""
    was = model.training
    model.eval()
    indices = list(range(world.rank, len(dataset), world.size))   # no padding: every image counted once
    loader = DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers)
    correct, loss_sum, n = 0.0, 0.0, 0.0
    kept = []
    for x, y, idx in loader:
        x, y = x.to(device), y.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
            logits = model(x)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(-1) == y).sum().item()
        n += len(y)
        if keep_logits:
            kept.append((logits.cpu(), y.cpu(), idx.cpu()))
    model.train(was)
    s = reducer.sum({"correct": correct, "loss": loss_sum, "n": n})
    out: Dict[str, object] = {"top1": 100.0 * s["correct"] / max(1.0, s["n"]), "loss": s["loss"] / max(1.0, s["n"])}
    if keep_logits:
        parts = [p for rank_parts in reducer.gather(kept) for p in rank_parts]
        logits = torch.cat([p[0] for p in parts])
        targets, idx = torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts])
        order = torch.argsort(idx)
        out.update(logits=logits[order], targets=targets[order], indices=idx[order])
    return out
