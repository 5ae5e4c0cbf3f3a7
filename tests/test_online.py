"""Online and self distillation (issue 31): the ``peer`` and ``ema`` teacher sources of vitkd.methods.online.

Deep mutual learning against a hand computation (Zhang et al. 2018: each peer's CE + KL(p_other.detach() || p_self),
here through the ``kd`` term: T^2 * KL(softmax(t/T) || softmax(s/T)), KL summed over classes, batch mean); each model's
gradient from its own terms only; the EMA teacher is the engine's EMA (a hand-computed EMA after a few steps) and
takes no gradient; its warm-up; a saved peer reloads to the same predictions; cost; the digits configs build and
train. Crash safety: tests/test_crash_safety.py; two processes: tests/test_distributed.py."""
import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors import safe_open

from vitkd import models as model_lib
from vitkd.cli import main
from vitkd.config import ConfigError, load_config, parse_config, section
from vitkd.engine import build_run, train
from vitkd.engine.build import build_student, dry_build
from vitkd.engine.checkpoint import load_checkpoint
from vitkd.engine.optim import build_optimizer
from vitkd.evaluate import evaluate
from vitkd.losses import Batch
from vitkd.profile import distillation_cost
from vitkd.rundir import RunDir

DIGITS = Path(__file__).parents[1] / "configs" / "digits"
VIT = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}
DML_TERMS = [{"type": "ce"}, {"type": "kd", "teacher": "peer1", "T": 1.0},
             {"type": "ce", "student": "peer1"}, {"type": "kd", "student": "peer1", "teacher": "student", "T": 1.0}]


def base(**train) -> dict:
    return {"seed": 1, "model": {"name": "vit_tiny_patch16_224", "args": dict(VIT)},
            "data": {"name": "digits", "train_subset": 32, "batch_size": 8},
            "train": {"epochs": 1, "progress": False, "device": "cpu", "label_smoothing": 0.0, "warmup_epochs": 0,
                      **train}}


def dml(peer=("vit_tiny_patch16_224", VIT), terms=DML_TERMS, **train) -> dict:
    raw = base(**train)
    raw["distill"] = {"teachers": {"peer1": {"peer": {"model": peer[0], "args": dict(peer[1])}}},
                      "terms": copy.deepcopy(terms)}
    return raw


def ema(warmup=0.0, decay=0.9, **train) -> dict:
    raw = base(ema_decay=decay, **train)
    raw["distill"] = {"teachers": {"mean": {"ema": {"warmup": warmup}}},
                      "terms": [{"type": "ce"}, {"type": "kd", "T": 2.0}]}
    return raw


def first_batch(run, n=8, progress=0.0) -> Batch:
    x, y, idx = next(iter(torch.utils.data.DataLoader(run.datasets["train"], batch_size=n)))
    return Batch(images=x, target=y, index=idx, progress=progress)


def kl(target_logits, logits, T):
    """T^2 * KL(softmax(target/T) || softmax(logits/T)): summed over classes, mean over the batch."""
    q = F.softmax(target_logits / T, -1)
    return T * T * (q * (F.log_softmax(target_logits / T, -1) - F.log_softmax(logits / T, -1))).sum(-1).mean()


# ---------------------------------------------------------------------- peers
@pytest.mark.parametrize("T", [1.0, 3.0])
def test_two_peer_dml_loss_equals_the_hand_computation(T):
    terms = copy.deepcopy(DML_TERMS)
    terms[1]["T"] = terms[3]["T"] = T
    run = build_run(parse_config(dml(terms=terms)))
    d = run.distiller
    d.eval()
    b = first_batch(run)
    total, parts = d(b)
    with torch.no_grad():
        s, p = run.student(b.images), d.teachers["peer1"].model(b.images)
    # Zhang et al. 2018: L_1 = CE(p1) + KL(p2 || p1), L_2 = CE(p2) + KL(p1 || p2), the other's prediction detached
    by_hand = {"ce": F.cross_entropy(s, b.target), "kd": kl(p, s, T),
               "ce_peer1": F.cross_entropy(p, b.target), "kd_peer1": kl(s, p, T)}
    assert set(parts) == set(by_hand)
    for k, v in by_hand.items():
        assert parts[k].item() == pytest.approx(v.item(), rel=1e-5, abs=1e-7), k
    assert total.item() == pytest.approx(sum(v.item() for v in by_hand.values()), rel=1e-5)
    d.close()


