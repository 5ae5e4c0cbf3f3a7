"""Data-free distillation: synthetic training sets inverted from a BatchNorm teacher (DeepInversion).

* :mod:`.config`    the ``vitkd synthesize`` config (teacher, its dataset, inversion settings)
* :mod:`.losses`    BN statistics (hooks), image priors, competition (ADI), intra-divergence (vitkd's DearKD reading)
* :mod:`.inversion` one batch: jitter + flip, Adam with cosine lr, clipping, best-loss batch kept
* :mod:`vitkd.methods.datafree.store` the on-disk set (ImageFolder of PNGs + manifest), atomic and resumable
* :mod:`.run`       ``synthesize``: fingerprint, cache, batches

A run config trains on a set with ``data.synthetic: DIR`` (the val/test splits stay the real dataset's).
"""
from typing import Optional

from ...config import DataCfg, register_section
from ...data import register_train_split
from .config import DATA_KEY, InversionCfg, SynthCfg, load_synth_config, parse_synth_config
from .run import fingerprint, synthesize
from .store import SyntheticStore, read_synthetic, set_fingerprint

__all__ = ["InversionCfg", "SynthCfg", "load_synth_config", "parse_synth_config", "synthesize", "fingerprint",
           "SyntheticStore", "read_synthetic"]

register_section(DataCfg, DATA_KEY, Optional[str], path=True)
register_train_split(DATA_KEY, read_synthetic, set_fingerprint)
from . import suite  # noqa: F401,E402  (a suite's synthetic sets: their job kind and suite keys)
from . import commands  # noqa: F401,E402  (vitkd synthesize)
