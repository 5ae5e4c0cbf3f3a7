"""One run over many processes (issue 14): a real ``torchrun`` launch of two gloo ranks on the CPU against a
single process with the same global batch; the sampler's shards; which terms depend on the process count;
the ``vitkd train --nproc`` launcher."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from vitkd.cli import main
from vitkd.config import ConfigError, parse_config
from vitkd.data import EpochSampler
from vitkd.engine import train
from vitkd.losses import build_term

ROOT = Path(__file__).resolve().parents[1]

TEACHER = {
    "seed": 0,
    "model": {"name": "resnet_digits_s"},
    "data": {"name": "digits", "train_subset": 64, "batch_size": 32, "augment": "light"},
    "train": {"epochs": 1, "warmup_epochs": 0, "progress": False, "device": "cpu"},
}
# A ViT student with KD and no stochastic layers (no dropout, no drop-path, no mixup). The lr is small on
# purpose: AdamW divides each gradient element by its own running scale, so an element whose gradient is
# zero up to rounding (the attention's key bias, exactly zero by softmax's shift invariance; a near-silent
# MLP unit) moves by an amount that rounding decides. Averaging two ranks' gradients rounds differently from
# one batch mean, so such elements drift apart by up to ~lr per step: 8.6e-6 at lr 1e-3, 4.3e-6 at 5e-4
# after these 8 steps, every other weight within 1e-7.
STUDENT = {
    "seed": 1,
    "model": {"name": "vit_tiny_patch16_224",
              "args": {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}},
    "data": {"name": "digits", "train_subset": 64, "batch_size": 16, "augment": "light"},
    "train": {"epochs": 2, "warmup_epochs": 0.5, "lr": 5e-4, "progress": False, "device": "cpu"},
    "distill": {"terms": [{"type": "ce", "weight": 0.5}, {"type": "kd", "weight": 0.5, "T": 4.0}]},
}


@pytest.mark.parametrize("n,batch,world,repeats", [(64, 8, 2, 1), (64, 4, 4, 1), (60, 8, 2, 3), (65, 8, 2, 1)])
def test_rank_shards_at_each_step_make_the_single_process_batch(n, batch, world, repeats):
    """Step s of the ranks (batch B each) reads the images of step s of one process with batch world x B."""
    one = EpochSampler(n, 3, world=1, repeats=repeats).order()
    assert one == EpochSampler(n, 3, repeats=repeats).order()   # single-process order unchanged
    ranks = [EpochSampler(n, 3, rank=r, world=world, repeats=repeats).order() for r in range(world)]
    assert len({len(r) for r in ranks}) == 1   # every rank takes the same number of steps
    for s in range(len(ranks[0]) // batch):    # every full step
        union = sorted(i for r in ranks for i in r[s * batch:(s + 1) * batch])
        assert union == sorted(one[s * world * batch:(s + 1) * world * batch])


def test_terms_declare_whether_they_depend_on_the_process_count():
    def term(spec):
        return build_term(spec, 0, ["t"])
    assert not term({"type": "kd"}).world_size_dependent
    assert not term({"type": "ce"}).world_size_dependent
    assert not term({"type": "dkd"}).world_size_dependent
    assert term({"type": "dist"}).world_size_dependent                      # intra-class: across the batch
    assert not term({"type": "dist", "gamma": 0.0}).world_size_dependent    # per image alone
    assert term({"type": "manifold", "pairs": [[0, 0]]}).world_size_dependent
    assert not term({"type": "manifold", "pairs": [[0, 0]], "inter": 0, "random": 0}).world_size_dependent
    assert "random" in term({"type": "manifold", "pairs": [[0, 0]], "inter": 0}).world_size_reason
    assert term({"type": "vitkd"}).world_size_dependent


def _write(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def two_ranks(cfg_file: Path, out: Path, *sets: str) -> subprocess.CompletedProcess:
    """``vitkd train`` as 2 ranks of the real torchrun (gloo, loopback, one thread each); it must succeed."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "vitkd", "train", str(cfg_file), "--out", str(out)] + [a for s in sets for a in ("--set", s)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def test_two_gloo_ranks_through_torchrun_match_one_process(tmp_path):
    """2 processes x batch 8 (the real torchrun, gloo, loopback) against 1 process x batch 16, 2 epochs of KD:
    per-epoch train loss within 1e-4 relative, final weights within 1e-5 absolute."""
    teacher = tmp_path / "teacher"
    train(parse_config(yaml.safe_load(yaml.safe_dump(TEACHER))), teacher, log=lambda m: None)
    raw = yaml.safe_load(yaml.safe_dump(STUDENT))
    raw["distill"]["teachers"] = {"t": {"checkpoint": str(teacher)}}
    cfg_file = _write(tmp_path / "student.yaml", raw)

    one = tmp_path / "one"
    train(parse_config(yaml.safe_load(cfg_file.read_text())), one, log=lambda m: None)

    two = tmp_path / "two"
    proc = two_ranks(cfg_file, two, "data.batch_size=8")
    # rank 0 alone prints its epoch lines and the result
    assert proc.stdout.count("epoch 1/2 ") == 1 and proc.stdout.count("epoch 2/2 ") == 1, proc.stdout
    assert proc.stdout.count('"out"') == 1

    meta = yaml.safe_load((two / "run.yaml").read_text())
    assert meta["world_size"] == 2 and meta["batch_per_rank"] == 8 and meta["global_batch"] == 16
    assert meta["world_size_dependent"] == {}   # ce + kd, a ViT without BatchNorm or stochastic layers
    assert yaml.safe_load((one / "run.yaml").read_text())["world_size"] == 1

    m1 = json.loads((one / "metrics.json").read_text())["epochs"]
    m2 = json.loads((two / "metrics.json").read_text())["epochs"]
    assert len(m1) == len(m2) == 2
    for a, b in zip(m1, m2):
        for key in ("train_loss", "train_ce", "train_kd"):
            assert abs(a[key] - b[key]) <= 1e-4 * abs(a[key]), (key, a[key], b[key])
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-12)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)   # evaluation sharded and reduced
    w1, w2 = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert set(w1) == set(w2)
    worst = max((w1[k] - w2[k]).abs().max().item() for k in w1)
    assert worst <= 1e-5, worst

    # the checkpoint carries both ranks' RNG states; a resume needs the same number of processes
    from vitkd.engine import load_checkpoint
    ck = load_checkpoint(two)   # read with weights_only=True: every rank's RNG state is tensors and plain values
    assert isinstance(ck["rng"], list) and len(ck["rng"]) == 2 and ck["data_order"]["world_size"] == 2
    cfg = parse_config(yaml.safe_load(cfg_file.read_text()))
    cfg.train.epochs = 3
    with pytest.raises(ConfigError, match="trained by 2 process"):
        train(cfg, two, resume=True, log=lambda m: None)