@pytest.mark.parametrize("only,learner", [(3, "peer1"), (1, "student"), (2, "peer1"), (0, "student")])
def test_a_term_gradient_reaches_only_the_model_that_learns_from_it(only, learner):
    terms = [dict(t, weight=1.0 if i == only else 0.0) for i, t in enumerate(DML_TERMS)]
    run = build_run(parse_config(dml(terms=terms)))
    d = run.distiller
    d.train()
    total, _ = d(first_batch(run))
    total.backward()
    models = {"student": run.student, "peer1": d.teachers["peer1"].model}
    for name, m in models.items():
        moved = any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())
        assert moved == (name == learner), (name, learner)
    d.close()


def test_both_peers_update_in_one_step_and_the_peer_is_trainable_everywhere():
    cfg = parse_config(dml())
    run = build_run(cfg)
    d = run.distiller
    peer = d.teachers["peer1"]
    assert peer.trainable and list(d.trained_teachers()) == ["peer1"]
    ids = {id(p) for p in d.trainable_parameters()}
    assert all(id(p) in ids for p in peer.model.parameters())          # in the optimizer
    assert any(n.startswith("teachers.peer1.model.") for n in d.no_weight_decay())   # its pos_embed, cls_token
    opt, sched = build_optimizer(d, cfg.train, 4)
    before = {k: [p.detach().clone() for p in m.parameters()] for k, m in (("s", run.student), ("p", peer.model))}
    d.train()
    assert peer.model.training   # a trainable source follows the run's mode
    total, _ = d(first_batch(run))
    opt.zero_grad()
    total.backward()
    opt.step()
    for k, m in (("s", run.student), ("p", peer.model)):
        assert any(not torch.equal(a, p) for a, p in zip(before[k], m.parameters())), k
    d.close()


def test_the_student_is_built_as_in_the_run_without_peers():
    """Peer 0 pairs with the no-KD run: same initialisation (the peer is seeded apart, from the seed and its name)."""
    plain = base()
    a = build_run(parse_config(plain)).student.state_dict()
    b = build_run(parse_config(dml()))
    assert all(torch.equal(a[k], v) for k, v in b.student.state_dict().items())
    peer = b.distiller.teachers["peer1"].model.state_dict()
    assert not torch.equal(peer["cls_token"], a["cls_token"])   # not the student's copy
    again = build_run(parse_config(dml())).distiller.teachers["peer1"].model.state_dict()
    assert all(torch.equal(peer[k], v) for k, v in again.items())   # deterministic


@pytest.mark.parametrize("teacher,term,match", [
    ({"peer": {"model": "resnet10t", "depth": 3}}, None, r"distill.teachers.peer1.peer: unknown key 'depth'"),
    ({"peer": {"args": {}}}, None, r"distill.teachers.peer1.peer.model: missing"),
    ({"peer": {"model": "resnet10x"}}, None, r"peer.model: unknown timm model 'resnet10x'"),
    ({"peer": {"model": "resnet10t"}, "checkpoint": "."}, None, r"distill.teachers.peer1.checkpoint: a peer"),
    ({"peer": {"model": "resnet10t"}}, {"type": "ce", "student": "nobody"}, r"\.student: 'nobody' is not"),
    ({"peer": {"model": "resnet10t"}}, {"type": "kd", "student": "peer1", "teacher": "peer1"},
     r"does not distil from itself"),
])
def test_bad_peer_configs_are_one_line_naming_the_key(teacher, term, match):
    raw = dml()
    raw["distill"]["teachers"]["peer1"] = teacher
    if term:
        raw["distill"]["terms"].append(term)
    with pytest.raises(ConfigError, match=match) as e:
        dry_build(parse_config(raw, paths=False))
    assert "\n" not in str(e.value)


def test_a_teacher_named_like_the_ensembles_metrics_is_refused_beside_a_peer():
    raw = dml()
    raw["distill"]["teachers"]["ensemble"] = raw["distill"]["teachers"].pop("peer1")
    for term in raw["distill"]["terms"]:
        for key in ("student", "teacher"):
            if term.get(key) == "peer1":
                term[key] = "ensemble"
    with pytest.raises(ConfigError, match=r"distill.teachers.ensemble: the name of the trained models' ensemble"):
        dry_build(parse_config(raw, paths=False))


