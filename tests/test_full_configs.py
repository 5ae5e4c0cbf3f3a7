"""The full-scale configs (DeiT recipe on ImageNet-1k and CIFAR-100) build as they are and run two
training steps on tiny fake datasets written in the real on-disk formats."""
import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from vitkd.cli import main
from vitkd.config import load_config

from test_data import _write_cifar

ROOT = Path(__file__).parents[1] / "configs"


def _imagenet(root: Path, n_cls=3, per=2):
    from PIL import Image
    import numpy as np
    rng = np.random.RandomState(0)
    for split, n in (("train", per * 2), ("val", per)):
        for c in range(n_cls):
            d = root / split / f"n0000000{c}"
            d.mkdir(parents=True)
            for j in range(n):
                Image.fromarray(rng.randint(0, 256, (64, 80, 3), dtype=np.uint8)).save(d / f"{j}.JPEG")


def _teacher_weights(path: Path, num_classes: int):
    torch.manual_seed(0)
    m = timm.create_model("regnety_160", pretrained=False, num_classes=num_classes)
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(path))


@pytest.mark.slow
@pytest.mark.parametrize("config,kind,n_cls,val_size", [
    ("imagenet/deit_tiny_distilled_regnety160.yaml", "imagefolder", 3, 8),
    ("cifar100/deit_tiny_distilled_regnety160.yaml", "cifar100", 100, 26),
])
def test_full_config_two_steps(tmp_path, capsys, config, kind, n_cls, val_size):
    data = tmp_path / "data"
    if kind == "imagefolder":
        _imagenet(data)          # 12 train images: 8 held out as val, 4 train -> 2 steps of 2
    else:
        _write_cifar(data, "cifar100", n_train=30, n_test=4, classes=100)   # 30 - 26 = 4 train images
    weights = tmp_path / "teacher.safetensors"
    _teacher_weights(weights, n_cls)
    sets = [f"data.root={data}", f"distill.teachers.regnet.checkpoint={weights}", "train.device=cpu",
            "train.epochs=1", "data.batch_size=2", "data.eval_batch_size=4", "data.num_workers=0",
            f"data.val_size={val_size}", "train.progress=false"]
    cfg = load_config(ROOT / config, sets)
    # the recipe is DeiT's, as written in the file
    assert cfg.data.auto_augment == "rand-m9-mstd0.5-inc1" and cfg.data.repeated_aug == 3
    assert cfg.train.mixup == 0.8 and cfg.train.cutmix == 1.0 and cfg.train.ema_decay == 0.99996
    assert [t["type"] for t in cfg.distill.terms] == ["ce", "deit"]
    out = tmp_path / "run"
    args = ["train", str(ROOT / config), "--out", str(out)]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["num_classes"] == n_cls and len(m["epochs"]) == 1
    e = m["epochs"][0]
    assert "train_deit" in e and "ema_test_top1" in e
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["scheduler"]["step_count"] == 2   # two optimizer steps


def test_full_config_needs_its_data_and_teacher(capsys):
    # as shipped, the paths point at the user's folders: a clear one-line error, exit 2
    assert main(["train", str(ROOT / "imagenet/deit_tiny_distilled_regnety160.yaml"), "--out", "/tmp/never"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vitkd: error: data.root: file or folder not found") and "\n" not in err
