"""The allocator setting of training processes (vitkd/engine/allocator.py): in effect in `vitkd` processes on
glibc, off with VITKD_MALLOC=default, and it changes no result: a run trains the same weights bit for bit."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
CFG = {
    "seed": 3,
    "model": {"name": "vit_tiny_patch16_224",
              "args": {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}},
    "data": {"name": "digits", "train_subset": 64, "batch_size": 16, "augment": "light"},
    "train": {"epochs": 2, "lr": 1e-3, "warmup_epochs": 1, "eval_every": 2, "threads": 1, "progress": False},
}
PROBE = ("import json; from vitkd.engine.allocator import keep_freed_memory; "
         "print(json.dumps([keep_freed_memory(), keep_freed_memory()]))")


def probe(env):
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_the_setting_applies_once_and_can_be_turned_off():
    import platform
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    assert probe({**ENV, "VITKD_MALLOC": ""}) == [True, True]   # whatever the calling shell set
    assert probe({**ENV, "VITKD_MALLOC": "default"}) == [False, False]


def test_a_run_trains_the_same_weights_with_either_allocator_setting(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(CFG))
    digests = []
    for setting in ("default", "keep"):
        out = tmp_path / setting
        env = {**ENV, "VITKD_MALLOC": setting}
        subprocess.run([sys.executable, "-m", "vitkd", "train", str(cfg), "--out", str(out)], env=env, cwd=ROOT,
                       check=True, capture_output=True)
        digests.append(hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest())
    assert digests[0] == digests[1]
