"""Datasets with replayable per-sample augmentation.

Every random draw of a sample's augmentation comes from a seed derived from (run seed, epoch,
index), so any epoch's inputs can be replayed exactly (stored teacher logits, bit-exact resume).
The data order of an epoch is a permutation drawn from (run seed, epoch).

* ``digits``: scikit-learn's handwritten digits (1797 real 8x8 images shipped inside the package,
  no download), split once with a fixed seed into train 1197 / val 200 / test 400.
* ``fashion_mnist``: Fashion-MNIST's four IDX files (Debian's package, torchvision's layout, ``data.root`` or the
  vitkd cache; verified by content): train 55,000 / val 5,000 (fixed, stratified) / test 10,000 (official); see
  :mod:`vitkd.datasets.fashion_mnist`.
* ``cifar10`` / ``cifar100``: torchvision's on-disk python format under ``data.root``.
* ``imagefolder``: ImageNet layout, ``root/train/<class>/*`` and ``root/val/<class>/*``.
Each is a registered :class:`Source` (:func:`register_source`). For cifar and imagefolder a seeded ``val_size`` subset of the train split is held out as val and the
official test/val split is the test split.
"""
from __future__ import annotations

import contextlib
import math
import pickle
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset, Sampler

from .config import ConfigError, DataCfg, DataError, section
from .datasets import fashion_mnist

__all__ = ["TRAIN_SPLITS", "TrainSplit", "register_train_split", "DIGITS_SPLIT", "SOURCES", "Source", "register_source", "sample_seed", "seeded", "SplitDataset", "EpochSampler", "build_datasets",
           "DataSpec", "load_digits_arrays", "class_count", "MixSpec", "MixedDataset", "train_view", "mix_partners", "mix_draw"]

DIGITS_SPLIT = {"train": 1197, "val": 200, "test": 400}
DIGITS_SPLIT_SEED = 20240601   # the split is made once, independent of the run seed


def sample_seed(*parts: int) -> int:
    """A 32-bit seed derived from integers (run seed, epoch, index, ...) by numpy's SeedSequence."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


@contextlib.contextmanager
def seeded(seed: int):
    """Seed python, numpy and torch (CPU) RNGs for a block, restoring the previous states after."""
    py, npst, th = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npst)
        torch.random.set_rng_state(th)


@dataclass
class DataSpec:
    """What the model expects as input."""
    img_size: Tuple[int, int]
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    interpolation: str = "bicubic"
    crop_pct: float = 0.875

    @property
    def input_size(self) -> Tuple[int, int, int]:
        """(channels, height, width): one channel per normalisation mean."""
        return (len(self.mean), *self.img_size)


# ---------------------------------------------------------------------- sources
def load_digits_arrays() -> Tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    d = load_digits()
    return d.images.astype(np.float32) / 16.0, d.target.astype(np.int64)


def _digits_splits() -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    images, targets = load_digits_arrays()
    perm = np.random.RandomState(DIGITS_SPLIT_SEED).permutation(len(images))
    a, b = DIGITS_SPLIT["train"], DIGITS_SPLIT["train"] + DIGITS_SPLIT["val"]
    idx = {"train": perm[:a], "val": perm[a:b], "test": perm[b:b + DIGITS_SPLIT["test"]]}
    return {k: (images[v], targets[v]) for k, v in idx.items()}


CIFAR_LAYOUT = {   # torchvision's on-disk python format (the official archives, unpacked)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "batches.meta",
                "labels", "label_names"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "meta", "fine_labels", "fine_label_names"),
}


# what a CIFAR batch may name: NumPy's array reconstruction (numpy 1.x and 2.x module names, pickle protocols
# 0-5) and builtin containers; anything else (os.system, subprocess, eval, ...) is refused unread
_CIFAR_PICKLE_GLOBALS = frozenset({
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "bytearray"),
    ("__builtin__", "set"), ("__builtin__", "frozenset"), ("__builtin__", "bytearray"),
})


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """What a protocol 0-2 pickle of Python 3 names ``_codecs.encode`` for: bytes written as latin-1 text."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} (only latin1 holds bytes)")
    return text.encode("latin1")


