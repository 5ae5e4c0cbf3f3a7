"""Issue 10's seams, tested in one process: rank sharding, per-sample mixup, the reducer, the resume
policy, eval without teachers, zero-weight terms that run no teacher."""
import json
import shutil

import pytest
import torch
import yaml

from factories import IMG, batch, vit
from vitkd.cli import main
from vitkd.config import ConfigError, parse_config
from vitkd.data import DataSpec, EpochSampler, MixedDataset, MixSpec, build_datasets
from vitkd.distiller import Distiller
from vitkd.engine import train
from vitkd.dist import Reducer
from vitkd.engine.loop import epoch_means
from vitkd.losses import build_term
from vitkd.rundir import RunDir


@pytest.mark.parametrize("n", [10, 11])
def test_two_rank_samplers_split_each_epoch_disjointly_and_completely(n):
    for epoch in (0, 3):
        one = EpochSampler(n, seed=5)
        ranks = [EpochSampler(n, seed=5, rank=r, world=2) for r in (0, 1)]
        for s in [one, *ranks]:
            s.set_epoch(epoch)
        a, b = list(ranks[0]), list(ranks[1])
        assert len(a) == len(b) == (n + 1) // 2
        full = list(one)
        # rank r takes every second position of the single-process order: disjoint and complete
        assert a == full[0::2] and b == full[1::2] + full[:len(a) - len(full[1::2])]
        assert set(a) | set(b) == set(range(n)) and (n % 2 or not set(a) & set(b))


def _digits_train(seed=0):
    spec = DataSpec(img_size=(16, 16), mean=(0.5,) * 3, std=(0.5,) * 3)
    cfg = parse_config({"data": {"name": "digits", "train_subset": 64}}).data
    return build_datasets(cfg, spec, seed)[0]["train"]


def test_a_samples_mixup_partner_and_lambda_do_not_depend_on_the_batch_size():
    spec = MixSpec(mixup=0.8, cutmix=1.0, prob=0.9, label_smoothing=0.1)
    per_batch = {}
    for bs in (8, 32):
        ds = MixedDataset(_digits_train(), spec)
        ds.set_epoch(2)
        sampler = EpochSampler(len(ds), seed=0)
        sampler.set_epoch(2)
        loader = torch.utils.data.DataLoader(ds, batch_size=bs, sampler=sampler)
        got = {}
        for x, y, idx, soft in loader:
            for i in range(len(idx)):
                got[int(idx[i])] = (x[i].clone(), soft[i].clone())
        per_batch[bs] = got
    assert per_batch[8].keys() == per_batch[32].keys() == set(range(64))
    mixed = 0
    for k in per_batch[8]:
        assert torch.equal(per_batch[8][k][0], per_batch[32][k][0])
        assert torch.equal(per_batch[8][k][1], per_batch[32][k][1])
        assert abs(float(per_batch[8][k][1].sum()) - 1.0) < 1e-5
        mixed += int((per_batch[8][k][1] > 0.1).sum() > 1)
    assert mixed > 10   # most samples really are mixed with a partner of another class


class TwoRankReducer(Reducer):
    """Stands in for two ranks: this process's numbers plus the other rank's, given up front."""

    def __init__(self, other):
        self.other = other

    def sum(self, values):
        return {k: v + self.other[k] for k, v in values.items()}


def test_epoch_metrics_reduce_over_ranks():
    rank0 = {"loss": 2.0 * 10, "ce": 1.0 * 10}          # sums over 10 images
    rank1 = {"loss": 4.0 * 30, "ce": 3.0 * 30, "__seen__": 30.0}   # 30 images
    means = epoch_means(rank0, 10.0, TwoRankReducer(rank1))
    assert means == {"loss": pytest.approx(3.5), "ce": pytest.approx(2.5)}
    assert epoch_means(rank0, 10.0, Reducer()) == {"loss": 2.0, "ce": 1.0}


TINY = {"seed": 1, "model": {"name": "vit_digits_tiny"},
        "data": {"name": "digits", "train_subset": 32, "batch_size": 16},
        "train": {"epochs": 2, "warmup_epochs": 0, "progress": False}}


