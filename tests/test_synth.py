"""DeepInversion (``vitkd synthesize``), the synthetic set on disk, data-free training input, and DearKD's two
stages. The two fixture ResNets (tests/fixtures/synth, written by make_synth_fixtures.py) are read, never
trained here."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

import vitkd.archs  # noqa: F401  (registers the digits models)
from vitkd.methods.datafree import SyntheticStore, parse_synth_config, read_synthetic, synthesize
from vitkd.methods.datafree.losses import BNStatistics, competition_loss, intra_divergence

FIX = Path(__file__).parent / "fixtures" / "synth"
ROOT = Path(__file__).parents[1]


def fixture(name: str) -> Path:
    """A fixture ResNet, checked against its committed sha256."""
    sums = dict(reversed(line.split("  ")) for line in (FIX / "SHA256SUMS").read_text().split("\n") if line)
    path = FIX / name
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sums[name], f"{path} changed"
    return path


def synth_raw(**synth) -> dict:
    """The digits settings of configs/digits/deepinversion.yaml, small."""
    s = yaml.safe_load((ROOT / "configs/digits/deepinversion.yaml").read_text())["synth"]
    s.update(images=20, batch_size=20, iterations=100)
    s.update(synth)
    return {"teacher": {"model": "resnet_digits_s", "checkpoint": str(fixture("resnet_digits_s_seed0.safetensors"))},
            "data": {"name": "digits"}, "synth": s, "threads": 1}


# ---------------------------------------------------------------------------------------------- the losses
def test_bn_statistics_loss_equals_a_hand_computation():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 5, 3, padding=1),
                        nn.BatchNorm2d(5)).eval()
    for bn in (net[1], net[4]):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    x = torch.randn(6, 3, 5, 7)
    with BNStatistics(net) as stats:
        net(x)
        got = stats.loss(first_mult=10.0)
    assert not net[1]._forward_hooks and not net[4]._forward_hooks   # handles removed on close

    def distance(a: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
        # per channel c: mu_c = sum over (n, h, w) / count; var_c = sum (a - mu_c)^2 / count (biased)
        count = a.shape[0] * a.shape[2] * a.shape[3]
        mu = torch.stack([a[:, c].sum() / count for c in range(a.shape[1])])
        var = torch.stack([((a[:, c] - mu[c]) ** 2).sum() / count for c in range(a.shape[1])])
        return ((mu - bn.running_mean) ** 2).sum().sqrt() + ((var - bn.running_var) ** 2).sum().sqrt()

    with torch.no_grad():
        a1 = net[0](x)                  # the first BN's input
        a2 = net[3](net[2](net[1](a1)))  # the second BN's input
    want = 10.0 * distance(a1, net[1]) + 1.0 * distance(a2, net[4])
    assert torch.allclose(got, want, rtol=1e-5), (got, want)


def test_competition_is_one_minus_the_references_js_and_diversity_reads_only_safe_same_class_pairs():
    s, t = torch.randn(4, 10), torch.randn(4, 10)
    p, q = torch.softmax(s / 3, 1), torch.softmax(t / 3, 1)
    m = (0.5 * (p + q)).clamp(0.01, 0.99)
    p, q = p.clamp(0.01, 0.99), q.clamp(0.01, 0.99)
    js = 0.5 * (m * (m.log() - p.log())).sum() / 4 + 0.5 * (m * (m.log() - q.log())).sum() / 4
    assert torch.allclose(competition_loss(s, t, 3.0), 1 - js.clamp(0, 1))
    assert torch.allclose(competition_loss(t, t, 3.0), torch.tensor(1.0))   # agreement: the largest value
    f = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [1.0, 1.0]])
    y = torch.tensor([0, 0, 1, 0])
    logits = torch.tensor([[5.0, 0.0], [5.0, 0.0], [0.0, 5.0], [0.5, 0.0]])   # image 3: margin 0.5, unsafe
    # the only safe same-class pair is (0, 1): cosine 0.6, counted both ways
    assert torch.allclose(intra_divergence(f, logits, y, margin=2.0), torch.tensor(0.6))
    assert intra_divergence(f, logits, torch.tensor([0, 1, 0, 1]), margin=2.0) == 0   # no safe same-class pair


# ---------------------------------------------------------------------------------------------- synthesis
def _second_net():
    from vitkd.models import create, freeze
    return freeze(create("resnet_digits_s", 10, checkpoint=str(fixture("resnet_digits_s_seed1.safetensors"))))


def _as_input(images: np.ndarray) -> torch.Tensor:
    x = torch.as_tensor(images).float() / 255
    return ((x[:, None].expand(-1, 3, -1, -1)) - 0.5) / 0.5


def test_a_network_that_did_not_generate_the_images_classifies_them(tmp_path):
    """Images inverted from ResNet seed 0 are read by ResNet seed 1 (same recipe, other seed) at >= 50%; the
    same network reads N(0, 1) noise with the same labels at chance."""
    cfg = parse_synth_config(synth_raw())
    m = synthesize(cfg, tmp_path / "set", log=lambda s: None)
    images, labels = read_synthetic(tmp_path / "set", 10)
    assert images.shape == (20, 16, 16) and images.dtype == np.uint8 and np.bincount(labels).tolist() == [2] * 10
    other = _second_net()
    with torch.no_grad():
        acc = (other(_as_input(images)).argmax(1).numpy() == labels).mean()
        noise = torch.randn(20, 1, 16, 16, generator=torch.Generator().manual_seed(0)).clamp(-1, 1).expand(-1, 3, -1, -1)
        chance = (other(noise).argmax(1).numpy() == labels).mean()
    assert acc >= 0.5, acc
    assert chance <= 0.3, chance
    assert m["teacher_top1"] >= 50.0


def test_the_set_round_trips_through_its_on_disk_format_and_trains_a_student(tmp_path):
    from PIL import Image
    from torchvision.datasets import ImageFolder
    from vitkd.cli import main
    from vitkd.config import parse_config
    from vitkd.data import DataSpec, build_datasets
    cfg_path = tmp_path / "syn.yaml"
    cfg_path.write_text(yaml.safe_dump(synth_raw(images=6, batch_size=4, iterations=3)))
    assert main(["synthesize", str(cfg_path), "--out", str(tmp_path / "set")]) == 0
    manifest = json.loads((tmp_path / "set" / "manifest.json").read_text())
    assert manifest["count"] == 6 and manifest["num_classes"] == 10 and manifest["mode"] == "L"
    assert len(manifest["fingerprint"]) == 64 and manifest["data"]["name"] == "digits"
    assert manifest["identity"]["teacher"]["weights_sha256"] == hashlib.sha256(
        fixture("resnet_digits_s_seed0.safetensors").read_bytes()).hexdigest()
    images, labels = read_synthetic(tmp_path / "set", 10)
    for (rel, y), img, lab in zip(manifest["files"], images, labels):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "set" / rel)), img) and y == lab
    folder = ImageFolder(str(tmp_path / "set" / "images"))   # a real ImageFolder: class folders in label order
    assert sorted(t for _, t in folder.samples) == sorted(labels.tolist())
    # a run config names it: train = the synthetic images, val / test = the real digits splits
    run = parse_config({"data": {"name": "digits", "synthetic": str(tmp_path / "set")}})
    ds, n = build_datasets(run.data, DataSpec((16, 16), (0.5,) * 3, (0.5,) * 3), seed=0)
    assert (len(ds["train"]), len(ds["val"]), len(ds["test"]), n) == (6, 200, 400, 10)
    assert ds["train"].targets.tolist() == labels.tolist()
    # a second call finds the complete set and reuses it (no batch recomputed)
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "set").rglob("*") if p.is_file()}
    logs = []
    synthesize(parse_synth_config(yaml.safe_load(cfg_path.read_text())), tmp_path / "set", log=logs.append)
    assert logs and "reused" in logs[0]
    assert before == {p: p.stat().st_mtime_ns for p in (tmp_path / "set").rglob("*") if p.is_file()}


def test_an_interrupted_synthesis_resumes_to_the_same_set(tmp_path):
    cfg = parse_synth_config(synth_raw(images=6, batch_size=2, iterations=3))
    synthesize(cfg, tmp_path / "full", log=lambda s: None)

    class Stop(Exception):
        pass

    def stop_after_first_batch(msg):
        if msg.startswith("batch 1/"):
            raise Stop
    with pytest.raises(Stop):
        synthesize(cfg, tmp_path / "cut", log=stop_after_first_batch)
    store = SyntheticStore(tmp_path / "cut")
    assert store.manifest() is None and store.batch_done(0) is not None and store.batch_done(1) is None
    with pytest.raises(Exception, match="not a complete synthetic set"):
        read_synthetic(tmp_path / "cut", 10)
    logs = []
    synthesize(cfg, tmp_path / "cut", log=logs.append)
    assert [m.split(":")[0] for m in logs if m.startswith("batch")] == ["batch 2/3", "batch 3/3"]
    a, b = read_synthetic(tmp_path / "full", 10), read_synthetic(tmp_path / "cut", 10)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert store.manifest()["fingerprint"] == SyntheticStore(tmp_path / "full").manifest()["fingerprint"]


# ---------------------------------------------------------------------------------------------- DearKD
def test_dearkd_switches_distillation_off_at_the_stage_boundary():
    from vitkd.config import parse_config, read_yaml
    from vitkd.losses import build_term
    dearkd = parse_config(read_yaml(ROOT / "configs/digits/dearkd.yaml"), paths=False)   # teacher not trained here
    assert dearkd.model.name == "vit_digits_small_gpsa"
    for terms in (dearkd.distill.terms,
                  next(r for r in yaml.safe_load((ROOT / "configs/compare/digits_methods.yaml").read_text())["rows"]
                       if r["name"] == "dearkd_cnn")["set"]["distill.terms"]):
        built = {t.label: t for t in (build_term(s, i, ["t"]) for i, s in enumerate(terms))}
        stage1 = {k: t.schedule(0.5) for k, t in built.items()}
        stage2 = {k: t.schedule(0.8) for k, t in built.items()}
        assert stage1["kd"] > 0 and stage1["cnn_align"] > 0 and stage1["ce_stage2"] == 0
        assert stage2["kd"] == 0 and stage2["cnn_align"] == 0 and stage2["ce"] + stage2["ce_stage2"] == 1.0
        assert built["kd"].schedule(0.7499) > 0 and built["kd"].schedule(0.75) == 0


def test_the_gpsa_vit_runs_timms_gpsa_on_patch_tokens_and_leaves_the_prefix_alone():
    import timm
    from timm.models.convit import GPSA
    from vitkd.archs import PrefixPassGPSA
    m = timm.create_model("vit_digits_small_gpsa", num_classes=10, gpsa_blocks=2).eval()
    kinds = [type(b.attn) for b in m.blocks]
    assert kinds[:2] == [PrefixPassGPSA] * 2 and PrefixPassGPSA not in kinds[2:]
    assert isinstance(m.blocks[0].attn.gpsa, GPSA)
    x = torch.randn(2, 1 + 16, 64)
    out = m.blocks[0].attn(x)
    assert torch.equal(out[:, 0], torch.zeros(2, 64))
    assert torch.allclose(out[:, 1:], m.blocks[0].attn.gpsa(x[:, 1:]))
    assert m(torch.randn(2, 3, 16, 16)).shape == (2, 10)


# ---------------------------------------------------------------------------------------------- the suite
def test_a_suite_synthesises_after_its_teacher_and_its_data_free_row_trains_on_the_set(tmp_path):
    from vitkd.compare.jobs import is_done
    from vitkd.compare.jobs import SuitePlan
    from vitkd.compare.plan import check_jobs, plan_suite
    from vitkd.compare.runner import run_job
    from vitkd.compare.suite import load_suite
    from vitkd.rundir import RunDir
    vit = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}
    student = {"model": {"name": "vit_tiny_patch16_224", "args": vit}, "data": {"name": "digits", "batch_size": 16},
               "train": {"epochs": 1, "progress": False}}
    teacher = {"model": {"name": "resnet_digits_s"}, "data": {"name": "digits"}, "train": {"epochs": 1}}
    (tmp_path / "student.yaml").write_text(yaml.safe_dump(student))
    (tmp_path / "teacher.yaml").write_text(yaml.safe_dump(teacher))
    syn = synth_raw(images=10, batch_size=10, iterations=2)
    syn["teacher"] = {"zoo": "fmnist-teachers-cnn_s"}   # the set config's own teacher: the suite's replaces it
    (tmp_path / "syn.yaml").write_text(yaml.safe_dump(syn))
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump({
        "name": "s", "student": "student.yaml", "seeds": [0], "teachers": {"cnn": {"config": "teacher.yaml"}},
        "synthetic": {"di": {"config": "syn.yaml", "teacher": "cnn"}},
        "rows": [{"name": "df", "family": "logit", "synthetic": "di", "teachers": {"t": "cnn"},
                  "set": {"distill.terms": [{"type": "ce", "weight": 0.5}, {"type": "kd", "weight": 0.5}]}}]}))
    suite, base = load_suite(tmp_path / "suite.yaml")
    cache = tmp_path / "cache"
    plan = SuitePlan(suite, base, cache)
    plan_suite(plan)
    teachers, (row,) = plan.with_role("teacher"), plan.with_role("row")
    synth = [j for j in plan.jobs if j.kind == "synth"]
    (job,) = synth
    assert job.kind == "synth" and job.deps == ["teachers/cnn"] and job.raw["teacher"] == {"checkpoint": str(teachers[0].out)}
    assert set(row.deps) == {"synth/di", "teachers/cnn"} and row.raw["data"]["synthetic"] == str(job.out)
    check_jobs(teachers + synth + [row])   # nothing trained yet: the set and the teacher are planned
    # the fixture ResNet stands in for the trained teacher
    weights = {"model": "resnet_digits_s", "checkpoint": str(fixture("resnet_digits_s_seed0.safetensors"))}
    job.raw["teacher"] = weights
    row.raw["distill"]["teachers"]["t"] = weights
    assert not is_done(job)
    assert run_job(job)[2] is None and is_done(job)
    assert run_job(row)[2] is None and is_done(row)
    assert RunDir(row.out).read_config()["data"]["synthetic"] == str(job.out)
    # its run config reads a set only the suite's synth job makes: the zoo does not publish it
    from vitkd.compare.plan import publishable
    assert not publishable(suite.rows[0])
    suite.rows[0].sections["synthetic"] = None
    assert publishable(suite.rows[0])


def test_weights_from_no_file_are_identified_by_their_content():
    """A zoo teacher's synthetic set is fingerprinted by the teacher's state: stable, and one changed weight changes it."""
    import torch
    from vitkd.methods.datafree.run import _weights_digest
    m = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    a, b = _weights_digest(m), _weights_digest(m)
    with torch.no_grad():
        m[0].weight[0, 0, 0, 0] += 1e-6
    assert a == b and _weights_digest(m) != a