class _CifarUnpickler(pickle.Unpickler):
    """Reads CIFAR's pickled batches and loads no code: only the globals of :data:`_CIFAR_PICKLE_GLOBALS`."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("_codecs", "encode"):
            return _latin1_bytes
        if (module, name) not in _CIFAR_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"it names the Python object {module}.{name} (a CIFAR batch holds only "
                                         f"lists, dicts, strings, numbers and NumPy arrays)")
        return super().find_class(module, name)


def _read_cifar_pickle(path: Path) -> dict:
    """One CIFAR pickle (a batch or the meta file), read as torchvision does (latin1) by the restricted
    unpickler; a file it refuses or cannot read is one line naming the file."""
    try:
        with open(path, "rb") as f:
            entry = _CifarUnpickler(f, encoding="latin1").load()
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise ConfigError(f"data.root: cannot read {path}: {type(e).__name__}: {first}") from None
    if not isinstance(entry, dict):
        raise ConfigError(f"data.root: cannot read {path}: a {type(entry).__name__}, not a CIFAR dict")
    return entry


def _cifar(cfg: DataCfg):
    """Read CIFAR-10/100 from torchvision's on-disk format (the pickled batches, read as torchvision does:
    latin1 pickles, data [N, 3072] -> HWC uint8, but by an unpickler that loads no code). Never downloads;
    checks presence, not md5 sums."""
    folder_name, train_files, test_files, meta_file, label_key, names_key = CIFAR_LAYOUT[cfg.name]
    folder = Path(cfg.root) / folder_name
    missing = [f for f in train_files + test_files + [meta_file] if not (folder / f).is_file()]
    if missing:
        raise ConfigError(f"data.root: no {cfg.name} found under {cfg.root} (missing {folder / missing[0]})")

    def read(files):
        xs, ys = [], []
        for fname in files:
            entry = _read_cifar_pickle(folder / fname)
            try:
                xs.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                ys.extend(entry[label_key])
            except Exception as e:
                raise ConfigError(f"data.root: cannot read {folder / fname}: {type(e).__name__}: {e}") from None
        return np.concatenate(xs).transpose(0, 2, 3, 1), np.asarray(ys, dtype=np.int64)

    meta = _read_cifar_pickle(folder / meta_file)
    if not isinstance(meta.get(names_key), list):
        raise ConfigError(f"data.root: cannot read {folder / meta_file}: no list '{names_key}'")
    return read(train_files), read(test_files), len(meta[names_key])


def _imagefolder(cfg: DataCfg):
    from torchvision.datasets import ImageFolder
    root = Path(cfg.root)
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise ConfigError(f"data.root: {root / split} not found (ImageNet layout: root/train/<class>/*, "
                              f"root/val/<class>/*)")
    try:
        train, val = ImageFolder(str(root / "train")), ImageFolder(str(root / "val"))
    except (FileNotFoundError, RuntimeError) as e:   # no class folders, or a class folder with no images
        raise ConfigError(f"data.root: {root}: {str(e).splitlines()[0]}") from None
    if train.classes != val.classes:
        raise ConfigError(f"data.root: class folders of {root}/train and {root}/val differ")
    _check_images(train.samples + val.samples)
    return train.samples, val.samples, len(train.classes)


def _check_images(samples) -> None:
    """Every image file opens and passes PIL's ``verify()``, so a broken file fails in one line before any
    file of the run is written, not mid-epoch. Cost: one open per file; ``verify`` reads a PNG through and
    checks its chunk checksums, and reads only a JPEG's header (about 30 us per small file, warm cache: some
    40 s for ImageNet-1k's 1.3 M files). A JPEG whose data is cut short still fails when it is decoded
    (a one-line :class:`DataError` then, mid-epoch; the run resumes once the file is fixed)."""
    for path, _ in samples:
        try:
            with Image.open(path) as img:
                img.verify()
        except Exception as e:   # PIL raises OSError, SyntaxError, ValueError... for broken files
            raise DataError(f"data: cannot read image {path} ({type(e).__name__}: {e})") from None


# ---------------------------------------------------------------------- transforms
def _to_pil(item) -> Image.Image:
    if isinstance(item, tuple):   # (path, target) from ImageFolder
        try:
            with open(item[0], "rb") as f:
                return Image.open(f).convert("RGB")
        except (OSError, ValueError) as e:
            raise DataError(f"data: cannot read image {item[0]} ({type(e).__name__}: {e})") from None
    arr = np.asarray(item)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
    img = Image.fromarray(arr)
    return img.convert("RGB")


class LightAugment:
    """Seeded affine jitter on small tensors: at ``strength`` 1, shift up to 1/8 of the side, rotate +-10 deg,
    scale 0.9-1.1; ``strength`` scales all three ranges; ``hflip``: the probability of a horizontal flip."""

    def __init__(self, spec: DataSpec, train: bool, strength: float = 1.0, hflip: float = 0.0):
        self.spec, self.train, self.strength, self.hflip = spec, train, float(strength), float(hflip)
        self.mean = torch.tensor(spec.mean).view(-1, 1, 1)
        self.std = torch.tensor(spec.std).view(-1, 1, 1)

    def __call__(self, img: np.ndarray, seed: int) -> torch.Tensor:
        return self.batch(np.asarray(img)[None], [seed])[0]

    def thetas(self, seeds: Sequence[int]) -> torch.Tensor:
        """Each sample's affine matrix [B, 2, 3] (train): four uniform draws from the sample's own generator, then
        elementwise arithmetic (the same for a sample alone or in any batch: tests/test_data.py checks a whole
        epoch of digits, and the isa tests under other instruction sets)."""
        draws = 5 if self.hflip > 0 else 4   # the flip's draw comes after the four others: they stay the same
        u = torch.stack([torch.rand(draws, generator=torch.Generator().manual_seed(s)) for s in seeds])
        flip = u[:, 4] < self.hflip if self.hflip > 0 else None
        u = (u[:, :4] * 2 - 1) * self.strength
        angle, scale = u[:, 0] * math.radians(10), 1 + 0.1 * u[:, 1]
        tx, ty = u[:, 2] * 0.25, u[:, 3] * 0.25   # grid units: 2 = the whole side, so 0.25 = 1/8 side
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
        if flip is not None:   # a horizontal flip: the output's x axis read mirrored (pixel centres map exactly)
            theta[flip, :, 0] = -theta[flip, :, 0]
        return theta

    def batch(self, imgs: np.ndarray, seeds: Sequence[int]) -> torch.Tensor:
        """Images [B, H, W] (grayscale: digits in [0, 1], uint8) or [B, H, W, 3] (uint8) -> [B, C, h, w], sample
        ``i`` augmented from ``seeds[i]`` alone: the same image whatever batch it comes in."""
        arr = np.asarray(imgs)
        x = torch.as_tensor(arr.astype(np.float32) / (255.0 if arr.dtype == np.uint8 else 1.0))
        if x.ndim == 3:             # grayscale: repeated to the model's channels
            x = x[:, None].expand(-1, len(self.spec.mean), -1, -1)
        elif x.shape[-1] == 3:      # cifar: [B, H, W, 3] uint8
            x = x.permute(0, 3, 1, 2)
        if tuple(x.shape[-2:]) != tuple(self.spec.img_size):
            x = F.interpolate(x, size=self.spec.img_size, mode="bilinear", align_corners=False, antialias=True)
        if self.train:
            grid = F.affine_grid(self.thetas(seeds), list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        x = x.clamp(0, 1)
        return (x - self.mean) / self.std


class TimmAugment:
    """timm's create_transform on PIL images (RandAugment, random erasing, ...), seeded per sample."""

    def __init__(self, spec: DataSpec, train: bool, cfg: DataCfg):
        from timm.data import create_transform
        kw = dict(input_size=(3, *spec.img_size), is_training=train, mean=spec.mean, std=spec.std,
                  interpolation=spec.interpolation, crop_pct=spec.crop_pct)
        if train:
            kw.update(auto_augment=cfg.auto_augment, re_prob=cfg.re_prob, hflip=cfg.hflip)
        self.tf = create_transform(**kw)

    def __call__(self, img, seed: int) -> torch.Tensor:
        with seeded(seed):
            return self.tf(_to_pil(img))