def test_kd_of_a_peer_defaults_to_the_student_as_its_target():
    terms = DML_TERMS[:3] + [{"type": "kd", "student": "peer1", "T": 1.0}]
    d = build_run(parse_config(dml(terms=terms))).distiller
    assert d.terms[3].reads(d.terms[3].teacher) == "student" and d.terms[3].learner == "peer1"
    d.close()


# ---------------------------------------------------------------------- EMA teacher
def test_ema_teacher_is_the_engines_ema_a_hand_computed_ema_and_takes_no_gradient():
    from timm.utils import ModelEmaV3
    cfg = parse_config(ema(decay=0.8))
    run = build_run(cfg)
    d, student = run.distiller, run.student
    model_ema = ModelEmaV3(student, decay=0.8)   # what the engine builds
    d.bind(ema=model_ema.module)
    teacher = d.teachers["mean"]
    assert teacher.model is model_ema.module and not teacher.trainable
    assert not any(p is q for p in d.trainable_parameters() for q in model_ema.module.parameters())
    opt, _ = build_optimizer(d, cfg.train, 5)
    hand = {k: v.detach().clone() for k, v in student.state_dict().items() if v.is_floating_point()}
    b = first_batch(run)
    for step in range(5):
        d.train()
        total, parts = d(Batch(images=b.images, target=b.target, index=b.index, progress=step / 5))
        opt.zero_grad()
        total.backward()
        assert all(p.grad is None for p in model_ema.module.parameters())   # no gradient reaches the EMA
        opt.step()
        model_ema.update(student, step=step)
        decay = 0.0 if step <= 1 else 0.8   # timm's ModelEmaV3: the first updates copy the student
        for k, v in student.state_dict().items():
            if k in hand:
                hand[k] = decay * hand[k] + (1 - decay) * v.detach()
    got = model_ema.module.state_dict()
    worst = max((got[k] - v).abs().max().item() for k, v in hand.items())
    assert worst < 1e-6, worst
    # the teacher's prediction is the EMA model's
    d.eval()
    with torch.no_grad():
        assert torch.allclose(teacher(b.images).logits, model_ema.module(b.images), atol=1e-6)
    d.close()


def test_ema_teacher_readers_are_off_during_its_warmup():
    from timm.utils import ModelEmaV3
    run = build_run(parse_config(ema(warmup=0.5)))
    d = run.distiller
    model_ema = ModelEmaV3(run.student, decay=0.9)
    d.bind(ema=model_ema.module)
    calls = []
    model_ema.module.patch_embed.register_forward_hook(lambda *a: calls.append(1))
    b = first_batch(run)
    with torch.no_grad():
        _, parts = d(Batch(images=b.images, target=b.target, progress=0.49))
        assert parts["kd"].item() == 0.0 and not calls   # in its warm-up: not run, its reader off
        run.student.head.weight.add_(torch.randn_like(run.student.head.weight))   # the student moves off its EMA
        _, parts = d(Batch(images=b.images, target=b.target, progress=0.5))
        assert parts["kd"].item() > 0 and calls
    d.close()


