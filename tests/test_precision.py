"""``train.precision`` (issue 28): fp32 | bf16 for the student step, the teachers and logit stores, on any device.

It is a config key, never chosen from the CPU: part of the run's digest (fp32, the default, leaves old digests
alone), recorded in ``run.yaml``, and part of a logit store's fingerprint when the teachers ran in bf16."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from vitkd.config import ConfigError, parse_config, step_bf16, to_dict
from vitkd.engine import train
from vitkd.rundir import config_digest

from test_bad_input import tiny


def _train(raw, out):
    threads = torch.get_num_threads()
    try:
        return train(parse_config(raw), out, log=lambda m: None)
    finally:
        torch.set_num_threads(threads)


def test_precision_is_checked_and_only_bf16_changes_the_digest():
    with pytest.raises(ConfigError, match="train.precision"):
        parse_config(tiny(train={"precision": "fp16"}))
    base = config_digest(to_dict(parse_config(tiny())))
    assert config_digest(to_dict(parse_config(tiny(train={"precision": "fp32"})))) == base
    assert config_digest(to_dict(parse_config(tiny(train={"precision": "bf16"})))) != base
    assert not step_bf16("fp32", True, "cpu") and step_bf16("fp32", True, "cuda") and step_bf16("bf16", False, "cpu")


def test_a_bf16_run_on_the_cpu_runs_its_step_in_bf16_and_says_so(tmp_path, monkeypatch):
    seen = []
    real = torch.nn.functional.linear

    def spy(x, w, b=None):
        out = real(x, w, b)
        seen.append(out.dtype)
        return out
    monkeypatch.setattr(torch.nn.functional, "linear", spy)
    fp32 = _train(tiny(), tmp_path / "fp32")
    n32 = len(seen)
    bf16 = _train(tiny(train={"precision": "bf16"}), tmp_path / "bf16")
    assert set(seen[:n32]) == {torch.float32}
    assert torch.bfloat16 in set(seen[n32:])   # the step's matmuls ran in bf16 under autocast
    assert fp32["train_loss"] != bf16["train_loss"]
    meta = {p: yaml.safe_load((tmp_path / p / "run.yaml").read_text())["precision"] for p in ("fp32", "bf16")}
    assert meta == {"fp32": "fp32", "bf16": "bf16"}
    w = __import__("safetensors.torch", fromlist=["load_file"]).load_file(tmp_path / "bf16" / "model.safetensors")
    assert all(t.dtype == torch.float32 for t in w.values())   # autocast: the weights stay fp32


PRECISION_RESULTS = Path(__file__).resolve().parents[1] / "results" / "compare" / "fmnist-precision" / "results.csv"


@pytest.mark.isa
def test_the_default_precision_is_what_the_committed_paired_comparison_allows():
    """bf16 may be the default only if the paired 95% interval of its difference to fp32 (>= 5 seeds, the
    committed `vitkd compare configs/compare/fmnist_precision.yaml`) lies within +-0.3 points."""
    import csv
    from vitkd.config import TrainCfg
    rows = {r["row"]: r for r in csv.DictReader(open(PRECISION_RESULTS))}
    bf16 = rows["bf16"]
    assert bf16["baseline"] == "fp32" and int(bf16["paired_seeds"]) >= 5
    within = -0.3 <= float(bf16["ci_low"]) and float(bf16["ci_high"]) <= 0.3
    assert TrainCfg().precision == ("bf16" if within else "fp32")
