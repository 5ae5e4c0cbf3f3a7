"""Stored teacher logits (issue 15): the saved pass replays the training pipeline bit for bit, the rebuild equals
the live softmax, training from a store equals training with the live teacher, and every way a store can be
wrong (another config, corrupted, truncated, cut short by a kill) is caught."""
from __future__ import annotations

import copy as copy_mod
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from vitkd.config import ConfigError, parse_config
from vitkd.data import EpochSampler, mix_draw
from vitkd.dist import World
from vitkd.methods.stored_logits.format import StoreError, shard_path
from vitkd.methods.stored_logits.replay import StoredTeacher, dense_log_probs
from vitkd.methods.stored_logits.save import _Keys, _records, record_dtype, save_logits, save_store, train_pipeline

VIT_ARGS = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}
ROOT = Path(__file__).resolve().parents[1]


def student(teacher: dict, **train) -> dict:
    return {"seed": 0, "model": {"name": "vit_tiny_patch16_224", "args": dict(VIT_ARGS)},
            "data": {"name": "digits", "train_subset": 32, "batch_size": 8},
            "train": {"epochs": 2, "progress": False, "threads": 1, "warmup_epochs": 0, "mixup": 0.8, "cutmix": 1.0,
                      **train},
            "distill": {"teachers": {"t": teacher},
                        "terms": [{"type": "ce", "weight": 0.5}, {"type": "kd", "weight": 0.5, "T": 4.0}]}}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    import timm
    from safetensors.torch import save_file
    import vitkd.archs  # noqa: F401
    root = tmp_path_factory.mktemp("stored")
    torch.manual_seed(0)
    cnn = timm.create_model("resnet_digits_s", num_classes=10)
    save_file({k: v.contiguous() for k, v in cnn.state_dict().items()}, root / "cnn.safetensors")
    live = {"model": "resnet_digits_s", "checkpoint": str(root / "cnn.safetensors")}
    cfg = parse_config(student(live))
    stores = {v: save_logits(cfg, root / v, values=v, progress=False, log=lambda m: None)["t"] for v in ("fp16", "fp32")}
    return root, live, stores


def _train_weights(raw, out):
    from safetensors.torch import load_file
    from vitkd.engine import train
    threads = torch.get_num_threads()
    try:
        train(parse_config(raw), out, log=lambda m: None)
    finally:
        torch.set_num_threads(threads)
    return load_file(next(Path(out).glob("model.safetensors")))


def test_replayed_images_are_the_training_pipelines_bit_for_bit():
    """Augmentation, mixup/CutMix partner and lambda, and repeated-augmentation copies: the writer's image of
    each sample key is the training loader's image of that key."""
    cfg = parse_config(student({"model": "resnet_digits_s", "checkpoint": str(ROOT / "README.md")},
                               mixup=0.8, cutmix=1.0))
    cfg.data.repeated_aug = 2
    ds, spec, _ = train_pipeline(cfg)
    n = len(ds)
    epoch = 1
    sampler = EpochSampler(n, cfg.seed, repeats=2)
    sampler.set_epoch(epoch)
    ds.set_epoch(epoch)
    keys = sampler.order()
    seen = {}
    for step, (x, *_rest) in enumerate(DataLoader(ds, batch_size=8, sampler=sampler)):
        for key, img in zip(keys[step * 8:], x):
            seen[key] = img
    replay = _Keys(ds, n, 0, 2 * n)
    assert {c for _, c in seen} == {0, 1}   # copies 0 and 1 both trained
    for key, img in seen.items():
        assert torch.equal(replay[key[1] * n + key[0]], img), key
    draws = [mix_draw(ds.spec, cfg.seed, epoch, i, tuple(spec.img_size), c) for i, c in seen]
    assert any(b is not None for _, b in draws) and any(b is None and lam < 1 for lam, b in draws)   # both kinds


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_rebuild_with_k_equal_c_is_the_live_softmax(T):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(16, 10, generator=g) * 3
    live = torch.softmax(z / T, dim=1)
    for values, tol in (("fp32", 1e-6), ("fp16", 1e-3)):
        rec = _records(z, 10, record_dtype(10, values), [0] * 16)
        q = torch.softmax(dense_log_probs(torch.from_numpy(rec["idx"].copy()), torch.from_numpy(rec["val"].copy()),
                                          10) / T, dim=1)
        # fp16 keeps a log-probability to half an ulp, 2^-11 |log p|: each probability to that relative error
        bound = tol * torch.softmax(z, dim=1).log().abs().clamp_min(1.0)
        assert ((q / live - 1).abs() <= bound).all(), values
        assert (q - live).abs().max() <= tol


