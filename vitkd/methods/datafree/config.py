"""The ``vitkd synthesize`` config: the teacher, the dataset it was trained on, and the inversion settings."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Union

from ...config import (ConfigError, DataCfg, TeacherCfg, apply_overrides, build_dataclass, check_name, check_paths,
                      check_seed, read_yaml, section)

# the data key of a run config that trains on a synthetic set (the train split replaced; val/test stay real)
DATA_KEY = "synthetic"

__all__ = ["InversionCfg", "SynthCfg", "load_synth_config", "parse_synth_config"]


@dataclass
class InversionCfg:
    """DeepInversion settings (defaults: the CIFAR-10 reference's values where it has one)."""
    images: int = 256                  # images in the synthetic set (labels cycle through the classes)
    batch_size: int = 256              # images optimised together (BN statistics are batch statistics)
    iterations: int = 2000             # Adam steps per batch
    lr: float = 0.05                   # Adam learning rate, cosine-decayed to 0 over the iterations
    betas: List[float] = field(default_factory=lambda: [0.5, 0.9])   # Adam betas
    ce: float = 1.0                    # weight of CE(T(x), y)
    r_bn: float = 10.0                 # weight of the BN-statistics loss
    first_bn_mult: float = 10.0        # s_1: the first BN layer's multiplier (1 for every other layer)
    tv_l2: float = 2.5e-5              # total variation, L2 norms of the four difference tensors
    tv_l1: float = 0.0                 # total variation, mean absolute differences / 255
    l2: float = 0.0                    # l2 prior on the images
    jitter: int = 2                    # random roll of up to +-jitter pixels each step
    flip: bool = True                  # random horizontal flip each step (p = 0.5)
    grayscale: bool = False            # one channel, repeated over the model's channels (digits)
    competition: float = 0.0           # Adaptive DeepInversion: weight of 1 - JS(student, teacher)
    competition_T: float = 3.0
    diversity: float = 0.0             # vitkd's reading of DearKD's intra-divergence loss (see losses.py)
    diversity_margin: float = 2.0      # only images whose teacher margin exceeds this are pushed apart

    def __post_init__(self):
        for k in ("images", "batch_size", "iterations"):
            if isinstance(getattr(self, k), bool) or getattr(self, k) <= 0:
                raise ConfigError(f"synth.{k}: must be > 0, got {getattr(self, k)}")
        if not self.lr > 0:
            raise ConfigError(f"synth.lr: must be > 0, got {self.lr}")
        for k in ("ce", "r_bn", "first_bn_mult", "tv_l2", "tv_l1", "l2", "competition", "diversity"):
            if getattr(self, k) < 0:
                raise ConfigError(f"synth.{k}: must be >= 0, got {getattr(self, k)}")
        if self.jitter < 0:
            raise ConfigError(f"synth.jitter: must be >= 0, got {self.jitter}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"synth.betas: expected two numbers in [0, 1), got {self.betas}")
        if not self.competition_T > 0:
            raise ConfigError(f"synth.competition_T: must be > 0, got {self.competition_T}")


@dataclass
class SynthCfg:
    teacher: TeacherCfg                                  # a CNN with BatchNorm (run folder or weights file)
    data: DataCfg = field(default_factory=DataCfg)       # the teacher's dataset: classes, input size, eval splits
    synth: InversionCfg = field(default_factory=InversionCfg)
    student: Optional[TeacherCfg] = None                 # the competing student (needed when synth.competition > 0)
    seed: int = 0
    name: Optional[str] = None
    threads: Optional[int] = None

    def __post_init__(self):
        if self.synth.competition > 0 and self.student is None:
            raise ConfigError("student: synth.competition > 0 needs a student to compete with (student.checkpoint)")
        if section(self.data, DATA_KEY) is not None:
            raise ConfigError(f"data.{DATA_KEY}: a synthesis config names the teacher's real dataset, not a synthetic "
                              f"set")
        if self.threads is not None and self.threads <= 0:
            raise ConfigError(f"threads: must be > 0, got {self.threads}")
        check_seed(self.seed, "seed")
        if self.name is not None:   # the default folder is runs/synth/<name>
            check_name(self.name, "name")


def parse_synth_config(raw: dict, base: Union[str, Path] = ".") -> SynthCfg:
    cfg = build_dataclass(SynthCfg, raw, "", base)
    check_paths(cfg)
    return cfg


def load_synth_config(path: Union[str, Path], overrides: Optional[List[str]] = None) -> SynthCfg:
    raw = apply_overrides(read_yaml(path), overrides or [])
    if not raw:
        raise ConfigError(f"{path}: the config is empty (a synthesis config needs at least teacher.checkpoint)")
    return parse_synth_config(raw, Path(path).parent)
