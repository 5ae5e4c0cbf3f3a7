"""Datasets read from their standard files: where they are found, how they are verified, how they are fetched.

* :mod:`vitkd.datasets.idx`: the IDX format (MNIST, Fashion-MNIST), read and checked;
* :mod:`vitkd.datasets.fashion_mnist`: Fashion-MNIST from Debian's package, torchvision's layout, ``data.root`` or
  the vitkd cache, verified by the decompressed files' MD5, with its fixed stratified validation split.
"""
from . import fashion_mnist

__all__ = ["FETCHABLE", "BUILT_IN", "dataset_status"]

# the datasets `vitkd data get` fetches: module with get(mirrors, install, log, progress) and status()
FETCHABLE = {"fashion_mnist": fashion_mnist}
# where the others come from
BUILT_IN = {"digits": "shipped inside scikit-learn (no files)",
            "cifar10": "read from data.root (torchvision's python format; never downloaded)",
            "cifar100": "read from data.root (torchvision's python format; never downloaded)",
            "imagefolder": "read from data.root (root/train/<class>/*, root/val/<class>/*)"}


def dataset_status(name: str) -> dict:
    """Where ``name`` is found and whether it verified (fetchable datasets), or where it comes from."""
    if name in FETCHABLE:
        return FETCHABLE[name].status()
    return {"dataset": name, "source": BUILT_IN[name]}
