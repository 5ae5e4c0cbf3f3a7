"""Fashion-MNIST (Xiao, Rasul and Vollgraf 2017; Zalando, MIT licence): 60,000 train and 10,000 test images,
28x28 grayscale, 10 balanced classes, in four IDX files.

**Where it is read from** (the first folder holding all four files, each plain or gzip-compressed):

* ``data.root`` when a config sets it: the folder itself, or torchvision's layout ``<root>/FashionMNIST/raw``
  (only there: a root that lacks a file is an error naming it);
* else the vitkd cache, ``$VITKD_HOME/datasets/fashion_mnist`` (where ``vitkd data get`` downloads to);
* else Debian's package ``dataset-fashion-mnist``: ``/usr/share/datasets/fashion-mnist``.

**Verification.** Each file's decompressed content must have the upstream MD5 (:data:`FILES`; Debian re-gzipped
the files, so only the decompressed content is comparable). A missing, truncated or altered file is one line naming
it. The verified arrays are cached once per set of files (``$VITKD_HOME/datasets/cache/``, keyed by the files'
paths, sizes and modification times; written atomically, read without pickle), so later runs skip the check.

**Getting the files** (:func:`get`, ``vitkd data get fashion_mnist``): the files already found; else, as root with
apt, Debian's package; else a download of the four ``.gz`` files from torchvision's mirrors (or ``--mirror``) into
the cache, each checked by its decompressed MD5 before it gets its final name (:mod:`vitkd.download`; limits from
``VITKD_DATA_DEADLINE``, ``VITKD_DATA_MAX_BYTES``, ``VITKD_DATA_RETRIES``, ``VITKD_DATA_BACKOFF``,
``VITKD_DATA_TIMEOUT``).

**Splits.** ``test`` is the official 10,000. ``val`` is 5,000 images carved once from the official train set,
stratified: for each class ``c`` (in label order), the first 500 of ``numpy.random.RandomState(SPLIT_SEED)
.permutation`` over that class's train indices (in file order), one generator drawn class after class. ``train``
is the other 55,000, in file order. ``data.train_subset: k`` takes the first ``k`` of one fixed interleaving of
the 55,000 (:func:`subset_order`), so subsets are stratified (each class within one image of ``k/10``) and nested.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from ..config import DataError, vitkd_home
from ..download import DownloadError, Limits, fetch, limits_from_env
from ..io import atomic_writer
from ..rundir import exclusive
from .idx import parse_idx, read_idx_bytes

__all__ = ["NAME", "FILES", "CLASSES", "DEBIAN_DIR", "DEBIAN_PACKAGE", "SPLIT_SEED", "VAL_PER_CLASS", "Found",
           "find", "load", "splits", "subset_order", "get", "cache_folder", "status"]

NAME = "fashion_mnist"


@dataclass(frozen=True)
class IdxFile:
    key: str        # train_images, train_labels, test_images, test_labels
    name: str       # the standard file name, uncompressed
    md5: str        # of the decompressed content (upstream's)
    shape: Tuple[int, ...]


FILES = (
    IdxFile("train_images", "train-images-idx3-ubyte", "f4a8712d7a061bf5bd6d2ca38dc4d50a", (60000, 28, 28)),
    IdxFile("train_labels", "train-labels-idx1-ubyte", "9018921c3c673c538a1fc5bad174d6f9", (60000,)),
    IdxFile("test_images", "t10k-images-idx3-ubyte", "8181f5470baa50b63fa0f6fddb340f0a", (10000, 28, 28)),
    IdxFile("test_labels", "t10k-labels-idx1-ubyte", "15d484375f8d13e6eb1aabb0c3f46965", (10000,)),
)
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
DEBIAN_PACKAGE = "dataset-fashion-mnist"
TORCHVISION_LAYOUT = Path("FashionMNIST") / "raw"
SPLIT_SEED = 20170825          # the date of the Fashion-MNIST paper: the validation split and the subset order
VAL_PER_CLASS = 500
CACHE_FORMAT = 1
MAX_DOWNLOAD_BYTES = 64 << 20  # one file's ceiling (VITKD_DATA_MAX_BYTES): the largest .gz is about 26 MB


@dataclass(frozen=True)
class Found:
    """The four files in one folder: ``where`` says which kind of place it is."""
    where: str
    folder: Path
    paths: Dict[str, Path]


def cache_folder() -> Path:
    """Where ``vitkd data get`` downloads to: ``$VITKD_HOME/datasets/fashion_mnist``."""
    return vitkd_home() / "datasets" / NAME


def _in_folder(folder: Path) -> Dict[str, Optional[Path]]:
    """Each file in ``folder``, uncompressed or ``.gz`` (the uncompressed one first), or None."""
    out: Dict[str, Optional[Path]] = {}
    for f in FILES:
        out[f.key] = next((p for p in (folder / f.name, folder / f"{f.name}.gz") if p.is_file()), None)
    return out


def places(root: Optional[str]) -> List[Tuple[str, Path]]:
    """The folders looked in, in order (see the module docstring)."""
    if root is not None:
        return [("data.root", Path(root)), ("data.root (torchvision layout)", Path(root) / TORCHVISION_LAYOUT)]
    return [("vitkd cache", cache_folder()), (f"Debian package {DEBIAN_PACKAGE}", DEBIAN_DIR)]


def find(root: Optional[str] = None) -> Optional[Found]:
    """The first folder holding all four files, or None. A ``data.root`` holding some but not all of them is an
    error naming the first missing file."""
    for where, folder in places(root):
        got = _in_folder(folder)
        if all(got.values()):
            return Found(where, folder, {k: p for k, p in got.items() if p is not None})
        if root is not None and any(got.values()):
            missing = next(f for f in FILES if got[f.key] is None)
            raise DataError(f"data.root: {folder / missing.name} (or .gz) not found: Fashion-MNIST needs its four "
                            f"IDX files in one folder")
    return None


def not_found_message(root: Optional[str]) -> str:
    looked = ", ".join(str(folder) for _, folder in places(root))
    return (f"data.name: fashion_mnist: its IDX files are not in {looked}; get them with "
            f"`vitkd data get fashion_mnist`")


def _read(path: Path, spec: IdxFile) -> Tuple[np.ndarray, str]:
    """The array in ``path``, its format and shape checked against ``spec``, and its decompressed MD5."""
    data = read_idx_bytes(path)
    arr = parse_idx(data, path)
    if arr.shape != spec.shape or arr.dtype != np.uint8:
        raise DataError(f"{path}: holds {arr.dtype} {list(arr.shape)}, Fashion-MNIST's {spec.name} holds uint8 "
                        f"{list(spec.shape)}")
    return arr, hashlib.md5(data).hexdigest()


def _check_md5(path: Path, spec: IdxFile, digest: str) -> None:
    if digest != spec.md5:
        raise DataError(f"{path}: not Fashion-MNIST's {spec.name} (decompressed MD5 {digest}, expected {spec.md5}): "
                        f"altered or another dataset")


def verify(path: Path, spec: IdxFile) -> np.ndarray:
    """The array in ``path`` after checking its format, shape and decompressed MD5 against ``spec``: else one
    line naming the file."""
    arr, digest = _read(path, spec)
    _check_md5(path, spec, digest)
    return arr


def _cache_file(found: Found) -> Path:
    h = hashlib.sha256(f"vitkd {NAME} cache {CACHE_FORMAT}".encode())
    for f in FILES:
        p = found.paths[f.key].resolve()
        st = p.stat()
        h.update(f"\0{p}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}".encode())
    return vitkd_home() / "datasets" / "cache" / f"{NAME}-{h.hexdigest()[:20]}.npz"


def _read_cache(path: Path) -> Optional[Dict[str, np.ndarray]]:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {f.key: z[f.key] for f in FILES}
    except Exception:   # absent, cut, or not ours: verify the files again
        return None
    if any(arrays[f.key].shape != f.shape or arrays[f.key].dtype != np.uint8 for f in FILES):
        return None
    return arrays


def load(root: Optional[str] = None, log: Callable[[str], None] = lambda m: None) -> Dict[str, np.ndarray]:
    """The four verified arrays by key (``train_images`` [60000, 28, 28] uint8, ...), from the cache of verified
    arrays when the same files were verified before."""
    found = find(root)
    if found is None:
        raise DataError(not_found_message(root))
    cache = _cache_file(found)
    arrays = _read_cache(cache)
    if arrays is not None:
        return arrays
    read = {f.key: _read(found.paths[f.key], f) for f in FILES}   # every file's format first, then the contents
    for f in FILES:
        _check_md5(found.paths[f.key], f, read[f.key][1])
    arrays = {key: arr for key, (arr, _) in read.items()}
    with contextlib.suppress(OSError):   # a cache that cannot be written: verify again next time
        with atomic_writer(cache) as fh:
            np.savez(fh, **arrays)
        log(f"fashion_mnist: verified {found.folder} ({found.where}); cached in {cache}")
    return arrays


def val_indices(train_labels: np.ndarray) -> np.ndarray:
    """The 5,000 official-train indices of the validation split (sorted; see the module docstring)."""
    rng = np.random.RandomState(SPLIT_SEED)
    picked = []
    for c in range(len(CLASSES)):
        idx = np.flatnonzero(train_labels == c)
        picked.append(idx[rng.permutation(len(idx))[:VAL_PER_CLASS]])
    return np.sort(np.concatenate(picked))


def subset_order(labels: np.ndarray) -> np.ndarray:
    """A fixed order of ``labels``' indices whose every prefix is stratified: round ``r`` takes each class's
    ``r``-th image of a seeded per-class permutation, the classes in a seeded order."""
    rng = np.random.RandomState(SPLIT_SEED + 1)
    classes = rng.permutation(len(CLASSES))
    rank = np.empty(len(labels), dtype=np.int64)
    for c in range(len(CLASSES)):
        idx = np.flatnonzero(labels == c)
        rank[idx[rng.permutation(len(idx))]] = np.arange(len(idx))
    position = np.empty(len(CLASSES), dtype=np.int64)
    position[classes] = np.arange(len(CLASSES))
    return np.lexsort((position[labels], rank))


def splits(root: Optional[str] = None) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """``{"train": (images, labels), "val": ..., "test": ...}``: 55,000 / 5,000 / 10,000, images uint8 [N, 28, 28]."""
    a = load(root)
    x, y = a["train_images"], a["train_labels"]
    val = val_indices(y)
    keep = np.ones(len(y), dtype=bool)
    keep[val] = False
    return {"train": (x[keep], y[keep]), "val": (x[val], y[val]), "test": (a["test_images"], a["test_labels"])}


# ---------------------------------------------------------------------- getting the files
def can_install() -> bool:
    """Debian's package can be installed here: running as root, with apt-get on the PATH."""
    return hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get") is not None