def test_train_nproc_launches_torchrun(tmp_path, monkeypatch, capsys):
    """``vitkd train --nproc N`` checks the config and the folder here, then hands over to torchrun."""
    cfg_file = _write(tmp_path / "plain.yaml", {k: v for k, v in STUDENT.items() if k != "distill"})
    calls = []
    monkeypatch.setattr(subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    out = tmp_path / "run"
    assert main(["train", str(cfg_file), "--out", str(out), "--nproc", "3", "--set", "train.epochs=1"]) == 0
    (cmd,) = calls
    assert cmd[:6] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=3", "-m"]
    assert cmd[6:] == ["vitkd", "train", str(cfg_file), "--out", str(out), "--set", "train.epochs=1"]
    # errors stay one line, before any process starts
    assert main(["train", str(cfg_file), "--nproc", "2", "--set", "train.epochs=0"]) == 2
    assert "train.epochs" in capsys.readouterr().err
    assert main(["train", str(cfg_file), "--nproc", "0"]) == 2
    (out / "config.yaml").parent.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text("{}")
    assert main(["train", str(cfg_file), "--out", str(out), "--nproc", "2"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["train", str(cfg_file), "--out", str(tmp_path / "x"), "--nproc", "2"]) == 2
    assert len(calls) == 1


def test_sync_bn_key_keeps_older_stamps_and_resumes():
    """train.sync_bn came later: at its default it is left out of the reuse digest (older stamps stay valid)
    and an older saved config without it resumes."""
    from vitkd.config import to_dict
    from vitkd.engine.checkpoint import resume_changes
    from vitkd.rundir import config_digest
    new = to_dict(parse_config(yaml.safe_load(yaml.safe_dump(TEACHER))))
    old = yaml.safe_load(yaml.safe_dump(new))
    del old["train"]["sync_bn"]
    assert new["train"]["sync_bn"] is False
    assert config_digest(new) == config_digest(old)
    assert resume_changes(old, new) == {}
    synced = yaml.safe_load(yaml.safe_dump(new))
    synced["train"]["sync_bn"] = True
    assert config_digest(synced) != config_digest(new)
    with pytest.raises(ConfigError, match="train.sync_bn"):
        resume_changes(old, synced)


def test_two_gloo_ranks_of_deep_mutual_learning_match_one_process(tmp_path):
    """Deep mutual learning (issue 31): the peer is in the DDP-wrapped trainable part, so 2 processes x batch 8
    train the student and the peer as 1 process x batch 16 does (per-epoch losses within 1e-4 relative, both
    models' final weights within 1e-5); the terms between peers are per-sample (no world-size dependence)."""
    raw = yaml.safe_load(yaml.safe_dump(STUDENT))
    raw["distill"] = {"teachers": {"peer1": {"peer": {"model": "vit_tiny_patch16_224", "args": {
        "img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}}}},
        "terms": [{"type": "ce"}, {"type": "kd", "teacher": "peer1", "T": 1.0}, {"type": "ce", "student": "peer1"},
                  {"type": "kd", "student": "peer1", "teacher": "student", "T": 1.0}]}
    cfg_file = _write(tmp_path / "dml.yaml", raw)
    one = tmp_path / "one"
    train(parse_config(yaml.safe_load(cfg_file.read_text())), one, log=lambda m: None)
    two = tmp_path / "two"
    two_ranks(cfg_file, two, "data.batch_size=8")
    meta = yaml.safe_load((two / "run.yaml").read_text())
    assert meta["global_batch"] == 16 and meta["world_size_dependent"] == {}
    m1 = json.loads((one / "metrics.json").read_text())["epochs"]
    m2 = json.loads((two / "metrics.json").read_text())["epochs"]
    for a, b in zip(m1, m2):
        for key in ("train_loss", "train_ce", "train_kd", "train_ce_peer1", "train_kd_peer1"):
            assert abs(a[key] - b[key]) <= 1e-4 * abs(a[key]), (key, a[key], b[key])
        assert a["peer1_val_top1"] == pytest.approx(b["peer1_val_top1"], abs=1e-9)
    for name in ("model.safetensors", "teachers/peer1.safetensors"):
        w1, w2 = load_file(one / name), load_file(two / name)
        assert set(w1) == set(w2)
        worst = max((w1[k] - w2[k]).abs().max().item() for k in w1)
        assert worst <= 1e-5, (name, worst)