@pytest.mark.parametrize("raw,match", [
    (dict(ema(), train={**ema()["train"], "ema_decay": None}), r"distill.teachers.mean.ema: .*set train.ema_decay"),
    (ema(warmup=1.0), r"distill.teachers.mean.ema.warmup: a fraction of training in \[0, 1\)"),
    (dict(ema(), distill={"teachers": {"mean": {"ema": {"warmup_epochs": 1}}}, "terms": [{"type": "kd"}]}),
     r"ema.warmup_epochs: must be in \[0, train.epochs = 1\)"),
    (dict(ema(), distill={"teachers": {"mean": {"ema": {}, "zoo": "x"}}, "terms": [{"type": "kd"}]}),
     r"distill.teachers.mean.zoo: an ema teacher"),
])
def test_bad_ema_configs_are_one_line_naming_the_key(raw, match):
    with pytest.raises(ConfigError, match=match) as e:
        dry_build(parse_config(raw, paths=False))
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------- cost
def test_training_cost_counts_each_peers_backward_and_the_ema_teachers_forward(capsys):
    run = build_run(parse_config(dml()))
    cost = distillation_cost(run.distiller, run.spec.input_size)
    fwd = cost["teachers_forward_macs"]["peer1"]
    assert fwd == pytest.approx(cost["student_forward_macs"])   # the same ViT
    assert cost["teachers_backward_macs"] == {"peer1": pytest.approx(2 * fwd)}
    assert cost["teachers_total_macs"] == pytest.approx(3 * fwd)
    run = build_run(parse_config(ema()))
    cost = distillation_cost(run.distiller, run.spec.input_size)
    assert cost["teachers_forward_macs"]["mean"] == pytest.approx(cost["student_forward_macs"])
    assert cost["teachers_backward_macs"] == {}
    assert main(["profile", str(DIGITS / "dml_cnn_vit.yaml")]) == 0
    out = capsys.readouterr().out
    assert "teacher cnn (forward)" in out and "teacher cnn (backward, trained)" in out


# ---------------------------------------------------------------------- the digits configs
CONFIGS = ["dml_vit.yaml", "dml_cnn_vit.yaml", "ema_self.yaml"]


@pytest.mark.parametrize("path", CONFIGS)
def test_digits_config_dry_builds(path):
    requests = dry_build(load_config(DIGITS / path))
    assert set(requests) == set(yaml.safe_load((DIGITS / path).read_text())["distill"]["teachers"])


@pytest.mark.parametrize("path", CONFIGS)
def test_digits_config_trains_a_few_steps(path, tmp_path):
    sets = ["train.epochs=1", "data.train_subset=32", "data.batch_size=16", "train.device=cpu",
            "train.progress=false", "train.warmup_epochs=0"]
    cfg = load_config(DIGITS / path, sets)
    out = tmp_path / "run"
    final = train(cfg, out, log=lambda m: None)
    run = RunDir(out)
    assert run.is_finished()
    teachers = cfg.distill.teachers
    for name, t in teachers.items():
        if section(t, "peer") is None:
            assert not run.teacher_weights_path(name).exists()
            continue
        # the peer and the ensemble are reported beside the student (the row)
        assert {f"{name}_val_top1", f"{name}_test_top1", "ensemble_val_top1", "ensemble_test_top1"} <= set(final)
        # the saved peer reloads to the same predictions: its top-1 and logits
        path_w = run.teacher_weights_path(name)
        with safe_open(str(path_w), "pt") as f:
            meta = f.metadata()
        peer = model_lib.create(meta["model"], int(meta["num_classes"]), json.loads(meta["args"]), str(path_w))
        _, datasets, *_ = build_student(cfg, str(out))
        r = evaluate(peer, datasets["test"], 64, torch.device("cpu"))
        assert r["top1"] == pytest.approx(final[f"{name}_test_top1"], abs=1e-9)
        ck = load_checkpoint(out)["teachers"][name]
        ref = model_lib.create(meta["model"], int(meta["num_classes"]), json.loads(meta["args"]))
        ref.load_state_dict({k[len("model."):]: v for k, v in ck.items()})
        x = torch.stack([datasets["test"][i][0] for i in range(8)])
        with torch.no_grad():
            assert torch.equal(peer.eval()(x), ref.eval()(x))
    if cfg.train.ema_decay is not None:
        assert "ema_val_top1" in final and run.ema_weights_path.is_file()