def _install(log: Callable[[str], None]) -> Optional[str]:
    """``apt-get install`` the package: None when it worked, else why not (one phrase)."""
    log(f"fashion_mnist: installing Debian's {DEBIAN_PACKAGE} (apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        proc = subprocess.run(["apt-get", "install", "-y", "-q", DEBIAN_PACKAGE], env=env, capture_output=True,
                              text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"apt-get failed ({type(e).__name__})"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["no output"])[-1]
        return f"apt-get install {DEBIAN_PACKAGE} exited {proc.returncode} ({last.strip()[:160]})"
    return None


def torchvision_mirrors() -> List[str]:
    """torchvision's own mirrors for Fashion-MNIST (its class attribute)."""
    from torchvision.datasets import FashionMNIST
    return list(FashionMNIST.mirrors)


def _download(mirrors: List[str], log: Callable[[str], None], progress: Optional[bool]) -> Optional[str]:
    """Each missing ``.gz`` into the cache folder from the first mirror that serves it verified; None when all four
    are there, else what went wrong last (one phrase)."""
    limits = limits_from_env("VITKD_DATA", defaults=Limits(max_bytes=MAX_DOWNLOAD_BYTES))
    folder = cache_folder()
    with exclusive(folder, "vitkd data get"):   # one download into the cache at a time
        return _download_into(folder, mirrors, limits, log, progress)