# ---------------------------------------------------------------------- datasets
class SplitDataset(Dataset):
    """One split; ``__getitem__`` returns (image, target, index) with augmentation seeded by
    (run seed, epoch, index). Call :meth:`set_epoch` before each epoch."""

    def __init__(self, items: Sequence, targets: Sequence[int], transform: Callable, seed: int,
                 num_classes: int, name: str):
        self.items, self.targets = items, np.asarray(targets, dtype=np.int64)
        self.transform, self.seed, self.num_classes, self.name = transform, seed, num_classes, name
        self.epoch = 0

    def set_epoch(self, epoch: int):
        self.epoch = int(epoch)

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        """``index``, or ``(index, copy)`` from a sampler with repeated augmentation: copy 0 is the sample's
        own augmentation, every further copy draws its own."""
        index, copy = index if isinstance(index, tuple) else (index, 0)
        img = self.transform(self.items[index], self.sample_seed(index, copy))
        return img, int(self.targets[index]), index

    def sample_seed(self, index: int, copy: int = 0) -> int:
        """The seed of sample ``index``'s augmentation this epoch (``copy`` > 0: a repeated copy's own)."""
        return sample_seed(self.seed, self.epoch, index, *((copy,) if copy else ()))

    def __getitems__(self, keys: List) -> List[Tuple[torch.Tensor, int, int]]:
        """A batch at once (the DataLoader's batched fetch): a transform with ``batch`` (in-memory arrays) runs
        once over the batch, each sample still drawn from its own seed, so the images equal ``self[key]``."""
        batch = getattr(self.transform, "batch", None)
        if batch is None or not isinstance(self.items, np.ndarray):
            return [self[k] for k in keys]
        pairs = [k if isinstance(k, tuple) else (k, 0) for k in keys]
        idx = np.fromiter((i for i, _ in pairs), dtype=np.int64, count=len(pairs))
        x = batch(self.items[idx], [self.sample_seed(i, c) for i, c in pairs])
        return [(x[j], int(self.targets[i]), i) for j, (i, _) in enumerate(pairs)]