def test_rebuild_with_k_below_c_spreads_the_rest_evenly():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(16, 10, generator=g) * 2
    rec = _records(z, 3, record_dtype(3, "fp32"), [0] * 16)
    d = dense_log_probs(torch.from_numpy(rec["idx"].copy()), torch.from_numpy(rec["val"].copy()), 10)
    p, live = d.exp(), torch.softmax(z, dim=1)
    assert torch.allclose(p.sum(1), torch.ones(16), atol=1e-6)
    top = torch.topk(live, 3, dim=1)
    assert torch.equal(torch.topk(p, 3, dim=1).indices, top.indices)
    assert torch.allclose(p.gather(1, top.indices), top.values, atol=1e-6)
    rest = p.scatter(1, top.indices, float("nan"))
    want = (1 - top.values.sum(1, keepdim=True)) / 7
    assert torch.allclose(rest[~rest.isnan()].view(16, 7), want.expand(16, 7), atol=1e-6)


def test_training_from_an_fp32_store_gives_the_live_teachers_weights(env, tmp_path):
    root, live, stores = env
    a = _train_weights(student(live), tmp_path / "live")
    b = _train_weights(student({"logits": str(stores["fp32"])}), tmp_path / "stored")
    plain = student(live)
    plain.pop("distill")
    c = _train_weights(plain, tmp_path / "no_kd")
    assert a.keys() == b.keys()
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    # the teacher ran on other batch compositions when the store was written: float rounding apart, the same run
    assert diff < 1e-4 and diff < 0.01 * max(float((a[k] - c[k]).abs().max()) for k in a)


def test_fp16_store_loss_per_step_within_1e3_relative(env):
    """The distiller's loss with the fp16 store vs the live teacher, step by step over two epochs' batches."""
    from vitkd.engine import build_run
    from vitkd.losses import Batch
    root, live, stores = env
    runs = [build_run(parse_config(student(t))) for t in (live, {"logits": str(stores["fp16"])})]
    ds = runs[0].datasets["train"]
    from vitkd.data import train_view
    view = train_view(ds, runs[0].cfg.train)
    checked = 0
    for epoch in range(2):
        view.set_epoch(epoch)
        for x, y, idx, soft in DataLoader(view, batch_size=8):
            b = Batch(images=x, target=y, soft_target=soft, index=idx, epoch=epoch)
            with torch.no_grad():
                l_live, l_stored = (float(r.distiller(b)[0]) for r in runs)
            assert abs(l_stored - l_live) <= 1e-3 * abs(l_live)
            checked += 1
    assert checked == 8


def test_a_store_from_another_config_is_refused_naming_the_field(env):
    from vitkd.engine import build_run
    root, live, stores = env
    for change, field in (({"seed": 1}, "seed"), ({"data": {"name": "digits", "train_subset": 16,
                                                              "batch_size": 8}}, "train_subset")):
        raw = {**student({"logits": str(stores["fp16"])}), **change}
        with pytest.raises(StoreError, match=field) as e:
            build_run(parse_config(raw))
        assert "\n" not in str(e.value)
    raw = student({"logits": str(stores["fp16"])}, epochs=3)
    with pytest.raises(StoreError, match="train.epochs"):
        build_run(parse_config(raw))
    # a different student (same input size and normalisation) is served
    raw = student({"logits": str(stores["fp16"])})
    raw["model"]["args"] = {**VIT_ARGS, "embed_dim": 48, "num_heads": 3}
    build_run(parse_config(raw)).distiller.close()


