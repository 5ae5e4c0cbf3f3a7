"""The Distiller with real terms: what trains, what is saved where, config errors, trained teachers."""
import copy
import json
from pathlib import Path

import pytest
import timm
import torch
import yaml
from safetensors.torch import load_file, save_file

from vitkd.cli import main as cli_main
from vitkd.config import ConfigError, parse_config
from vitkd.distiller import Distiller, build_distiller
from factories import IMG, batch, vit  # noqa: F401
from vitkd.losses import Batch, build_term
from vitkd import models as model_lib
from vitkd.rundir import RunDir





def make(student, teachers, specs):
    terms = [build_term(s, i, list(teachers)) for i, s in enumerate(specs)]
    return Distiller(student, teachers, terms, IMG)




SPECS = [
    {"type": "ce"},
    {"type": "kd", "teacher": "cnn"},
    {"type": "fitnet", "student_layers": [0, 1], "teacher_layers": [4, 8], "teacher": "cnn"},
    {"type": "vitkd", "teacher": "vit"},
    {"type": "attn_kl", "student_blocks": 1, "teacher_blocks": 2, "match": "mix", "teacher": "vit"},
    {"type": "ofa", "student_layers": [0], "teacher": "cnn"},
]


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    s = vit()
    teachers = {"cnn": timm.create_model("resnet10t", num_classes=10), "vit": vit(48, 3, 3)}
    return s, teachers, make(s, teachers, SPECS)


def test_gradients_reach_only_student_and_connectors(setup):
    s, teachers, d = setup
    before = {k: copy.deepcopy(t.state_dict()) for k, t in teachers.items()}
    opt = torch.optim.AdamW(d.trainable_parameters(), lr=1e-2)
    d.train()
    assert all(not t.training for t in teachers.values())
    total, parts = d(batch())
    assert set(parts) == {"ce", "kd", "fitnet", "vitkd", "attn_kl", "ofa"}
    opt.zero_grad()
    total.backward()
    for t in teachers.values():
        assert all(p.grad is None and not p.requires_grad for p in t.parameters())
    conn = list(d.terms.parameters())
    assert conn and all(p.grad is not None for p in conn if p.requires_grad)
    assert all(p.grad is not None for n, p in s.named_parameters() if not n.startswith("head"))
    w0 = [p.detach().clone() for p in conn]
    opt.step()
    assert any(not torch.equal(a, p) for a, p in zip(w0, conn))
    for k, t in teachers.items():
        for name, v in t.state_dict().items():
            assert torch.equal(v, before[k][name]), f"teacher {k} changed {name}"


def test_connectors_are_trainable_and_saved_apart_from_the_student(setup):
    s, teachers, d = setup
    ids = {id(p) for p in d.trainable_parameters()}
    conn = list(d.terms.named_parameters())
    assert conn and all(id(p) in ids for _, p in conn)
    assert ids == {id(p) for p in s.parameters()} | {id(p) for _, p in conn}
    state = d.connector_state_dict()
    names = {n for n, _ in conn}
    assert names <= set(state)
    assert any("aligners" in k for k in state) and any("mask_token" in k for k in state)
    assert any("exits" in k for k in state) and any("mixers" in k for k in state)
    student_state = s.state_dict()
    assert not any(k.startswith("terms.") or "aligners" in k or "mask_token" in k for k in student_state)
    assert all(id(v) not in {id(p) for _, p in conn} for v in student_state.values())


def test_build_distiller_reports_bad_terms_by_name(tmp_path):
    w = tmp_path / "t.safetensors"
    save_file(timm.create_model("resnet10t", num_classes=10).state_dict(), str(w))
    base = {"model": {"name": "vit_tiny_patch16_224",
                      "args": {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}},
            "distill": {"teachers": {"cnn": {"model": "resnet10t", "checkpoint": str(w)}}}}
    for terms, needle in [([{"type": "fitnet", "student_layers": 7, "teacher_layers": 8}], "no block 7"),
                          ([{"type": "kd", "teacher": "vit"}], "'vit' is not a configured teacher"),
                          ([{"type": "ce"}], "no loss term reads this teacher")]:
        cfg = parse_config({**base, "distill": {**base["distill"], "terms": terms}})
        student = model_lib.create(cfg.model.name, 10, cfg.model.args)
        with pytest.raises(ConfigError, match=needle):
            build_distiller(cfg, student, 10, IMG)


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


STUDENT = {"name": "vit_tiny_patch16_224",
           "args": {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0}}
FAST = {"epochs": 1, "progress": False, "warmup_epochs": 0}
DATA = {"name": "digits", "train_subset": 128, "batch_size": 64, "eval_batch_size": 400}