class EpochSampler(Sampler):
    """Epoch order = a permutation drawn from (seed, epoch); sharded by rank for multi-process runs.
    ``repeats`` > 1 gives repeated augmentation (each index appears ``repeats`` times, spread over ranks)."""

    def __init__(self, n: int, seed: int, shuffle: bool = True, rank: int = 0, world: int = 1,
                 repeats: int = 1):
        self.n, self.seed, self.shuffle, self.rank, self.world, self.repeats = n, seed, shuffle, rank, world, repeats
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0):
        """``start``: skip this rank's first ``start`` samples of the epoch (resume inside an epoch)."""
        self.epoch = int(epoch)
        self.start = int(start)

    def order(self) -> List[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, 0x5A17))
            idx = torch.randperm(self.n, generator=g).tolist()
        else:
            idx = list(range(self.n))
        if self.repeats > 1:   # (index, copy): each copy of an image gets its own augmentation
            idx = [(i, c) for i in idx for c in range(self.repeats)]
        idx += idx[: math.ceil(len(idx) / self.world) * self.world - len(idx)]   # same count on every rank
        return idx[self.rank::self.world][: len(self)]

    def __iter__(self) -> Iterator[int]:
        return iter(self.order()[self.start:])

    def __len__(self) -> int:
        return math.ceil(self.n / self.world)   # an epoch stays n images in total, repeated or not


# ---------------------------------------------------------------------- the sources
Parts = Dict[str, Tuple[Sequence, np.ndarray]]


@dataclass(frozen=True)
class Source:
    """A dataset vitkd reads: ``read(cfg)`` gives its ``{"train", "val", "test"}`` (items, targets) and its class
    count; ``num_classes`` is known without reading (None: counted from ``data.root``); ``subset(targets, k)`` picks
    ``data.train_subset``'s indices of the train split; ``files`` says its items are image files (read with PIL)."""
    read: Callable[[DataCfg], Tuple[Parts, int]]
    num_classes: Optional[int]
    subset: Callable[[np.ndarray, int], np.ndarray]
    files: bool = False


SOURCES: Dict[str, Source] = {}


@dataclass(frozen=True)
class TrainSplit:
    """A set that replaces a dataset's train split when the data key it was registered under is set (the val and
    test splits stay the dataset's): ``read(value, num_classes) -> (items, targets)``; ``fingerprint(value)``: what
    names its images (a store of teacher outputs records it)."""
    read: Callable[[Any, int], Tuple[Any, Any]]
    fingerprint: Callable[[Any], Any]


# data key (declared with vitkd.config.register_section on DataCfg) -> the set it reads; registered by the method
# that writes such sets (vitkd.methods.datafree)
TRAIN_SPLITS: Dict[str, TrainSplit] = {}


def register_train_split(key: str, read: Callable[[Any, int], Tuple[Any, Any]],
                         fingerprint: Callable[[Any], Any]) -> None:
    """``data.<key>`` names a set that replaces the train split (see :class:`TrainSplit`)."""
    TRAIN_SPLITS[key] = TrainSplit(read, fingerprint)



def register_source(name: str, num_classes: Optional[int], subset: Optional[Callable] = None, files: bool = False):
    """Register ``fn(cfg) -> (parts, num_classes)`` as ``data.name: name``."""
    def wrap(fn):
        SOURCES[name] = Source(fn, num_classes, subset or _random_subset, files)
        return fn
    return wrap


