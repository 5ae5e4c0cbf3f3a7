"""m2mKD (issue 18): ViT modules, module jobs inside a frozen meta model, the loss, assembly, the stages."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
import yaml

import vitkd  # noqa: F401  (registers the digits archs)
from vitkd import models as model_lib
from vitkd.config import ConfigError
from vitkd.methods.m2m.stage import ModulePath, ViTModules, assemble

T_ARGS = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 4, "num_heads": 2, "mlp_ratio": 2.0}


def vit(seed: int, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    return model_lib.create("vit_tiny_patch16_224", 10, {**T_ARGS, **kw})


def x_batch(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name,args", [("vit_tiny_patch16_224", T_ARGS),
                                       ("deit_digits_tiny_distilled", {}), ("vit_digits_small", {})])
def test_forward_over_all_modules_is_the_plain_forward(name, args):
    model = model_lib.create(name, 10, args).eval()
    depth = len(model.blocks)
    mods = ViTModules(model, [1, depth - 1])
    x = x_batch()
    with torch.no_grad():
        assert torch.equal(mods(x, 0, 2), model(x))
        h = mods(x, 0, 1)   # module by module gives the same
        assert torch.equal(mods(h, 1, 2), model(x))


def test_depths_must_sum_to_the_depth():
    with pytest.raises(ConfigError, match=r"m2m.depths: \[1, 2\] .* depth 4"):
        ViTModules(vit(0), [1, 2])


def test_modules_own_every_tensor_once():
    model = model_lib.create("deit_digits_tiny_distilled", 10)
    mods = ViTModules(model, [1, 2, 1])
    owned = [n for i in range(3) for n in mods.module_names(i)]
    assert sorted(owned) == sorted(model.state_dict())
    assert {"cls_token", "dist_token", "pos_embed", "patch_embed.proj.weight"} <= set(mods.module_names(0))
    assert {"norm.weight", "head.weight", "head_dist.weight"} <= set(mods.module_names(2))


def test_m2mkd_loss_is_the_formula_with_deits_reduction():
    from vitkd.methods.m2m.loss import m2mkd
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    mixed = torch.softmax(torch.randn(5, 7, generator=g), -1)
    alpha, T = 0.3, 2.0
    ps, pt = torch.softmax(s / T, -1), torch.softmax(t / T, -1)
    kl = (pt * (pt.log() - ps.log())).sum() / (5 * 7) * T * T          # sum over B*C, / (B*C)
    ce = (-(mixed * torch.log_softmax(s, -1)).sum(-1)).mean()
    torch.testing.assert_close(m2mkd(s, t, mixed, alpha, T), (1 - alpha) * ce + alpha * kl)
    hard = -torch.log_softmax(s, -1)[torch.arange(5), t.argmax(-1)].mean()
    y = torch.tensor([0, 1, 2, 3, 4])
    ce_y = -torch.log_softmax(s, -1)[torch.arange(5), y].mean()
    torch.testing.assert_close(m2mkd(s, t, y, alpha, T, mode="hard"), (1 - alpha) * ce_y + alpha * hard)
    assert m2mkd(s, s, y, 1.0, T).abs() < 1e-6   # KL = 0 at equality


def _job(index: int, student_dim: int = 16):
    """A module job built as a run builds it: meta (teacher width, one block per module), the student's module
    in it, the teacher's module in it as a frozen live teacher, the m2mkd term, the engine's optimizer."""
    from vitkd.config import TrainCfg
    from vitkd.data import DataSpec
    from vitkd.distiller import Distiller
    from vitkd.engine.optim import build_optimizer
    from vitkd.losses import build_term
    from vitkd.teachers import LiveTeacher
    meta, teacher = model_lib.freeze(vit(1, depth=2)), model_lib.freeze(vit(2))
    student = vit(3, embed_dim=student_dim)
    spec = DataSpec(img_size=(16, 16), mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bicubic", crop_pct=1.0)
    path = ModulePath(meta, student, [2, 2], index)
    tpath = ModulePath(meta, teacher, [2, 2], index, trainable=False)
    term = build_term({"type": "m2mkd"}, 0, ["t"])
    d = Distiller(path, {"t": LiveTeacher(tpath, spec)}, [term], (16, 16), spec)
    opt, _ = build_optimizer(d, TrainCfg(epochs=1, lr=1e-2, warmup_epochs=0), 3)
    return d, opt, meta, teacher, student


@pytest.mark.parametrize("index", [0, 1])
def test_module_job_trains_only_its_module_and_stitches(index):
    from vitkd.losses import Batch
    d, opt, meta, teacher, student = _job(index)
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    mods = ViTModules(student, [2, 2])
    used = [s for s in (d.student.stitch_in, d.student.stitch_out) if s is not None]
    assert len(used) == 1                # widths 32 vs 16: a stitch on the side that meets the meta model
    assert (d.student.stitch_in is None) == (index == 0)
    stitches = [p for s in used for p in s.parameters()]
    assert held == {id(p) for p in mods.module_parameters(index)} | {id(p) for p in stitches}
    frozen = {k: v.clone() for k, v in {**{f"m.{k}": v for k, v in meta.state_dict().items()},
                                       **{f"t.{k}": v for k, v in teacher.state_dict().items()}}.items()}
    other = {n: v.clone() for n, v in student.state_dict().items() if n not in mods.module_names(index)}
    mine = {n: v.clone() for n, v in student.state_dict().items() if n in mods.module_names(index)}
    for _ in range(3):
        loss, _ = d(Batch(images=x_batch(8), target=torch.arange(8) % 10))
        opt.zero_grad()
        loss.backward()
        opt.step()
    now = {**{f"m.{k}": v for k, v in meta.state_dict().items()}, **{f"t.{k}": v for k, v in teacher.state_dict().items()}}
    assert all(torch.equal(frozen[k], now[k]) for k in frozen)    # meta and teacher bit-identical
    assert all(torch.equal(other[n], student.state_dict()[n]) for n in other)
    assert any(not torch.equal(mine[n], student.state_dict()[n]) for n in mine if mine[n].is_floating_point())
    # the gradient reached the student module through the frozen meta tail
    assert all(p.grad is None for p in meta.parameters())


def test_last_module_uses_its_own_head_the_others_the_meta_head():
    meta, teacher = model_lib.freeze(vit(1, depth=2)), vit(2)
    x = x_batch()
    last, first = ModulePath(meta, teacher, [2, 2], 1).eval(), ModulePath(meta, teacher, [2, 2], 0).eval()
    with torch.no_grad():
        before_last, before_first = last(x), first(x)
        expected_last = teacher.forward_head(teacher.norm(teacher.blocks[2:](meta.blocks[0](
            meta.norm_pre(meta.patch_drop(meta._pos_embed(meta.patch_embed(x))))))))
        torch.testing.assert_close(before_last, expected_last)
        meta.head.weight.add_(1.0)                               # the meta head: read by module 0's path only
        assert torch.equal(last(x), before_last)
        assert not torch.allclose(first(x), before_first)
        teacher.head.weight.add_(1.0)
        assert not torch.allclose(last(x), before_last)


def test_assembly_reproduces_each_modules_output():
    meta = model_lib.freeze(vit(1, depth=2))
    parts = [ModulePath(meta, vit(10 + i, embed_dim=16), [1, 3], i) for i in range(2)]   # as trained apart
    states = [{k: v.clone() for k, v in p.state_dict().items()} for p in parts]
    model = assemble(vit(99, embed_dim=16), [1, 3], states).eval()
    mods = ViTModules(model, [1, 3])
    x = x_batch()
    with torch.no_grad():
        h = mods(x, 0, 1)
        torch.testing.assert_close(h, parts[0].source.eval()(x, 0, 1), rtol=0, atol=0)
        torch.testing.assert_close(mods(h, 1, 2), parts[1].source.eval()(h, 1, 2), rtol=0, atol=0)
    with pytest.raises(ConfigError, match="2 module runs for 3"):
        assemble(vit(99, embed_dim=16), [1, 2, 1], states)


def test_pipeline_runs_through_vitkd_train_stages(tmp_path):
    """Tiny digits pipeline through the CLI: every stage a finished run folder, the check recorded, the
    frozen meta bit-identical inside a module job, the student assembled from the module runs."""
    from safetensors.torch import load_file
    from vitkd.cli import main
    from vitkd.rundir import RunDir
    base = {"seed": 0, "data": {"name": "digits", "train_subset": 32, "batch_size": 16},
            "train": {"epochs": 1, "progress": False, "threads": 1, "warmup_epochs": 0}}
    vit_args = {"img_size": 16, "patch_size": 4, "num_heads": 2, "mlp_ratio": 2.0}
    for name, dim, depth in (("teacher", 32, 2), ("meta", 32, 2), ("student", 16, 2)):
        cfg = {**base, "model": {"name": "vit_tiny_patch16_224", "args": {**vit_args, "embed_dim": dim, "depth": depth}}}
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({"m2mkd": {
        "teacher": {"config": "teacher.yaml"}, "meta": {"config": "meta.yaml"}, "student": {"config": "student.yaml"},
        "teacher_depths": [1, 1], "student_depths": [1, 1], "module": {"epochs": 1},
        "incubation": {"epochs": 1, "finetune_epochs": 1}, "finetune": {"epochs": 1}, "tolerance": -1.0}}))
    out = tmp_path / "out"
    assert main(["train", str(tmp_path / "p.yaml"), "--out", str(out)]) == 0
    check = json.loads((out / "check.json").read_text())
    assert check["passed"] is False and len(check["swapped_top1"]) == 2   # tolerance -1: incubation forced
    cost = json.loads((out / "cost.json").read_text())
    assert cost["total_macs"] == sum(v["total_macs"] for k, v in cost["stages"].items() if k != "teacher") > 0
    stages = ["teacher", "meta", "incubate0", "incubate1", "incubated", "module0", "module1", "student"]
    assert all(RunDir(out / s).is_finished() for s in stages)
    meta = load_file(str(out / "meta" / "model.safetensors"))
    job = load_file(str(out / "module1" / "model.safetensors"))
    assert all(torch.equal(meta[k], job[f"meta.model.{k}"]) for k in meta)
    assert yaml.safe_load((out / "module1" / "config.yaml").read_text())["distill"]["teachers"]["teacher"][
        "checkpoint"] == str(out / "incubated")
    mtime = (out / "student" / "stamp.json").stat().st_mtime_ns
    assert main(["train", str(tmp_path / "p.yaml"), "--out", str(out)]) == 0   # every stage reused
    assert (out / "student" / "stamp.json").stat().st_mtime_ns == mtime


def test_suite_plans_a_pipeline_row_as_jobs_with_dependencies(tmp_path):
    """A pipeline row: incubation shared by the seeds (dropped when the check passed), M module jobs per seed
    reading the meta and the (incubated) teacher, then the row's run reading that seed's module jobs."""
    from vitkd.methods.m2m.suite import plan_pipelines
    from vitkd.compare.jobs import SuitePlan
    from vitkd.compare.plan import plan_suite
    from vitkd.compare.suite import load_suite
    student = {"seed": 0, "model": {"name": "vit_tiny_patch16_224", "args": {**T_ARGS, "embed_dim": 16, "depth": 2}},
               "data": {"name": "digits", "train_subset": 32, "batch_size": 16}, "train": {"epochs": 7}}
    (tmp_path / "student.yaml").write_text(yaml.safe_dump(student))
    (tmp_path / "pipe.yaml").write_text(yaml.safe_dump({"m2mkd": {
        "teacher": {"config": "student.yaml"}, "meta": {"config": "student.yaml"}, "student": {"config": "student.yaml"},
        "teacher_depths": [1, 1], "student_depths": [1, 1], "module": {"epochs": 3}, "finetune": {"epochs": 2}}}))
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump({
        "name": "tiny", "student": "student.yaml", "seeds": [0, 1],
        "teachers": {"t": {"config": "student.yaml"}, "meta": {"config": "student.yaml"}},
        "rows": [{"name": "no_kd", "family": "none"},
                 {"name": "m2m", "family": "module", "pipeline": "pipe.yaml", "teachers": {"teacher": "t", "meta": "meta"}}]}))
    suite, base = load_suite(tmp_path / "suite.yaml")
    plan = SuitePlan(suite, base, tmp_path / "c")
    plan_suite(plan)
    teachers = plan.with_role("teacher")
    assert [j.row for j in plan.jobs if j.kind == "row"] == ["no_kd", "no_kd"]   # the pipeline row is not a plain row
    # before anything runs, the pipeline's stages are planned (incubation included) to be checked, not run
    assert sorted(j.key for j in plan.checked_only) == sorted(
        j.key for j in plan_pipelines(suite, base, tmp_path / "c", False, {}, {}, teachers))
    jobs = {j.key: j for j in plan_pipelines(suite, base, tmp_path / "c", False, {}, {}, teachers)}
    assert sorted(jobs) == sorted(["pipelines/m2m/incubate0", "pipelines/m2m/incubate1", "pipelines/m2m/incubated",
                                   *[f"pipelines/m2m/s{s}/module{i}" for s in (0, 1) for i in (0, 1)],
                                   "rows/m2m/s0", "rows/m2m/s1"])
    assert jobs["pipelines/m2m/incubate1"].deps == ["teachers/meta", "teachers/t"]
    assert jobs["pipelines/m2m/s1/module0"].deps == ["teachers/meta", "pipelines/m2m/incubated"]
    assert jobs["rows/m2m/s1"].deps == ["pipelines/m2m/s1/module0", "pipelines/m2m/s1/module1"]
    assert (jobs["rows/m2m/s1"].role, jobs["rows/m2m/s1"].seed, jobs["rows/m2m/s1"].raw["train"]["epochs"]) == ("row", 1, 2)
    assert jobs["pipelines/m2m/s0/module1"].raw["m2m"]["module"] == 1
    # a stage's identity is a field of its job, not read back from its key
    assert {(j.stage, j.phase) for j in jobs.values() if j.row == "m2m"} == {
        ("incubate0", "incubation"), ("incubate1", "incubation"), ("incubated", "incubation"),
        ("module0", "module"), ("module1", "module"), ("student", "finetune")}
    passed = {j.key: j for j in plan_pipelines(suite, base, tmp_path / "c", False, {}, {}, teachers,
                                               {"m2m": {"passed": True}})}
    assert not any(j.phase == "incubation" for j in passed.values())
    assert passed["pipelines/m2m/s0/module0"].deps == ["teachers/meta", "teachers/t"]
