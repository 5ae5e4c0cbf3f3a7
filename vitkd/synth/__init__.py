"""Data-free distillation: synthetic training sets inverted from a BatchNorm teacher (DeepInversion).

* :mod:`.config`    the ``vitkd synthesize`` config (teacher, its dataset, inversion settings)
* :mod:`.losses`    BN statistics (hooks), image priors, competition (ADI), intra-divergence (vitkd's DearKD reading)
* :mod:`.inversion` one batch: jitter + flip, Adam with cosine lr, clipping, best-loss batch kept
* :mod:`vitkd.datasets.synthetic` the on-disk set (ImageFolder of PNGs + manifest), atomic and resumable
* :mod:`.run`       ``synthesize``: fingerprint, cache, batches

A run config trains on a set with ``data.synthetic: DIR`` (the val/test splits stay the real dataset's).
"""
from .config import InversionCfg, SynthCfg, load_synth_config, parse_synth_config
from .run import fingerprint, synthesize
from ..datasets.synthetic import SyntheticStore, read_synthetic

__all__ = ["InversionCfg", "SynthCfg", "load_synth_config", "parse_synth_config", "synthesize", "fingerprint",
           "SyntheticStore", "read_synthetic"]