def _random_subset(targets: np.ndarray, k: int) -> np.ndarray:
    """The first ``k`` of one fixed permutation, sorted (nested: a smaller subset is inside a larger one)."""
    return _subset(len(targets), k, DIGITS_SPLIT_SEED + 1)


def _stratified_subset(targets: np.ndarray, k: int) -> np.ndarray:
    return np.sort(fashion_mnist.subset_order(targets)[:k])


@register_source("digits", 10)
def _read_digits(cfg: DataCfg) -> Tuple[Parts, int]:
    return _digits_splits(), 10


@register_source("fashion_mnist", 10, subset=_stratified_subset)
def _read_fashion_mnist(cfg: DataCfg) -> Tuple[Parts, int]:
    return fashion_mnist.splits(cfg.root), len(fashion_mnist.CLASSES)


def _read_cifar(cfg: DataCfg) -> Tuple[Parts, int]:
    (xtr, ytr), (xte, yte), n_cls = _cifar(cfg)
    parts = _holdout(xtr, ytr, cfg.val_size)
    parts["test"] = (xte, yte)
    return parts, n_cls


register_source("cifar10", 10)(_read_cifar)
register_source("cifar100", 100)(_read_cifar)


@register_source("imagefolder", None, files=True)
def _read_imagefolder(cfg: DataCfg) -> Tuple[Parts, int]:
    train_s, val_s, n_cls = _imagefolder(cfg)
    items = np.empty(len(train_s), dtype=object)
    items[:] = train_s
    parts = _holdout(items, np.array([t for _, t in train_s]), cfg.val_size)
    test_items = np.empty(len(val_s), dtype=object)
    test_items[:] = val_s
    parts["test"] = (test_items, np.array([t for _, t in val_s]))
    return parts, n_cls


def _source(cfg: DataCfg) -> Source:
    try:
        return SOURCES[cfg.name]
    except KeyError:
        raise ConfigError(f"data.name: unknown dataset '{cfg.name}' (known: {', '.join(sorted(SOURCES))})") from None


def _subset(n: int, k: Optional[int], seed: int) -> np.ndarray:
    idx = np.random.RandomState(seed).permutation(n)
    return np.sort(idx[:k]) if k is not None else np.arange(n)


def class_count(cfg: DataCfg) -> int:
    """The number of classes of a dataset without reading it (what a dry build needs)."""
    known = _source(cfg).num_classes
    if known is not None:
        return known
    train = Path(cfg.root) / "train"
    return sum(1 for p in train.iterdir() if p.is_dir()) if train.is_dir() else 0


def build_datasets(cfg: DataCfg, spec: DataSpec, seed: int) -> Tuple[Dict[str, SplitDataset], int]:
    """Returns ({'train','val','test'} datasets, num_classes)."""
    source = _source(cfg)

    def make(split, items, targets, n_cls):
        train = split == "train"
        if cfg.augment == "timm" or source.files:   # items that are files: the PIL path
            tf = TimmAugment(spec, train and cfg.augment != "none", cfg)
        else:
            tf = LightAugment(spec, train and cfg.augment == "light", cfg.aug_strength, cfg.hflip)
        return SplitDataset(items, targets, tf, seed, n_cls, f"{cfg.name}/{split}")

    parts, n_cls = source.read(cfg)
    for key, split in TRAIN_SPLITS.items():   # a declared data key that replaces the train split (val/test stay)
        if section(cfg, key) is not None:
            parts["train"] = split.read(section(cfg, key), n_cls)
    xtr, ytr = parts["train"]
    if cfg.train_subset is not None:
        if cfg.train_subset > len(ytr):
            raise ConfigError(f"data.train_subset: {cfg.train_subset} exceeds the {len(ytr)} train images")
        keep = source.subset(np.asarray(ytr), cfg.train_subset)
        parts["train"] = (xtr[keep], ytr[keep])
    return {k: make(k, x, y, n_cls) for k, (x, y) in parts.items()}, n_cls


def _holdout(items, targets, val_size: int):
    if val_size >= len(targets):
        raise ConfigError(f"data.val_size: {val_size} leaves no train images (train split has {len(targets)})")
    perm = np.random.RandomState(DIGITS_SPLIT_SEED).permutation(len(targets))
    val, train = np.sort(perm[:val_size]), np.sort(perm[val_size:])
    return {"train": (items[train], targets[train]), "val": (items[val], targets[val])}