def _download_into(folder: Path, mirrors: List[str], limits: Limits, log: Callable[[str], None],
                   progress: Optional[bool]) -> Optional[str]:
    for spec in FILES:
        if _in_folder(folder)[spec.key] is not None:
            continue
        problem = None
        for n, mirror in enumerate(mirrors):
            url = mirror.rstrip("/") + f"/{spec.name}.gz"

            def check(part: Path, spec=spec) -> Optional[str]:
                try:
                    verify(part, spec)
                except DataError as e:
                    return str(e).split(": ", 1)[-1]
                return None
            try:
                fetch(url, folder / f"{spec.name}.gz", check, limits=limits, progress=progress, log=log)
                problem = None
                break
            except DownloadError as e:
                problem = str(e)
                if n + 1 < len(mirrors):
                    log(f"fashion_mnist: {problem}; trying the next mirror")
        if problem is not None:
            return problem
    return None


def get(mirrors: Optional[List[str]] = None, install: bool = True, log: Callable[[str], None] = print,
        progress: Optional[bool] = None) -> Found:
    """Make the files available and verified, the cheapest way first: files already found (cache or Debian's
    package); else ``apt-get install`` when running as root with apt (unless ``mirrors`` are given or
    ``install`` is False); else a download from ``mirrors`` (default: torchvision's) into :func:`cache_folder`,
    each file checked by its decompressed MD5 before it gets its final name. Offline and unprivileged, one line
    says what to run."""
    found = None if mirrors else find(None)
    if found is None and not mirrors and install and can_install():
        why = _install(log)
        found = find(None)
        if found is None:
            log(f"fashion_mnist: {why or 'the package installed no files'}; trying the download mirrors")
    if found is None:
        problem = _download(mirrors or torchvision_mirrors(), log, progress)
        found = find(None)
        if found is None or problem is not None:
            raise DataError(f"fashion_mnist: cannot get the files ({problem or 'nothing downloaded'}); as root run "
                            f"`apt-get install {DEBIAN_PACKAGE}`, or download the four .gz files into "
                            f"{cache_folder()}, or pass --mirror URL")
    load(None, log=log)
    return found


def status() -> Dict[str, object]:
    """Where the files are found (without data.root) and whether they verified (from the cache of verified arrays,
    else by verifying now)."""
    found = find(None)
    if found is None:
        return {"dataset": NAME, "found": None, "verified": False, "looked_in": [str(f) for _, f in places(None)]}
    try:
        load(None)
        verified, problem = True, None
    except DataError as e:
        verified, problem = False, str(e)
    out = {"dataset": NAME, "found": str(found.folder), "where": found.where, "verified": verified}
    if problem:
        out["problem"] = problem
    return out