def test_feature_terms_refuse_a_stored_teacher_and_a_config_mixes_stored_and_live(env):
    from vitkd.engine import build_run
    root, live, stores = env
    raw = student({"logits": str(stores["fp16"])})
    raw["distill"]["terms"] = [{"type": "ce"}, {"type": "fitnet", "student_layers": [1], "teacher_layers": [8]}]
    with pytest.raises(ConfigError, match=r"distill term 'fitnet'.*stored-logits.*CNN stages of strides \[8\]"):
        build_run(parse_config(raw))
    raw["distill"]["teachers"]["l"] = dict(live)
    raw["distill"]["terms"] = [{"type": "ce"}, {"type": "kd", "teacher": "t"},
                               {"type": "fitnet", "student_layers": [1], "teacher_layers": [8], "teacher": "l"}]
    run = build_run(parse_config(raw))
    assert type(run.distiller.teachers["t"]).__name__ == "StoredTeacher"
    assert type(run.distiller.teachers["l"]).__name__ == "LiveTeacher"
    run.distiller.close()


def test_corrupted_or_truncated_shard_is_caught_in_one_line(env, tmp_path):
    import shutil
    root, live, stores = env
    store = tmp_path / "s"
    shutil.copytree(stores["fp16"], store)
    shard = shard_path(store, 1, 0)
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF
    shard.write_bytes(bytes(data))
    t = StoredTeacher(store)
    from vitkd.losses import Batch
    b = Batch(images=torch.zeros(2, 3, 16, 16), target=torch.zeros(2, dtype=torch.long), index=torch.arange(2),
              epoch=1)
    with pytest.raises(StoreError, match="corrupted") as e:
        t(b.images, b)
    assert "\n" not in str(e.value) and shard.name in str(e.value)
    shard.write_bytes(bytes(data[:-5]))
    with pytest.raises(StoreError, match="truncated"):
        StoredTeacher(store)