def test_cli_bad_distill_config_exits_2_and_writes_nothing(tmp_path, capsys):
    w = tmp_path / "t.safetensors"
    save_file(timm.create_model("resnet10t", num_classes=10).state_dict(), str(w))
    teachers = {"cnn": {"model": "resnet10t", "checkpoint": str(w)}}
    bad = [
        [{"type": "fitnet", "student_layers": 9, "teacher_layers": 8}],          # block the student lacks
        [{"type": "fitnet", "student_layers": 1}],                               # missing argument
        [{"type": "kd", "T": 2, "temprature": 1}],                               # unknown argument
        [{"type": "fitnet", "student_layers": 1, "teacher_layers": 8, "connector": "none"}],   # widths 32 vs 128
        [{"type": "kd", "teacher": "vit"}],                                      # unknown teacher
    ]
    for i, terms in enumerate(bad):
        cfg = _write(tmp_path / f"bad{i}.yaml", {"model": STUDENT, "data": {**DATA, "img_size": 16}, "train": FAST,
                                                 "distill": {"teachers": teachers, "terms": terms}})
        out = tmp_path / f"run{i}"
        assert cli_main(["train", str(cfg), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("vitkd: error:")
        assert terms[0]["type"] in err
        assert not out.exists()


def test_teacher_from_vitkd_train_distils_a_student(tmp_path, capsys):
    tcfg = _write(tmp_path / "teacher.yaml", {"model": {"name": "resnet10t"}, "data": {**DATA, "img_size": 16},
                                              "train": FAST})
    tdir = tmp_path / "teacher"
    assert cli_main(["train", str(tcfg), "--out", str(tdir)]) == 0
    assert (tdir / RunDir.WEIGHTS).is_file()
    # the run folder loads as a teacher through timm's pretrained_cfg_overlay(file=...)
    teacher = model_lib.create("resnet10t", 10, {}, str(tdir))
    ref = load_file(str(tdir / RunDir.WEIGHTS))
    assert torch.equal(teacher.state_dict()["fc.weight"], ref["fc.weight"])
    scfg = _write(tmp_path / "student.yaml", {
        "model": STUDENT, "data": DATA, "train": FAST,
        "distill": {"teachers": {"cnn": {"checkpoint": str(tdir)}},   # model read from the run folder
                    "terms": [{"type": "ce", "weight": 0.5}, {"type": "kd", "weight": 0.5, "T": 4.0},
                              {"type": "cnn_align", "student_blocks": 0, "teacher_stages": 4}]}})
    sdir = tmp_path / "student"
    assert cli_main(["train", str(scfg), "--out", str(sdir)]) == 0
    out = capsys.readouterr().out.strip().splitlines()[-1]
    assert "test_top1" in json.loads(out)
    metrics = json.loads((sdir / "metrics.json").read_text())["final"]
    assert {"train_ce", "train_kd", "train_cnn_align"} <= set(metrics)
    ckpt = torch.load(sdir / "checkpoint.pt", weights_only=True)
    assert any("aligners" in k for k in ckpt["connectors"])
    exported = load_file(str(sdir / RunDir.WEIGHTS))
    assert set(exported) == set(ckpt["student"]) and not any("aligners" in k for k in exported)


DIGITS = Path(__file__).parents[1] / "configs" / "digits"
TEACHER_RUNS = {"cnn": ("resnet10t", {}), "inv": ("rednet_digits", {"kernel_size": 5}),
                "vit": ("vit_small_patch16_224", {"img_size": 16, "patch_size": 4, "embed_dim": 128, "depth": 6,
                                                  "num_heads": 4, "mlp_ratio": 2.0})}


def _fake_run(folder: Path, name: str, args: dict) -> Path:
    """A finished run folder as `vitkd train` leaves it (config, metadata, weights, stamp), untrained weights."""
    run = RunDir(folder)
    folder.mkdir()
    config = {"model": {"name": name, "args": args}}
    run.write_config(config)
    run.write_meta({"num_classes": 10})
    m = model_lib.create(name, 10, args)
    run.save_weights(m.state_dict(), {"model": name})
    run.write_stamp(config)
    return folder


@pytest.fixture(scope="module")
def fake_teachers(tmp_path_factory):
    root = tmp_path_factory.mktemp("teachers")
    return {k: _fake_run(root / k, *v) for k, v in TEACHER_RUNS.items()}


@pytest.mark.parametrize("path", sorted(p.name for p in DIGITS.glob("*.yaml")
                                         if "\nchain:" not in p.read_text()   # chains: tests/test_compare.py
                                         and "\nm2mkd:" not in p.read_text()   # pipelines: tests/test_m2m.py
                                         and "\nsynth:" not in p.read_text()))   # synthesis: tests/test_synth.py
def test_digits_configs_build_and_step(path, fake_teachers):
    from vitkd.config import load_config
    from vitkd.engine import build_run
    raw = yaml.safe_load((DIGITS / path).read_text())
    teachers = (raw.get("distill") or {}).get("teachers", {})
    sets = [f"distill.teachers.{k}.checkpoint={fake_teachers[k]}" for k, v in teachers.items()
            if "checkpoint" in (v or {})]   # peers and EMA teachers read no run
    run = build_run(load_config(DIGITS / path, sets))
    x, y, idx = next(iter(torch.utils.data.DataLoader(run.datasets["train"], batch_size=8)))
    run.distiller.train()
    total, parts = run.distiller(Batch(images=x, target=y, index=idx))
    assert torch.isfinite(total) and len(parts) == len((raw.get("distill") or {}).get("terms") or [{}])
    total.backward()
    run.distiller.close()
