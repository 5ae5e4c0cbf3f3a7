"""Bad configs: one line naming the key/value/file, exit code 2, nothing written."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vitkd.cli import main

GOOD = {
    "model": {"name": "vit_tiny_patch16_224",
              "args": {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 1, "num_heads": 2}},
    "data": {"name": "digits"},
    "train": {"epochs": 1},
}


def deep_update(base, patch):
    out = yaml.safe_load(yaml.safe_dump(base))
    for k, v in patch.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_update(out[k], v)
        else:
            out[k] = v
    return out


CASES = [
    ("unknown top-level key", {"trian": {"epochs": 1}}, [], r"unknown config key 'trian' \(did you mean 'train'\?\)"),
    ("unknown nested key", {"train": {"lrr": 0.1}}, [], r"'train.lrr' \(did you mean 'lr'\?\)"),
    ("wrong type", {"train": {"epochs": "ten"}}, [], r"train.epochs: expected an integer, got str 'ten'"),
    ("wrong bool", {"train": {"amp": "yes"}}, [], r"train.amp: expected true/false"),
    ("bad choice", {"data": {"name": "mnist"}}, [], r"data.name: 'mnist' is not one of"),
    ("not positive", {"data": {"batch_size": 0}}, [], r"data.batch_size: must be > 0, got 0"),
    ("missing checkpoint file", {"model": {"checkpoint": "no/such/weights.safetensors"}}, [],
     r"model.checkpoint: file or folder not found: no/such/weights.safetensors"),
    ("missing data root", {"data": {"name": "cifar10", "root": "/no/such/cifar"}}, [],
     r"data.root: file or folder not found: /no/such/cifar"),
    ("cifar needs a root", {"data": {"name": "cifar100"}}, [], r"data.root: dataset 'cifar100' is read from a local"),
    ("unknown model", {"model": {"name": "vit_tinny_patch16_224"}}, [],
     r"model.name: unknown timm model 'vit_tinny_patch16_224' \(did you mean 'vit_tiny_patch16_224'\?\)"),
    ("bad override key", {}, ["--set", "train.epoch=3"], r"'train.epoch' \(did you mean 'epochs'\?\)"),
    ("bad override value", {}, ["--set", "train.lr=fast"], r"train.lr: expected a number, got str 'fast'"),
    ("model rejects args", {"model": {"args": {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 1,
                                               "num_heads": 2, "no_such_arg": 1}}}, [],
     r"model.args: vit_tiny_patch16_224 rejects its arguments"),
    ("subset too large", {"data": {"train_subset": 5000}}, [], r"data.train_subset: 5000 exceeds the 1197 train"),
    ("unknown loss", {"distill": {"terms": [{"type": "kdd"}]}}, [], r"distill.terms\[0\].type: unknown loss 'kdd'"),
]


@pytest.mark.parametrize("what,patch,extra,pattern", CASES, ids=[c[0] for c in CASES])
def test_bad_config_one_line_exit_2_nothing_written(tmp_path, capsys, what, patch, extra, pattern):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(deep_update(GOOD, patch)))
    out = tmp_path / "run"
    code = main(["train", str(cfg), "--out", str(out), *extra])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    import re
    assert re.search(pattern, lines[0]), lines[0]
    assert not out.exists()


def test_missing_config_file(tmp_path, capsys):
    assert main(["train", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "run")]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_invalid_yaml_names_file_and_line(tmp_path, capsys):
    cfg = tmp_path / "broken.yaml"
    cfg.write_text("train:\n  epochs: [1, 2\n")
    assert main(["train", str(cfg), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "broken.yaml" in err and "line" in err and len(err.splitlines()) == 1


def test_real_process_exit_code(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(deep_update(GOOD, {"train": {"epochs": -1}})))
    r = subprocess.run([sys.executable, "-m", "vitkd", "train", str(cfg), "--out", str(tmp_path / "run")],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip() == "vitkd: error: train.epochs: must be > 0, got -1"
    assert not (tmp_path / "run").exists()


def test_usage_error_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["trian", "x.yaml"])
    assert e.value.code == 2
