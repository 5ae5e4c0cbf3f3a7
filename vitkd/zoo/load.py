"""Using zoo entries: a ready timm model (through timm's ``local-dir:`` source), a teacher named by its entry
(``distill.teachers.<name>: {zoo: NAME}``), and the training config shipped with it. Evaluation on the entry's own
dataset and split is :mod:`.evaluate`'s."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

from torch import nn

from .. import models as model_lib
from ..config import ConfigError, TeacherCfg, load_yaml, path_under
from .fetch import cached_folder, fetch_entry
from .index import ZooEntry, ZooError, load_index

__all__ = ["create_model", "list_models", "model_folder", "entry_config", "teacher_model"]


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


def teacher_model(where: str, cfg: TeacherCfg) -> nn.Module:
    """A teacher's zoo entry's model (downloaded and verified into the cache, loaded through timm's ``local-dir:``):
    the ``zoo`` origin of :mod:`vitkd.teachers`."""
    if cfg.checkpoint is not None or cfg.model is not None or cfg.args:
        raise ConfigError(f"{where}.zoo: give either zoo or model/args/checkpoint, not both")
    try:
        return create_model(cfg.zoo)
    except ConfigError as e:   # a ZooError, or a name that cannot be a zoo entry
        raise ConfigError(f"{where}.zoo: {e}") from None