# ---------------------------------------------------------------------- per-sample mixup / cutmix
@dataclass
class MixSpec:
    """Mixup / CutMix settings (timm's semantics: ``prob`` to mix at all, ``switch_prob`` to use CutMix
    when both are on, label smoothing folded into the soft target)."""
    mixup: float = 0.0
    cutmix: float = 0.0
    prob: float = 1.0
    switch_prob: float = 0.5
    label_smoothing: float = 0.0

    @property
    def on(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0


def mix_partners(n: int, seed: int, epoch: int) -> np.ndarray:
    """Each train index's mixing partner in ``epoch``: its successor in a seeded random cycle through all
    ``n`` indices. It depends on (seed, epoch, index) only, never on the batch size or the process count."""
    order = np.random.RandomState(sample_seed(seed, epoch, 0x3A1) % (2 ** 32)).permutation(n)
    partner = np.empty(n, dtype=np.int64)
    partner[order] = np.roll(order, -1)
    return partner


def mix_draw(spec: MixSpec, seed: int, epoch: int, index: int, hw: Tuple[int, int],
             copy: int = 0) -> Tuple[float, Optional[tuple]]:
    """(lambda, CutMix box or None) of one sample, drawn from (seed, epoch, index[, copy]) alone."""
    rng = np.random.RandomState(sample_seed(seed, epoch, index, 0x31, *((copy,) if copy else ())))
    if rng.rand() >= spec.prob:
        return 1.0, None
    use_cutmix = spec.cutmix > 0 and (spec.mixup <= 0 or rng.rand() < spec.switch_prob)
    alpha = spec.cutmix if use_cutmix else spec.mixup
    lam = float(rng.beta(alpha, alpha))
    if not use_cutmix:
        return lam, None
    H, W = hw
    ratio = math.sqrt(1 - lam)
    ch, cw = int(H * ratio), int(W * ratio)
    cy, cx = int(rng.randint(0, H)), int(rng.randint(0, W))
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, H)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, W)
    lam = 1.0 - (y1 - y0) * (x1 - x0) / float(H * W)   # the area actually pasted
    return lam, (y0, y1, x0, x1)


def smoothed_one_hot(target: int, num_classes: int, smoothing: float) -> torch.Tensor:
    off = smoothing / num_classes
    t = torch.full((num_classes,), off, dtype=torch.float32)
    t[target] = 1.0 - smoothing + off
    return t


def train_view(base: "SplitDataset", train_cfg) -> Dataset:
    """The train split as training reads it: mixed per sample (:class:`MixedDataset`) when ``train_cfg`` turns
    mixup or CutMix on. The one definition the training loop and the stored-logits writer share."""
    mix = MixSpec(train_cfg.mixup, train_cfg.cutmix, train_cfg.mixup_prob, label_smoothing=train_cfg.label_smoothing)
    return MixedDataset(base, mix) if mix.on else base


class MixedDataset(Dataset):
    """A train split whose items are mixed with their partner (:func:`mix_partners`) per sample:
    ``(image, target, index, soft_target)``. Both images carry their own seeded augmentation."""

    def __init__(self, base: SplitDataset, spec: MixSpec):
        self.base, self.spec = base, spec
        self.epoch = 0
        self._partners = mix_partners(len(base), base.seed, 0)

    def set_epoch(self, epoch: int):
        self.epoch = int(epoch)
        self.base.set_epoch(epoch)
        self._partners = mix_partners(len(self.base), self.base.seed, self.epoch)

    def __len__(self):
        return len(self.base)

    def __getitem__(self, index):
        x, y, _ = self.base[index]
        index, copy = index if isinstance(index, tuple) else (index, 0)
        j = int(self._partners[index])
        lam, box = mix_draw(self.spec, self.base.seed, self.epoch, index, tuple(x.shape[-2:]), copy)
        n, s = self.base.num_classes, self.spec.label_smoothing
        soft = smoothed_one_hot(y, n, s)
        if lam < 1.0:
            xj, yj, _ = self.base[j]
            if box is None:
                x = x * lam + xj * (1.0 - lam)
            else:
                y0, y1, x0, x1 = box
                x = x.clone()
                x[:, y0:y1, x0:x1] = xj[:, y0:y1, x0:x1]
            soft = soft * lam + smoothed_one_hot(yj, n, s) * (1.0 - lam)
        return x, y, index, soft