def test_vitkd_train_prints_the_peers_and_the_ensembles_top1_beside_the_students(tmp_path, capsys):
    from vitkd.cli import main
    out = tmp_path / "run"
    assert main(["train", str(DIGITS / "dml_vit.yaml"), "--out", str(out), "--set", "train.epochs=1",
                 "data.train_subset=32", "data.batch_size=16", "train.device=cpu", "train.progress=false",
                 "train.warmup_epochs=0"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    final = json.loads((out / "metrics.json").read_text())["final"]
    peers = [k for k, t in yaml.safe_load((DIGITS / "dml_vit.yaml").read_text())["distill"]["teachers"].items()
             if "peer" in t]
    keys = {"val_top1", "test_top1", "ensemble_val_top1", "ensemble_test_top1",
            *(f"{p}_{s}_top1" for p in peers for s in ("val", "test"))}
    assert peers and keys <= set(printed) and all(printed[k] == final[k] for k in keys)


def test_a_peer_with_batchnorm_is_named_world_size_dependent_and_sits_in_the_ddp_part():
    from vitkd.dist import TrainablePart
    from vitkd.engine.loop import world_size_notes
    run = build_run(load_config(DIGITS / "dml_cnn_vit.yaml"))
    notes = world_size_notes(run.distiller, run.student)
    assert "teacher cnn BatchNorm" in notes and "student BatchNorm" not in notes
    part = TrainablePart(run.distiller)
    ids = {id(p) for p in part.parameters()}
    assert all(id(p) in ids for p in run.distiller.teachers["cnn"].model.parameters())
    run.distiller.close()


@pytest.mark.parametrize("kind", ["peer", "ema"])
def test_feature_and_relation_terms_read_an_online_teacher_unchanged(kind):
    """Token, attention and relation terms read a peer (either way round) and the EMA teacher like a live one."""
    from timm.utils import ModelEmaV3
    if kind == "peer":
        raw, name = dml(), "peer1"
        raw["distill"]["terms"] += [{"type": "dist", "teacher": "peer1"},
                                    {"type": "attn_kl", "student": "peer1", "student_blocks": 1, "teacher_blocks": 1},
                                    {"type": "manifold", "student": "peer1", "pairs": [[0, 0]]}]
    else:
        raw, name = ema(), "mean"
        raw["distill"]["terms"] += [{"type": "dist"}, {"type": "attn_kl", "student_blocks": 1, "teacher_blocks": 1},
                                    {"type": "manifold", "pairs": [[0, 0]]}]
    run = build_run(parse_config(raw))
    d = run.distiller
    if kind == "ema":
        model_ema = ModelEmaV3(run.student, decay=0.9)
        d.bind(ema=model_ema.module)
        with torch.no_grad():
            for p in run.student.parameters():   # the student moves off its EMA
                p.add_(0.1 * torch.randn_like(p))
    d.train()
    total, parts = d(first_batch(run, progress=0.5))
    assert torch.isfinite(total) and all(torch.isfinite(v) and v > 0 for v in parts.values()), parts
    total.backward()
    assert d.requests[name].attn   # the attention of the online teacher was tapped
    d.close()


@pytest.mark.parametrize("kind", ["peer", "ema"])
def test_a_run_whose_teacher_it_trains_itself_publishes_without_a_zoo_teacher(kind, tmp_path):
    """A DML or EMA run's teacher is made by the run: ``zoo publish`` asks no ``--teacher`` for it, the entry's
    lineage is empty, and the shipped config keeps the peer (or EMA) entry, so it trains again as it did; a run
    with a live teacher from outside is still refused until that teacher is in the zoo."""
    from vitkd.zoo.index import ZooError
    from vitkd.zoo.publish import publish_run
    raw = dml() if kind == "peer" else ema()
    train(parse_config(raw), tmp_path / "run", log=lambda m: None)
    e = publish_run(tmp_path / "run", f"tiny-{kind}", tmp_path / "models" / "zoo.yaml", figures={"params_m": 0.0})
    assert e.teachers == {}
    shipped = yaml.safe_load((tmp_path / "models" / f"tiny-{kind}" / e.config).read_text())
    [(name, entry)] = raw["distill"]["teachers"].items()
    assert shipped["distill"]["teachers"][name][kind] == entry[kind]
    assert shipped["distill"]["teachers"][name].get("zoo") is None
    outside = base()
    outside["distill"] = {"teachers": {"t": {"model": "vit_tiny_patch16_224", "args": dict(VIT),
                                             "checkpoint": str(tmp_path / "run")}},
                          "terms": [{"type": "ce"}, {"type": "kd", "T": 2.0}]}
    train(parse_config(outside), tmp_path / "kd", log=lambda m: None)
    with pytest.raises(ZooError, match="teacher 't' of the run has no zoo entry"):
        publish_run(tmp_path / "kd", "tiny-kd", tmp_path / "models" / "zoo.yaml", figures={"params_m": 0.0})