def test_resume_refuses_a_differing_key_and_records_an_allowed_one(tmp_path):
    out = tmp_path / "run"
    raw = yaml.safe_load(yaml.safe_dump(TINY))
    raw["train"]["epochs"] = 1
    train(parse_config(raw), out, log=lambda m: None)
    changed = yaml.safe_load(yaml.safe_dump(raw))
    changed["train"]["weight_decay"] = 0.3
    with pytest.raises(ConfigError, match="train.weight_decay"):
        train(parse_config(changed), out, resume=True, log=lambda m: None)
    longer = yaml.safe_load(yaml.safe_dump(raw))
    longer["train"]["epochs"] = 2
    train(parse_config(longer), out, resume=True, log=lambda m: None)
    resumes = RunDir(out).read_meta()["resumes"]
    assert resumes and resumes[-1]["changes"] == {"train.epochs": [1, 2]} and resumes[-1]["at_step"] == 2
    assert len(RunDir(out).metrics()["epochs"]) == 2


def test_a_distilled_run_evaluates_after_its_teacher_folder_is_deleted(tmp_path, capsys):
    teacher, student = tmp_path / "teacher", tmp_path / "student"
    train(parse_config({**TINY, "model": {"name": "resnet_digits_s"}}), teacher, log=lambda m: None)
    raw = {**TINY, "distill": {"teachers": {"t": {"checkpoint": str(teacher)}},
                               "terms": [{"type": "ce"}, {"type": "kd", "T": 2.0}]}}
    final = train(parse_config(raw), student, log=lambda m: None)
    shutil.rmtree(teacher)
    capsys.readouterr()
    assert main(["eval", str(student), "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["test_top1"] == final["test_top1"] and res["val_top1"] == final["val_top1"]
    # a bare weights file evaluates with --model (the same numbers)
    assert main(["eval", str(RunDir(student).weights_path), "--model", "vit_digits_tiny", "--json"]) == 0
    res2 = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res2["test_top1"] == final["test_top1"]


def test_a_zero_weight_term_runs_no_teacher():
    calls = {"a": 0, "b": 0}
    teachers = {"a": vit(embed_dim=48), "b": vit(embed_dim=48)}
    for name, t in teachers.items():
        t.patch_embed.register_forward_hook(lambda *_, n=name: calls.__setitem__(n, calls[n] + 1))
    specs = [{"type": "ce"}, {"type": "kd", "teacher": "a"},
             {"type": "kd", "teacher": "b", "name": "kd_b", "schedule": {"until": 0.5}},
             {"type": "vitkd", "teacher": "b", "schedule": {"until": 0.5}}]
    d = Distiller(vit(), teachers, [build_term(s, i, ["a", "b"]) for i, s in enumerate(specs)], IMG)
    b = batch()
    b.progress = 0.25
    total, parts = d(b)
    assert calls == {"a": 1, "b": 1}
    b.progress = 0.75   # both terms reading b are off: b does not run, its terms report 0
    total, parts = d(b)
    assert calls == {"a": 2, "b": 1}
    assert float(parts["kd_b"]) == 0.0 and float(parts["vitkd"]) == 0.0
    total.backward()   # the off term's connectors still get a (zero) gradient: DDP needs no unused-param search
    vitkd_term = d.terms[3]
    assert all(p.grad is not None and float(p.grad.abs().sum()) == 0.0
               for p in vitkd_term.parameters() if p.requires_grad)


def test_repeated_augmentation_gives_each_copy_its_own_augmentation():
    ds = _digits_train()
    ds.set_epoch(1)
    sampler = EpochSampler(len(ds), seed=0, repeats=3)
    sampler.set_epoch(1)
    order = list(sampler)
    assert all(isinstance(i, tuple) for i in order) and len(order) == len(ds)
    first = order[0][0]
    copies = [ds[(first, c)][0] for c in range(3)]
    assert torch.equal(copies[0], ds[first][0])          # copy 0 is the sample's own augmentation
    assert not torch.equal(copies[0], copies[1]) and not torch.equal(copies[1], copies[2])
    assert ds[(first, 2)][2] == first                      # the dataset index is what the batch carries
