"""The engine: metrics, atomic checkpoints, bit-exact resume, eval CLI."""
import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from vitkd.cli import main
from vitkd.config import parse_config
from vitkd.engine import WarmupCosine, load_checkpoint, train
from vitkd.rundir import RunDir

CHECKPOINT_NAME = RunDir.CHECKPOINT

TINY = {
    "seed": 3,
    "model": {"name": "vit_tiny_patch16_224",
              "args": {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2,
                       "drop_path_rate": 0.1}},
    "data": {"name": "digits", "train_subset": 96, "batch_size": 32, "augment": "light"},
    "train": {"epochs": 3, "lr": 2e-3, "warmup_epochs": 1, "progress": False},
}


def cfg(**patch):
    raw = yaml.safe_load(yaml.safe_dump(TINY))
    for k, v in patch.items():
        raw[k].update(v)
    return parse_config(raw)


def test_metrics_checkpoint_and_exported_weights(tmp_path):
    final = train(cfg(), tmp_path, log=lambda m: None)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["checkpoint.pt", "config.yaml", "metrics.csv", "metrics.json", "model.safetensors",
                     "predictions_test.safetensors", "predictions_val.safetensors", "run.yaml", "stamp.json"]
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert [e["epoch"] for e in m["epochs"]] == [1, 2, 3]
    for key in ("train_loss", "train_ce", "val_top1", "test_top1", "val_loss", "lr"):
        assert key in m["epochs"][-1]
    assert m["final"]["test_top1"] == final["test_top1"]
    assert (tmp_path / "metrics.csv").read_text().count("\n") == 4
    ck = load_checkpoint(tmp_path)
    for key in ("student", "connectors", "optimizer", "scheduler", "rng", "epoch", "data_order", "history"):
        assert key in ck
    w = load_file(tmp_path / "model.safetensors")
    assert set(w) == set(ck["student"])
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_resume_is_bit_exact(tmp_path, monkeypatch):
    full, again, cut = tmp_path / "full", tmp_path / "again", tmp_path / "cut"
    train(cfg(), full, log=lambda m: None)
    train(cfg(), again, log=lambda m: None)   # seeded and deterministic on CPU

    class Interrupted(Exception):
        pass

    write = RunDir.write_metrics

    def die_after_epoch_two(self, history, meta):
        write(self, history, meta)
        if len(history) == 2:
            raise Interrupted   # the process dies right after epoch 2's checkpoint
    monkeypatch.setattr(RunDir, "write_metrics", die_after_epoch_two)
    with pytest.raises(Interrupted):
        train(cfg(), cut, log=lambda m: None)
    monkeypatch.setattr(RunDir, "write_metrics", write)
    assert load_checkpoint(cut)["epoch"] == 1 and not (cut / "model.safetensors").exists()
    train(cfg(), cut, resume=True, log=lambda m: None)
    a = load_file(full / "model.safetensors")
    for other in (again, cut):
        b = load_file(other / "model.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a)
    ha = json.loads((full / "metrics.json").read_text())["epochs"]
    hb = json.loads((cut / "metrics.json").read_text())["epochs"]
    for key in ("train_loss", "val_top1", "test_top1", "lr"):
        assert [e[key] for e in ha] == [e[key] for e in hb]


def test_seed_changes_result(tmp_path):
    train(cfg(), tmp_path / "a", log=lambda m: None)
    train(parse_config({**yaml.safe_load(yaml.safe_dump(TINY)), "seed": 4}), tmp_path / "b", log=lambda m: None)
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert not all(torch.equal(a[k], b[k]) for k in a)


def test_mixup_ema_options_run(tmp_path):
    c = cfg(train={"epochs": 1, "mixup": 0.8, "cutmix": 1.0, "ema_decay": 0.9})
    final = train(c, tmp_path, log=lambda m: None)
    assert "ema_test_top1" in final
    assert (tmp_path / "model_ema.safetensors").is_file()


def test_cli_train_eval_and_refuse_overwrite(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    raw = yaml.safe_load(yaml.safe_dump(TINY))
    raw["train"]["epochs"] = 1
    path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"
    assert main(["train", str(path), "--out", str(out)]) == 0
    before = (out / CHECKPOINT_NAME).read_bytes()
    assert main(["train", str(path), "--out", str(out)]) == 2   # a run is never silently overwritten
    assert "already holds a run" in capsys.readouterr().err
    assert (out / CHECKPOINT_NAME).read_bytes() == before
    assert main(["eval", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    final = json.loads((out / "metrics.json").read_text())["final"]
    assert res["test_top1"] == final["test_top1"] and res["val_top1"] == final["val_top1"]
    assert main(["eval", str(tmp_path / "nothing")]) == 2


def test_warmup_cosine():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    s = WarmupCosine(opt, lr=1.0, min_lr=0.0, warmup_steps=4, total_steps=14)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(14):
        s.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert abs(lrs[9] - 0.5) < 1e-9 and lrs[14] == 0.0


def test_weight_decay_groups():
    import timm
    import vitkd.archs  # noqa: F401  (registers vit_digits_tiny)
    from torch import nn
    from vitkd.engine import param_groups

    class Holder(nn.Module):   # stands in for the distiller: a student and a term with a learned token
        def __init__(self):
            super().__init__()
            self.student = timm.create_model("vit_digits_tiny")
            self.terms = nn.ModuleList([nn.Module()])
            self.terms[0].mask_token = nn.Parameter(torch.zeros(1, 1, 8))
            self.terms[0].proj = nn.Linear(8, 8)

        def no_weight_decay(self):   # as the distiller: the student's own list and each term's
            return {f"student.{n}" for n in self.student.no_weight_decay()} | {"terms.0.mask_token"}

    h = Holder()
    no_decay, decay = param_groups(h, 0.05)
    ids = lambda g: {id(p) for p in g["params"]}   # noqa: E731
    for p in (h.student.cls_token, h.student.pos_embed, h.terms[0].mask_token, h.terms[0].proj.bias,
              h.student.blocks[0].norm1.weight):
        assert id(p) in ids(no_decay)
    for p in (h.student.blocks[0].attn.qkv.weight, h.terms[0].proj.weight):
        assert id(p) in ids(decay)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
