"""vitkd's version, and the versions of what a run depends on (nothing imports the package root for them)."""
from __future__ import annotations

import platform
from typing import Dict

__version__ = "0.1.0"

__all__ = ["__version__", "versions"]


def versions() -> Dict[str, str]:
    """vitkd's and its main dependencies' versions, as run folders and suite reports record them."""
    import numpy as np
    import timm
    import torch
    import torchvision
    return {"vitkd": __version__, "torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
            "timm": timm.__version__, "numpy": np.__version__, "python": platform.python_version()}
