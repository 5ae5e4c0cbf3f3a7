"""Profiling, split by job: :mod:`.macs` (params and MACs with attention counted, cross-checked),
:mod:`.throughput` (img/s), :mod:`.cost` (training cost per image of a distillation step) and
:mod:`.report` (model-level profiles and the one text formatter)."""
from .cost import distillation_cost, training_cost_per_image
from .macs import (BACKWARD_FACTOR, MATMUL_OPS, NORM_OPS, SDPA_FLOP_FORMULAS, MacReport, attention_flop_mapping,
                   count_macs, count_params, sdpa_backward_macs, sdpa_macs)
from .report import format_report, profile_model
from .throughput import measure_throughput

__all__ = ["MacReport", "count_params", "count_macs", "measure_throughput", "profile_model", "training_cost_per_image",
           "distillation_cost", "format_report", "BACKWARD_FACTOR", "NORM_OPS",
           "MATMUL_OPS", "SDPA_FLOP_FORMULAS", "attention_flop_mapping", "sdpa_macs", "sdpa_backward_macs"]