def test_any_number_of_ranks_writes_the_same_store(env, tmp_path):
    root, live, stores = env
    cfg = parse_config(student(live))
    from vitkd.teachers import LiveTeacher, load_teacher_model
    from vitkd.taps import TapRequest
    ds, spec, ncls = train_pipeline(cfg)
    src = LiveTeacher(load_teacher_model("t", cfg.distill.teachers["t"], ncls), spec)
    src.set_request(TapRequest())
    for out, ranks in ((tmp_path / "one", [World()]), (tmp_path / "two", [World(0, 2), World(1, 2)])):
        for w in ranks:
            save_store(cfg, src, "sha", {}, out, ds, spec, ncls, chunk=8, batch_size=5, world=w, progress=False)
    files = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert len(files) == 1 + 2 * 4
    assert all((tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes() for f in files)


def test_a_save_killed_midway_resumes_to_the_same_bytes(env, tmp_path):
    root, live, stores = env
    raw = student(live)
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(raw))
    out = tmp_path / "killed"
    args = ["logits", "save", str(cfg_file), "--out", str(out), "--chunk", "2", "--batch-size", "2"]
    proc = subprocess.Popen([sys.executable, "-m", "vitkd", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and len(list((out / "t").glob("*.shard"))) < 3:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    store = out / "t"
    written = sorted(store.glob("*.shard"))
    assert 0 < len(written) < 32 or proc.returncode == 0
    if len(written) == 32:   # it finished before the kill landed: cut it short by hand
        for p in written[len(written) // 2:]:
            p.unlink()
    (store / ".e0001-c00009.shard.half.tmp").write_bytes(b"half a shard")   # what a kill mid-write leaves
    from vitkd.cli import main
    assert main(args) == 0
    want = save_logits(parse_config(raw), tmp_path / "whole", chunk=2, batch_size=2, progress=False,
                       log=lambda m: None)["t"]
    names = sorted(p.name for p in want.iterdir())
    assert sorted(p.name for p in store.iterdir()) == names and len(names) == 1 + 32
    assert all((store / n).read_bytes() == (want / n).read_bytes() for n in names)


def test_the_suite_plans_one_store_per_teacher_seed_and_recipe_for_logit_only_rows(tmp_path):
    from vitkd.compare.jobs import SuitePlan
    from vitkd.compare.plan import check_jobs, plan_suite
    from vitkd.compare.suite import load_suite
    common = {"data": {"name": "digits", "train_subset": 32, "batch_size": 8}, "train": {"epochs": 1, "progress": False}}
    (tmp_path / "student.yaml").write_text(yaml.safe_dump({"model": {"name": "vit_digits_tiny"}, **common}))
    (tmp_path / "teacher.yaml").write_text(yaml.safe_dump({"model": {"name": "resnet_digits_s"}, **common}))
    kd = [{"type": "ce"}, {"type": "kd"}]
    suite = {"name": "tiny", "student": "student.yaml", "seeds": [0, 1],
             "teachers": {"cnn": {"config": "teacher.yaml"}},
             "rows": [{"name": "no_kd", "family": "none"},
                      {"name": "kd", "family": "logit", "teachers": {"t": "cnn"}, "set": {"distill.terms": kd}},
                      {"name": "kd_b", "family": "logit", "teachers": {"t": "cnn"},   # another student, same recipe
                       "set": {"distill.terms": kd, "model.name": "vit_digits_small"}},
                      {"name": "fit", "family": "feature", "teachers": {"t": "cnn"}, "set": {"distill.terms": [
                          {"type": "ce"}, {"type": "fitnet", "student_layers": [0], "teacher_layers": [8]}]}}]}
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    s, base = load_suite(tmp_path / "suite.yaml")
    cache = tmp_path / "cache"
    plan = SuitePlan(s, base, cache)
    plan_suite(plan)
    teachers, rows = plan.with_role("teacher"), plan.with_role("row")
    stores = [j for j in plan.jobs if j.kind == "logits"]
    assert sorted(j.key.split("/")[2][:2] for j in stores) == ["s0", "s1"]   # kd and kd_b share a store per seed
    assert all(j.kind == "logits" and j.deps == ["teachers/cnn"] for j in stores)
    by = {j.key: j for j in rows}
    for seed in (0, 1):
        for r in ("kd", "kd_b"):
            j = by[f"rows/{r}/s{seed}"]
            store = j.raw["distill"]["teachers"]["t"]["logits"]
            assert j.deps == [next(x.key for x in stores if str(x.out) == store)] and f"/s{seed}-" in store
        fit = by[f"rows/fit/s{seed}"]
        assert "checkpoint" in fit.raw["distill"]["teachers"]["t"] and fit.deps == ["teachers/cnn"]
    check_jobs(teachers + stores + rows)   # rows reading a store not written yet dry-build with its teacher


def test_a_bf16_config_stores_bf16_teacher_logits_and_its_fingerprint_says_so(env, tmp_path):
    """train.precision: bf16 runs the teachers of `logits save` in bf16 too: the store's fingerprint names it (an
    fp32 store keeps its old digest), and its values differ from the fp32 store's."""
    import json
    from vitkd.methods.stored_logits.format import STORE_FILE
    root, live, stores = env
    cfg = parse_config(student(live, precision="bf16"))
    bf16 = save_logits(cfg, tmp_path / "bf16", values="fp32", progress=False, log=lambda m: None)["t"]
    fp_bf16 = json.loads((bf16 / STORE_FILE).read_text())["fingerprint"]
    fp_fp32 = json.loads((stores["fp32"] / STORE_FILE).read_text())["fingerprint"]
    assert fp_bf16.pop("teacher_precision") == "bf16" and "teacher_precision" not in fp_fp32
    assert fp_bf16 == fp_fp32   # everything else the same config
    a, b = sorted(bf16.glob("*.shard")), sorted(stores["fp32"].glob("*.shard"))
    assert len(a) == len(b) and any(x.read_bytes() != y.read_bytes() for x, y in zip(a, b))
