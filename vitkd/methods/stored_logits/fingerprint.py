"""What a store's logits depend on, and the check that a run may read them.

The teacher saw the augmented (and mixed) images of every epoch; those images are a function of the data
recipe and the run seed alone (every draw is seeded by (seed, epoch, index[, copy])). So a store serves a run
whose recipe and seed are the same, whatever its student, batch size, learning rate or number of processes.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

from ...config import RunCfg, section
from ...data import TRAIN_SPLITS, DataSpec, sample_seed
from ...io import sha256_file
from .format import StoreError

__all__ = ["data_fingerprint", "check_fingerprint", "weights_sha256", "record_seed", "FINGERPRINT_FIELDS", "fingerprint_fields"]

# the order in which fields are compared (the first that differs is named); then one field per data key that
# replaces the train split (vitkd.data.TRAIN_SPLITS), present only when set (stores written before it existed keep
# serving the runs they served)
FINGERPRINT_FIELDS = ("dataset", "split", "train_subset", "val_size", "input_size", "mean", "std", "transform",
                      "auto_augment", "re_prob", "hflip", "interpolation", "crop_pct", "repeated_aug", "mixup",
                      "cutmix", "mixup_prob", "seed")


def fingerprint_fields() -> tuple:
    return FINGERPRINT_FIELDS + tuple(TRAIN_SPLITS)


def data_fingerprint(cfg: RunCfg, spec: DataSpec) -> Dict[str, Any]:
    """The fields of ``cfg`` (with the student's input ``spec``) that decide which images the teacher sees."""
    d, t = cfg.data, cfg.train
    timm_tf = d.augment == "timm" or d.name == "imagefolder"   # as vitkd.data.build_datasets chooses
    transform = "timm" if timm_tf else d.augment
    fp: Dict[str, Any] = {
        "dataset": d.name, "split": "train", "train_subset": d.train_subset,
        "val_size": d.val_size if d.name != "digits" else None,
        "input_size": [int(v) for v in spec.img_size], "mean": [float(v) for v in spec.mean],
        "std": [float(v) for v in spec.std], "transform": transform,
        # timm's transform reads these; the light one does not (a student that differs there is served)
        "auto_augment": d.auto_augment if timm_tf else None, "re_prob": d.re_prob if timm_tf else None,
        "hflip": d.hflip if timm_tf else None, "interpolation": spec.interpolation if timm_tf else None,
        "crop_pct": float(spec.crop_pct) if timm_tf else None,
        "repeated_aug": d.repeated_aug, "mixup": t.mixup, "cutmix": t.cutmix,
        "mixup_prob": t.mixup_prob if (t.mixup > 0 or t.cutmix > 0) else None, "seed": cfg.seed,
    }
    out = {k: fp[k] for k in FINGERPRINT_FIELDS}
    for key, split in TRAIN_SPLITS.items():   # a set that replaces the train split: its own fingerprint names its images
        value = section(d, key)
        if value is not None:
            out[key] = split.fingerprint(value)
    return out


def check_fingerprint(meta: Dict[str, Any], cfg: RunCfg, spec: DataSpec, where: str,
                      teacher_weights: Optional[str] = None) -> None:
    """Refuse, in one line naming the first field that differs, a store that did not see this run's images."""
    stored = meta.get("fingerprint") or {}
    want = data_fingerprint(cfg, spec)
    for k in fingerprint_fields():
        if stored.get(k) != want.get(k):
            raise StoreError(f"{where}: the store was written for {k} = {stored.get(k)!r}, this run has {want.get(k)!r} "
                             f"(a store serves only runs with its data recipe and seed; save one for this config)")
    if int(stored.get("epochs", 0)) < cfg.train.epochs:
        raise StoreError(f"{where}: the store holds {stored.get('epochs')} epochs, this run trains "
                         f"train.epochs = {cfg.train.epochs}")
    if teacher_weights is not None:
        sha = weights_sha256(teacher_weights)
        if sha != stored.get("teacher_sha256"):
            raise StoreError(f"{where}: the store was written by other teacher weights (teacher_sha256 "
                             f"{str(stored.get('teacher_sha256'))[:12]}..., the checkpoint's is {sha[:12]}...)")


def weights_sha256(checkpoint: str) -> str:
    """sha256 of a teacher's weights file (a run folder's exported student weights, or the file itself)."""
    from ...models import resolve_weights
    return sha256_file(resolve_weights(checkpoint))


def record_seed(seed: int, epoch: int, index: int, copy: int) -> int:
    """The augmentation seed of a sample key, as :class:`vitkd.data.SplitDataset` draws it."""
    return sample_seed(seed, epoch, index, *((copy,) if copy else ()))
