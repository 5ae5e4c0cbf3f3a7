"""The bad-input sweep (issue 12): every mistake a user can make on the command line gets exit code 2, exactly one
line on stderr naming the offending key, file or value, and leaves every folder byte-identical to before (a
folder that did not exist stays absent).

One table, one test. A case builds its inputs in a fresh folder (real on-disk formats: YAML files, ImageFolder
PNGs written with PIL, safetensors and torch files), runs ``vitkd.cli.main`` in-process, and the whole folder is
compared byte for byte before and after. Shared fixtures (a finished tiny run, bare weights files) live outside
that folder and are checked unchanged too. The real process's exit code is covered in test_config_errors.py
and test_crash_safety.py (a process would cost some 5 s of imports per case).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pytest
import torch
import yaml

from vitkd.cli import main

VIT_ARGS = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}
TINY = {
    "seed": 0,
    "model": {"name": "vit_tiny_patch16_224", "args": dict(VIT_ARGS)},
    "data": {"name": "digits", "train_subset": 32, "batch_size": 16},
    "train": {"epochs": 1, "progress": False, "threads": 1},
}


def tiny(**sections) -> dict:
    """TINY with sections replaced key by key (``data={"img_size": 64}`` keeps the other data keys)."""
    raw = yaml.safe_load(yaml.safe_dump(TINY))
    for k, v in sections.items():
        if isinstance(v, dict) and isinstance(raw.get(k), dict):
            raw[k].update(v)
        else:
            raw[k] = v
    return raw


def write_yaml(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj if isinstance(obj, str) else yaml.safe_dump(obj, sort_keys=False))
    return path


def write_png(path: Path, seed: int = 0, size: int = 12) -> None:
    from PIL import Image
    g = torch.Generator().manual_seed(seed)
    arr = (torch.rand(size, size, 3, generator=g) * 255).to(torch.uint8).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def image_folder(root: Path, classes=("a", "b"), per_class: int = 3) -> Path:
    for split in ("train", "val"):
        for c in classes:
            for i in range(per_class):
                write_png(root / split / c / f"{i}.png", seed=hash((split, c, i)) % 1000)
    return root


def snapshot(path: Path) -> Optional[Dict[str, object]]:
    """Every file's bytes and every folder under ``path`` (None: ``path`` does not exist)."""
    if not path.exists():
        return None
    out: Dict[str, object] = {}
    for p in sorted(path.rglob("*")):
        rel = str(p.relative_to(path))
        out[rel] = "<dir>" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# ---------------------------------------------------------------------------------------------- shared fixtures
@dataclass
class Fixtures:
    root: Path
    run: Path            # a finished tiny run (config, checkpoint, weights, stamp)
    vit_weights: Path    # bare weights of a vit_tiny_patch16_224 with VIT_ARGS (10 classes)
    cnn_weights: Path    # bare weights of a resnet_digits_s (10 classes)
    state_pt: Path       # a plain state dict saved with torch.save


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> Fixtures:
    import timm
    from safetensors.torch import save_file

    import vitkd.archs  # noqa: F401  (registers resnet_digits_s)

    root = tmp_path_factory.mktemp("fixtures")
    train_tiny(root / "run")
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=10, **VIT_ARGS)
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, root / "vit.safetensors")
    cnn = timm.create_model("resnet_digits_s", num_classes=10)
    save_file({k: v.contiguous() for k, v in cnn.state_dict().items()}, root / "cnn.safetensors")
    torch.save(vit.state_dict(), root / "state.pt")
    return Fixtures(root, root / "run", root / "vit.safetensors", root / "cnn.safetensors", root / "state.pt")


# ---------------------------------------------------------------------------------------------- the table
@dataclass
class Case:
    id: str
    expect: List[str]                           # every piece must be in the one stderr line
    build: Callable[[Path, Fixtures], List[str]]   # writes the inputs under the case folder, returns argv


CASES: List[Case] = []


def case(id: str, *expect: str):
    def register(fn):
        CASES.append(Case(id, list(expect), fn))
        return fn
    return register


def train_args(t: Path, raw, *extra: str, out: str = "run") -> List[str]:
    return ["train", str(write_yaml(t / "cfg.yaml", raw)), "--out", str(t / out), *extra]


def kd(teacher: dict, *terms: dict) -> dict:
    """A distillation config reading one teacher 't'."""
    return tiny(distill={"teachers": {"t": teacher}, "terms": [{"type": "ce"}, *terms]})


# -- the config file itself
@case("yaml top-level list", "cfg.yaml", "list")
def _(t, fx):
    return train_args(t, "- model\n- data\n")


@case("yaml top-level scalar", "cfg.yaml", "int")
def _(t, fx):
    return train_args(t, "42\n")


@case("empty config", "cfg.yaml", "empty")
def _(t, fx):
    return train_args(t, "")


@case("comment-only config", "cfg.yaml", "empty")
def _(t, fx):
    return train_args(t, "# nothing here yet\n# train: {epochs: 1}\n")


@case("malformed yaml", "cfg.yaml", "line 3", "invalid YAML")
def _(t, fx):
    return train_args(t, "train:\n  epochs: [1, 2\nmodel: {name: x}\n")


@case("config file missing", "nope.yaml", "not found")
def _(t, fx):
    return ["train", str(t / "nope.yaml"), "--out", str(t / "run")]


# -- unknown keys at every level
@case("unknown top-level key", "'trian'", "train")
def _(t, fx):
    return train_args(t, {**tiny(), "trian": {"epochs": 1}})


@case("unknown model key", "model.nmae", "name")
def _(t, fx):
    return train_args(t, tiny(model={"nmae": "vit_tiny_patch16_224"}))


@case("unknown data key", "data.img_szie", "img_size")
def _(t, fx):
    return train_args(t, tiny(data={"img_szie": 16}))


@case("unknown train key", "train.lrr", "lr")
def _(t, fx):
    return train_args(t, tiny(train={"lrr": 0.1}))


@case("unknown distill key", "distill.termz", "terms")
def _(t, fx):
    return train_args(t, tiny(distill={"termz": [{"type": "ce"}]}))


@case("unknown term argument", "distill.terms[1] (kd)", "'TT'", "'T'")
def _(t, fx):
    return train_args(t, kd({"checkpoint": str(fx.run)}, {"type": "kd", "TT": 4.0}))


@case("unknown teacher key", "distill.teachers.t.chekpoint", "checkpoint")
def _(t, fx):
    return train_args(t, kd({"chekpoint": str(fx.run)}, {"type": "kd"}))


@case("unknown --set key", "train.epoch", "epochs")
def _(t, fx):
    return train_args(t, tiny(), "--set", "train.epoch=3")


# -- wrong types
@case("wrong type: integer", "train.epochs", "'ten'")
def _(t, fx):
    return train_args(t, tiny(train={"epochs": "ten"}))


@case("wrong type: bool", "train.amp", "'yes'")
def _(t, fx):
    return train_args(t, tiny(train={"amp": "yes"}))


@case("wrong type: section is a scalar", "data", "mapping")
def _(t, fx):
    return train_args(t, tiny(data=5))


@case("wrong type: model.args a list", "model.args", "mapping")
def _(t, fx):
    return train_args(t, tiny(model={"args": [16, 4]}))


@case("wrong type: --set value", "train.lr", "'fast'")
def _(t, fx):
    return train_args(t, tiny(), "--set", "train.lr=fast")


@case("wrong type: term weight", "weight", "'heavy'")
def _(t, fx):
    return train_args(t, tiny(distill={"terms": [{"type": "ce", "weight": "heavy"}]}))


# -- values out of range
@case("negative clip_grad", "train.clip_grad", "-1")
def _(t, fx):
    return train_args(t, tiny(train={"clip_grad": -1}))


@case("negative term weight", "distill.terms[1] (kd).weight", "-0.5")
def _(t, fx):
    return train_args(t, kd({"checkpoint": str(fx.run)}, {"type": "kd", "weight": -0.5}))


@case("negative mixup_prob", "train.mixup_prob", "-1")
def _(t, fx):
    return train_args(t, tiny(train={"mixup": 0.8, "mixup_prob": -1}))


@case("train.threads=-1", "train.threads", "-1")
def _(t, fx):
    return train_args(t, tiny(), "--set", "train.threads=-1")


@case("data.num_workers=-1", "data.num_workers", "-1")
def _(t, fx):
    return train_args(t, tiny(), "--set", "data.num_workers=-1")


@case("unknown auto_augment policy", "data.auto_augment", "rand-q9")
def _(t, fx):
    return train_args(t, tiny(data={"augment": "timm", "auto_augment": "rand-q9"}))


@case("unknown model name", "model.name", "vit_tinny_patch16_224")
def _(t, fx):
    return train_args(t, tiny(model={"name": "vit_tinny_patch16_224"}))


@case("img_size 64 on a ViT built for 16", "data.img_size", "64")
def _(t, fx):
    return train_args(t, tiny(data={"img_size": 64}))


@case("student block out of range", "student", "block 7")
def _(t, fx):
    return train_args(t, kd({"checkpoint": str(fx.run)},
                            {"type": "fitnet", "student_layers": [7], "teacher_layers": [0]}))


@case("teacher stage out of range", "teacher", "stride 64")
def _(t, fx):
    return train_args(t, kd({"model": "resnet_digits_s", "checkpoint": str(fx.cnn_weights)},
                            {"type": "fitnet", "student_layers": [1], "teacher_layers": [64]}))


# -- data on disk
@case("missing dataset root", "data.root", "no_such_folder")
def _(t, fx):
    return train_args(t, tiny(data={"name": "imagefolder", "root": str(t / "no_such_folder"), "val_size": 2}))


@case("empty ImageFolder train/", "data.root", "train")
def _(t, fx):
    root = image_folder(t / "images")
    shutil.rmtree(root / "train")
    (root / "train").mkdir()
    return train_args(t, tiny(data={"name": "imagefolder", "root": str(root), "val_size": 2, "train_subset": None}))


@case("empty class folder", "data.root", "b")
def _(t, fx):
    root = image_folder(t / "images")
    for p in (root / "train" / "b").iterdir():
        p.unlink()
    return train_args(t, tiny(data={"name": "imagefolder", "root": str(root), "val_size": 2, "train_subset": None}))


@case("broken .png", "1.png")
def _(t, fx):
    root = image_folder(t / "images", per_class=4)
    png = root / "train" / "b" / "1.png"
    png.write_bytes(png.read_bytes()[: len(png.read_bytes()) // 2])   # truncated: the header still reads
    return train_args(t, tiny(data={"name": "imagefolder", "root": str(root), "val_size": 2, "train_subset": None,
                                    "batch_size": 2}))


@case("--out under a file", "--out", "a_file")
def _(t, fx):
    (t / "a_file").write_text("not a folder\n")
    return train_args(t, tiny(), out="a_file/run")


@case("--out on a read-only folder", "--out", "readonly")
def _(t, fx):
    if os.geteuid() == 0:
        pytest.skip("running as root: root ignores mode bits, so no folder can be made read-only here (the cases "
                    "'--out under a file' and '--out where even root cannot write' cover unwritable folders)")
    (t / "readonly").mkdir()
    (t / "readonly").chmod(0o555)
    return train_args(t, tiny(), out="readonly/run")


@case("--out where even root cannot write", "--out", "/proc/vitkd-test-run", "cannot write there")
def _(t, fx):
    if not (sys.platform.startswith("linux") and Path("/proc/self").is_dir()):
        pytest.skip("needs Linux's /proc (no folder can be made there, whoever asks)")
    return train_args(t, tiny(), out="/proc/vitkd-test-run")


# -- teachers and weights files
@case("truncated teacher .safetensors", "distill.teachers.t.checkpoint", "teacher.safetensors")
def _(t, fx):
    data = fx.vit_weights.read_bytes()
    (t / "teacher.safetensors").write_bytes(data[: len(data) // 2])
    return train_args(t, kd({"model": "vit_tiny_patch16_224", "args": VIT_ARGS,
                             "checkpoint": str(t / "teacher.safetensors")}, {"type": "kd"}))


@case("zeroed teacher .safetensors", "distill.teachers.t.checkpoint", "teacher.safetensors")
def _(t, fx):
    (t / "teacher.safetensors").write_bytes(bytes(fx.vit_weights.stat().st_size))
    return train_args(t, kd({"model": "vit_tiny_patch16_224", "args": VIT_ARGS,
                             "checkpoint": str(t / "teacher.safetensors")}, {"type": "kd"}))


@case("garbage teacher .safetensors", "distill.teachers.t.checkpoint", "teacher.safetensors")
def _(t, fx):
    (t / "teacher.safetensors").write_bytes(os.urandom(4096))
    return train_args(t, kd({"model": "vit_tiny_patch16_224", "args": VIT_ARGS,
                             "checkpoint": str(t / "teacher.safetensors")}, {"type": "kd"}))


@case("teacher weights of another model", "distill.teachers.t.checkpoint", "vit.safetensors", "resnet_digits_s",
      "Missing key")
def _(t, fx):
    return train_args(t, kd({"model": "resnet_digits_s", "checkpoint": str(fx.vit_weights)}, {"type": "kd"}))


@case("teacher run folder not finished", "distill.teachers.t.checkpoint", "teacher_run", "no finished run")
def _(t, fx):
    shutil.copytree(fx.run, t / "teacher_run")
    (t / "teacher_run" / "stamp.json").unlink()
    return train_args(t, kd({"checkpoint": str(t / "teacher_run")}, {"type": "kd"}))


@case("teacher read by no term", "distill.teachers.t", "no loss term")
def _(t, fx):
    return train_args(t, kd({"checkpoint": str(fx.run)}))


# -- stored teacher logits (vitkd logits save; distill.teachers.<name>: {logits: PATH})
def _store(t: Path, fx) -> Path:
    """A store of the tiny config's teacher (fx's CNN weights), written under the case folder."""
    from vitkd.config import parse_config
    from vitkd.methods.stored_logits.save import save_logits
    cfg = parse_config(kd({"model": "resnet_digits_s", "checkpoint": str(fx.cnn_weights)}, {"type": "kd"}))
    return save_logits(cfg, t / "store", progress=False, log=lambda m: None)["t"]


@case("stored logits folder missing", "distill.teachers.t.logits", "no_store")
def _(t, fx):
    return train_args(t, kd({"logits": str(t / "no_store")}, {"type": "kd"}))


@case("stored logits folder without store.json", "distill.teachers.t.logits", "not a stored-logits folder")
def _(t, fx):
    (t / "empty_store").mkdir()
    return train_args(t, kd({"logits": str(t / "empty_store")}, {"type": "kd"}))


@case("stored logits of another seed", "distill.teachers.t.logits", "seed")
def _(t, fx):
    return train_args(t, {**kd({"logits": str(_store(t, fx))}, {"type": "kd"}), "seed": 1})


@case("feature term on a stored teacher", "distill term 'fitnet'", "stored-logits", "CNN stages")
def _(t, fx):
    return train_args(t, kd({"logits": str(_store(t, fx))},
                            {"type": "fitnet", "student_layers": [1], "teacher_layers": [8]}))


@case("logits save without a live teacher", "distill.teachers", "no teacher with a checkpoint")
def _(t, fx):
    return ["logits", "save", str(write_yaml(t / "cfg.yaml", kd({"logits": str(_store(t, fx))}, {"type": "kd"}))),
            "--out", str(t / "out")]


@case("logits save --topk 0", "--topk", "0")
def _(t, fx):
    raw = kd({"model": "resnet_digits_s", "checkpoint": str(fx.cnn_weights)}, {"type": "kd"})
    return ["logits", "save", str(write_yaml(t / "cfg.yaml", raw)), "--out", str(t / "out"), "--topk", "0"]


@case("logits save into a store of another config", "--out", "another config", "seed")
def _(t, fx):
    _store(t, fx)
    raw = {**kd({"model": "resnet_digits_s", "checkpoint": str(fx.cnn_weights)}, {"type": "kd"}), "seed": 3}
    return ["logits", "save", str(write_yaml(t / "cfg.yaml", raw)), "--out", str(t / "store")]


# -- run folders: refusals that must not touch them
@case("resume with a differing key", "train.weight_decay", "0.05", "0.2")
def _(t, fx):
    shutil.copytree(fx.run, t / "run")
    return train_args(t, tiny(train={"weight_decay": 0.2}), "--resume")


@case("resume with nothing to resume", "--resume", "run")
def _(t, fx):
    return train_args(t, tiny(), "--resume")


@case("train into a folder holding a run", "--out", "already holds a run")
def _(t, fx):
    shutil.copytree(fx.run, t / "run")
    return train_args(t, tiny(seed=1))


# -- eval
@case("eval a bare model.safetensors without --model", "model.safetensors", "--model")
def _(t, fx):
    (t / "w").mkdir()
    shutil.copy(fx.run / "model.safetensors", t / "w" / "model.safetensors")
    return ["eval", str(t / "w" / "model.safetensors")]


@case("eval a plain state-dict .pt", "state.pt")
def _(t, fx):
    shutil.copy(fx.state_pt, t / "state.pt")
    return ["eval", str(t / "state.pt"), "--model", "vit_tiny_patch16_224"]


@case("eval a plain state-dict .pt without --model", "state.pt")
def _(t, fx):
    shutil.copy(fx.state_pt, t / "state.pt")
    return ["eval", str(t / "state.pt")]


# -- profile
@case("profile --img-size 0", "--img-size", "0")
def _(t, fx):
    return ["profile", "vit_tiny_patch16_224", "--img-size", "0", "--no-throughput"]


@case("profile --img-size -16", "--img-size", "-16")
def _(t, fx):
    return ["profile", "vit_tiny_patch16_224", "--img-size", "-16", "--no-throughput"]


# -- suites (vitkd compare): checked before any run trains
def suite_args(t: Path, rows: list, *extra: str, **suite) -> List[str]:
    write_yaml(t / "student.yaml", tiny())
    body = {"name": "tiny", "student": "student.yaml", "seeds": [0], "jobs": 1, "rows": rows, **suite}
    return ["compare", str(write_yaml(t / "suite.yaml", body)), "--out", str(t / "results"),
            "--cache", str(t / "cache"), *extra]


@case("suite row without name", "suite.rows[0].name", "missing")
def _(t, fx):
    return suite_args(t, [{"family": "none"}])


@case("suite unknown key", "suite.rowz", "rows")
def _(t, fx):
    return suite_args(t, [{"name": "a", "family": "none"}], rowz=[])


@case("suite knob grid of 2 values", "suite.tune.knobs", "3 values")
def _(t, fx):
    return suite_args(t, [{"name": "a", "family": "none"}], tune={"knobs": {"train.lr": {"values": [0.001, 0.002]}}})


@case("suite tuned with 1 seed", "suite.tune.seeds", "2 seeds")
def _(t, fx):
    return suite_args(t, [{"name": "a", "family": "none"}],
                      tune={"knobs": {"train.lr": {"values": [1, 2, 3]}}, "seeds": [0]})


@case("compare without its tuning record", "tuning.json", "vitkd tune")
def _(t, fx):
    return suite_args(t, [{"name": "a", "family": "none"}], tune={"knobs": {"train.lr": {"values": [1, 2, 3]}}})


@case("tune a suite without knobs", "suite.yaml", "tune.knobs")
def _(t, fx):
    argv = suite_args(t, [{"name": "a", "family": "none"}])
    return ["tune", argv[1], "--out", str(t / "tuning"), "--cache", str(t / "cache")]


@case("compare --jobs -1", "--jobs", "-1")
def _(t, fx):
    return suite_args(t, [{"name": "a", "family": "none"}], "--jobs", "-1")


@case("compare --cache under a file", "--cache", "a_file")
def _(t, fx):
    (t / "a_file").write_text("not a folder\n")
    argv = suite_args(t, [{"name": "a", "family": "none"}])
    return argv[:argv.index("--cache") + 1] + [str(t / "a_file" / "cache")]


@case("compare --out under a file", "--out", "a_file")
def _(t, fx):
    (t / "a_file").write_text("not a folder\n")
    argv = suite_args(t, [{"name": "a", "family": "none"}])
    argv[argv.index("--out") + 1] = str(t / "a_file" / "results")
    return argv


@case("suite row with a bad term argument", "rows/b", "'TT'")
def _(t, fx):
    return suite_args(t, [{"name": "a", "family": "none"},
                          {"name": "b", "family": "logit", "teachers": {"t": "big"},
                           "set": {"distill.terms": [{"type": "ce"}, {"type": "kd", "TT": 4}]}}],
                      teachers={"big": {"config": "student.yaml"}})


@case("suite row with an unknown model", "rows/b", "vit_nope")
def _(t, fx):
    return suite_args(t, [{"name": "a", "family": "none"}, {"name": "b", "family": "none",
                                                           "set": {"model.name": "vit_nope"}}])


# -- chains: every stage checked before the first trains
def chain_args(t: Path, stages: list, *extra: str) -> List[str]:
    write_yaml(t / "student.yaml", tiny())
    return ["train", str(write_yaml(t / "chain.yaml", {"chain": stages})), "--out", str(t / "chain"), *extra]


@case("chain stage with a bad term argument", "stage 'student'", "'TT'")
def _(t, fx):
    return chain_args(t, [{"name": "teacher", "config": "student.yaml"},
                          {"name": "student", "config": "student.yaml",
                           "set": {"distill.teachers.t.checkpoint": "@teacher",
                                   "distill.terms": [{"type": "ce"}, {"type": "kd", "TT": 4}]}}])


@case("chain stage with an out-of-range block", "stage 'student'", "block 9")
def _(t, fx):
    return chain_args(t, [{"name": "teacher", "config": "student.yaml"},
                          {"name": "student", "config": "student.yaml",
                           "set": {"distill.teachers.t.checkpoint": "@teacher",
                                   "distill.terms": [{"type": "ce"}, {"type": "fitnet", "student_layers": [1],
                                                                      "teacher_layers": [9]}]}}])


@case("chain stage refers to a later stage", "@student", "not an earlier stage")
def _(t, fx):
    return chain_args(t, [{"name": "teacher", "config": "student.yaml",
                           "set": {"distill.teachers.t.checkpoint": "@student",
                                   "distill.terms": [{"type": "ce"}, {"type": "kd"}]}},
                          {"name": "student", "config": "student.yaml"}])


@case("chain stage without config", "chain[1].config", "missing")
def _(t, fx):
    return chain_args(t, [{"name": "teacher", "config": "student.yaml"}, {"name": "student"}])


@case("chain stage folder holds a run of another config", "stage 'teacher'", "chain/teacher", "--overwrite")
def _(t, fx):
    shutil.copytree(fx.run, t / "chain" / "teacher")
    return chain_args(t, [{"name": "teacher", "config": "student.yaml", "set": {"seed": 5}}])


# ---------------------------------------------------------------------------------------------- the model zoo
@case("zoo publish of a folder holding no finished run", "zoo publish RUN_DIR", "no finished run")
def _(t, fx):
    (t / "empty").mkdir()
    return ["zoo", "publish", str(t / "empty"), "--name", "x", "--index", str(t / "models" / "zoo.yaml")]


@case("zoo publish under a name with a path", "invalid model name", "'../x'")
def _(t, fx):
    return ["zoo", "publish", str(fx.run), "--name", "../x", "--index", str(t / "models" / "zoo.yaml")]


@case("zoo index whose models are not a list", "zoo.yaml", "'models' must be a list")
def _(t, fx):
    return ["zoo", "list", "--manifest", str(write_yaml(t / "zoo.yaml", {"models": 3}))]


@case("zoo info of a name the index lacks", "no model named 'nope'")
def _(t, fx):
    return ["zoo", "info", "nope", "--manifest", str(write_yaml(t / "zoo.yaml", {"models": []}))]


@case("config naming a zoo teacher the index lacks", "distill.teachers.t.zoo", "no model named 'nope'")
def _(t, fx):
    os.environ["VITKD_ZOO_MANIFEST"] = str(write_yaml(t / "zoo.yaml", {"models": []}))
    return train_args(t, tiny(distill={"teachers": {"t": {"zoo": "nope"}}, "terms": [{"type": "kd"}]}))


def run_cli(argv: List[str], capsys):
    """``vitkd ARGV`` in this process: (exit code, stderr); the thread count a run sets is restored."""
    threads = torch.get_num_threads()
    try:
        code = main(argv)
    finally:
        torch.set_num_threads(threads)   # a run sets its own thread count
    return code, capsys.readouterr().err


def train_tiny(out: Path) -> Path:
    """A finished run of :func:`tiny` in ``out`` (trained in this process, its thread count restored)."""
    from vitkd.config import parse_config
    from vitkd.engine import train
    threads = torch.get_num_threads()
    try:
        train(parse_config(tiny()), out, log=lambda m: None)
    finally:
        torch.set_num_threads(threads)
    return out


# -- synthesize (DeepInversion) and data-free training
def synth_args(t: Path, raw, *extra: str) -> List[str]:
    return ["synthesize", str(write_yaml(t / "syn.yaml", raw)), "--out", str(t / "set"), *extra]


def synth_cfg(fx, **synth) -> dict:
    return {"teacher": {"model": "resnet_digits_s", "checkpoint": str(fx.cnn_weights)}, "data": {"name": "digits"},
            "synth": {"images": 2, "batch_size": 2, "iterations": 1, "grayscale": True, **synth}, "threads": 1}


@case("synthesize unknown synth key", "synth.iteratons", "iterations")
def _(t, fx):
    return synth_args(t, synth_cfg(fx, iteratons=5))


@case("synthesize without a teacher checkpoint", "teacher.checkpoint", "nope.safetensors")
def _(t, fx):
    return synth_args(t, {**synth_cfg(fx), "teacher": {"model": "resnet_digits_s", "checkpoint": str(t / "nope.safetensors")}})


@case("synthesize zero images", "synth.images", "0")
def _(t, fx):
    return synth_args(t, synth_cfg(fx, images=0))


@case("synthesize competition without a student", "student", "synth.competition")
def _(t, fx):
    return synth_args(t, synth_cfg(fx, competition=10.0))


@case("synthesize from a teacher without BatchNorm", "vit_tiny_patch16_224", "BatchNorm")
def _(t, fx):
    return synth_args(t, {**synth_cfg(fx), "teacher": {"model": "vit_tiny_patch16_224", "args": VIT_ARGS,
                                                        "checkpoint": str(fx.vit_weights)}})


@case("synthesize into a folder holding another set", "--out", "another synthetic set", "--overwrite")
def _(t, fx):
    (t / "set").mkdir()
    (t / "set" / "plan.json").write_text('{"format": "vitkd-synthetic/1", "fingerprint": "0000"}\n')
    return synth_args(t, synth_cfg(fx))


@case("train on a synthetic folder without manifest", "data.synthetic", "manifest.json")
def _(t, fx):
    (t / "half").mkdir()
    (t / "half" / "plan.json").write_text("{}\n")
    return train_args(t, tiny(data={"synthetic": str(t / "half")}))


def test_the_table_is_large_enough():
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)


# -- module-level distillation (m2mKD): stage configs and pipeline files
def m2m_stage(m2m: dict, fx) -> dict:
    return tiny(distill={"teachers": {"meta": {"checkpoint": str(fx.run)}}, "terms": [{"type": "ce"}]}, m2m=m2m)


@case("m2m depths not summing to the depth", "m2m.depths", "[1, 2]", "depth 2")
def _(t, fx):
    return train_args(t, m2m_stage({"depths": [1, 2], "module": 0, "meta": "meta"}, fx))


@case("m2m module job without its module", "m2m", "module and meta")
def _(t, fx):
    return train_args(t, m2m_stage({"depths": [1, 1], "meta": "meta"}, fx))


@case("m2m module out of range", "m2m.module", "5", "0..1")
def _(t, fx):
    return train_args(t, m2m_stage({"depths": [1, 1], "module": 5, "meta": "meta"}, fx))


@case("m2m meta not a teacher", "m2m", "'metta'", "meta")
def _(t, fx):
    return train_args(t, m2m_stage({"depths": [1, 1], "module": 0, "meta": "metta"}, fx))


@case("m2mkd pipeline module counts differ", "m2mkd.student_depths", "3 modules", "2")
def _(t, fx):
    write_yaml(t / "s.yaml", tiny())
    return train_args(t, {"m2mkd": {"teacher": {"config": "s.yaml"}, "meta": {"config": "s.yaml"},
                                    "student": {"config": "s.yaml"}, "teacher_depths": [1, 1],
                                    "student_depths": [1, 1, 1]}})


# -- issue 26: every name that becomes a path is checked by one function (vitkd.config.check_name)
@case("suite name with ../", "suite.name", "'../escape'")
def _(t, fx):
    return suite_args(t, [{"name": "a", "family": "none"}], name="../escape")


# absolute names point into the case folder: were one ever followed, the snapshot would show it
@case("suite name absolute", "suite.name", "invalid suite name", "abs_suite'")
def _(t, fx):
    return suite_args(t, [{"name": "a", "family": "none"}], name=str(t / "abs_suite"))


@case("suite row name with ../", "suite.rows[1].name", "'../../up'")
def _(t, fx):
    return suite_args(t, [{"name": "a", "family": "none"}, {"name": "../../up", "family": "none"}])


@case("suite row name absolute", "suite.rows[0].name", "invalid row name", "abs_row'")
def _(t, fx):
    return suite_args(t, [{"name": str(t / "abs_row"), "family": "none"}])


@case("suite row name hidden", "suite.rows[0].name", "'.a'")
def _(t, fx):
    return suite_args(t, [{"name": ".a", "family": "none"}])


@case("suite teacher name with ../", "suite.teachers", "'../big'", "teacher name")
def _(t, fx):
    return suite_args(t, [{"name": "a", "family": "none"},
                          {"name": "b", "family": "logit", "teachers": {"t": "../big"},
                           "set": {"distill.terms": [{"type": "ce"}, {"type": "kd"}]}}],
                      teachers={"../big": {"config": "student.yaml"}})


@case("suite synthetic set name absolute", "suite.synthetic", "invalid synthetic set name", "abs_set'")
def _(t, fx):
    return suite_args(t, [{"name": "a", "family": "none"}],
                      synthetic={str(t / "abs_set"): {"config": "syn.yaml", "teacher": "big"}},
                      teachers={"big": {"config": "student.yaml"}})


@case("config teacher key with ../", "distill.teachers.../t", "invalid teacher key", "'../t'")
def _(t, fx):
    return train_args(t, tiny(distill={"teachers": {"../t": {"checkpoint": str(fx.run)}},
                                       "terms": [{"type": "ce"}, {"type": "kd", "teacher": "../t"}]}))


@case("logits save: teacher key absolute", "distill.teachers", "invalid teacher key", "abs_store'")
def _(t, fx):
    raw = tiny(distill={"teachers": {str(t / "abs_store"): {"model": "resnet_digits_s",
                                                           "checkpoint": str(fx.cnn_weights)}},
                        "terms": [{"type": "ce"}, {"type": "kd"}]})
    return ["logits", "save", str(write_yaml(t / "cfg.yaml", raw)), "--out", str(t / "out")]


@case("run name with ../ (the default --out)", "name", "'../../escape'")
def _(t, fx):
    return ["train", str(write_yaml(t / "cfg.yaml", {**tiny(), "name": "../../escape"}))]


@case("chain stage name with ../", "chain[1].name", "'../student'")
def _(t, fx):
    return chain_args(t, [{"name": "teacher", "config": "student.yaml"},
                          {"name": "../student", "config": "student.yaml"}])


@case("synthesize name absolute (the default --out)", "name", "invalid name", "abs_synth'")
def _(t, fx):
    return ["synthesize", str(write_yaml(t / "syn.yaml", {**synth_cfg(fx), "name": str(t / "abs_synth")}))]


def zoo_entry(**change) -> dict:
    """An index entry that validates (its file is never fetched by the cases)."""
    return {"name": "m", "architecture": "resnet_digits_s", "num_classes": 10, "config": "train.yaml",
            "files": [{"name": "train.yaml", "url": "m/train.yaml", "sha256": "0" * 64, "size": 1}], **change}


@case("zoo entry config outside its folder", "zoo.yaml.models.0.config", "'../../../../etc/passwd'")
def _(t, fx):
    return ["zoo", "list", "--manifest", str(write_yaml(t / "zoo.yaml", {"models": [zoo_entry(
        config="../../../../etc/passwd")]}))]


@case("zoo entry config absolute", "zoo.yaml.models.0.config", "'/etc/passwd'")
def _(t, fx):
    return ["zoo", "info", "m", "--manifest", str(write_yaml(t / "zoo.yaml", {"models": [zoo_entry(
        config="/etc/passwd")]}))]


@case("zoo entry teacher name with ../", "zoo.yaml.models.0.teachers.t", "'../x'")
def _(t, fx):
    return ["zoo", "list", "--manifest", str(write_yaml(t / "zoo.yaml", {"models": [zoo_entry(
        teachers={"t": "../x"})]}))]


# -- issue 26: a run never writes over what it reads
@case("--out is the run's own teacher folder", "--out", "distill.teachers.t.checkpoint", "never writes over")
def _(t, fx):
    shutil.copytree(fx.run, t / "run")
    return train_args(t, kd({"checkpoint": str(t / "run")}, {"type": "kd"}), "--overwrite")


@case("--out holds the run's initial weights", "--out", "model.checkpoint")
def _(t, fx):
    shutil.copytree(fx.run, t / "run")
    return train_args(t, tiny(model={"checkpoint": str(t / "run" / "model.safetensors")}), "--overwrite")


# -- issue 26: no silent wrong behaviour
@case("duplicate key in a config", "cfg.yaml", "line 5", "duplicate key 'seed'")
def _(t, fx):
    return train_args(t, "seed: 0\nmodel: {name: vit_tiny_patch16_224, args: {img_size: 16, patch_size: 4, "
                         "embed_dim: 32, depth: 2, num_heads: 2}}\ndata: {name: digits, train_subset: 32}\n"
                         "train: {epochs: 1, progress: false}\nseed: 1\n")


@case("duplicate nested key in a config", "cfg.yaml", "duplicate key 'lr'")
def _(t, fx):
    return train_args(t, "model: {name: vit_tiny_patch16_224}\ntrain:\n  lr: 0.001\n  epochs: 1\n  lr: 0.1\n")


@case("duplicate key in a suite", "suite.yaml", "duplicate key 'seeds'")
def _(t, fx):
    argv = suite_args(t, [{"name": "a", "family": "none"}])
    (t / "suite.yaml").write_text((t / "suite.yaml").read_text() + "seeds: [5]\n")
    return argv


@case("duplicate key in a base file", "base.yaml", "duplicate key 'train'")
def _(t, fx):
    write_yaml(t / "base.yaml", "train: {epochs: 1}\ntrain: {epochs: 2}\n")
    return train_args(t, {"base": "base.yaml", **tiny()})


@case("binary config file", "cfg.yaml", "not a UTF-8 text file")
def _(t, fx):
    (t / "cfg.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x01" + os.urandom(64))
    return ["train", str(t / "cfg.yaml"), "--out", str(t / "run")]


@case("binary suite file", "suite.yaml", "not a UTF-8 text file")
def _(t, fx):
    argv = suite_args(t, [{"name": "a", "family": "none"}])
    (t / "suite.yaml").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(64))
    return argv


@case("binary zoo manifest", "zoo.yaml", "not a UTF-8 text file")
def _(t, fx):
    (t / "zoo.yaml").write_bytes(b"models:\n  - \xc3\x28\xa0\xa1\n")
    return ["zoo", "list", "--manifest", str(t / "zoo.yaml")]


@case("every term has weight 0", "distill.terms", "weight 0", "ce")
def _(t, fx):
    return train_args(t, tiny(distill={"terms": [{"type": "ce", "weight": 0}]}))


@case("every term has weight 0 (two terms, a zero ramp)", "distill.terms", "weight 0", "kd")
def _(t, fx):
    ramp = {"kind": "linear", "start": 0, "end": 0}
    return train_args(t, tiny(distill={"teachers": {"t": {"checkpoint": str(fx.run)}},
                                       "terms": [{"type": "ce", "weight": 0.0}, {"type": "kd", "schedule": ramp}]}))


@case("train.lr .inf (YAML's spelling)", "train.lr", "finite", "inf")
def _(t, fx):
    return train_args(t, tiny(train={"lr": float("inf")}))


@case("train.lr .nan (YAML's spelling)", "train.lr", "finite", "nan")
def _(t, fx):
    return train_args(t, "model: {name: vit_tiny_patch16_224}\ntrain: {lr: .nan}\n")


@case("train.min_lr -.inf (YAML's spelling)", "train.min_lr", "finite", "-inf")
def _(t, fx):
    return train_args(t, "model: {name: vit_tiny_patch16_224}\ntrain: {min_lr: -.inf}\n")


@case("--set train.weight_decay=.inf", "train.weight_decay", "finite", "inf")
def _(t, fx):
    return train_args(t, tiny(), "--set", "train.weight_decay=.inf")


@case("suite alpha .nan", "suite.alpha", "finite", "nan")
def _(t, fx):
    return suite_args(t, [{"name": "a", "family": "none"}], alpha=float("nan"))


@case("huge seed", "seed", "18446744073709551616")
def _(t, fx):
    return train_args(t, tiny(seed=2 ** 64))


@case("negative seed", "seed", "-1")
def _(t, fx):
    return train_args(t, tiny(seed=-1))


@case("synthesize huge seed", "seed", "99999999999999999999")
def _(t, fx):
    return synth_args(t, {**synth_cfg(fx), "seed": 99999999999999999999})


@case("suite seeds []", "suite.seeds", "no seeds")
def _(t, fx):
    return suite_args(t, [{"name": "a", "family": "none"}], seeds=[])


@case("suite seeds [0, 0]", "suite.seeds", "seed 0", "twice")
def _(t, fx):
    return suite_args(t, [{"name": "a", "family": "none"}], seeds=[0, 0])


@case("suite negative seed", "suite.seeds[1]", "-3")
def _(t, fx):
    return suite_args(t, [{"name": "a", "family": "none"}], seeds=[0, -3])


@case("suite huge seed", "suite.seeds[0]", "4294967296")
def _(t, fx):
    return suite_args(t, [{"name": "a", "family": "none"}], seeds=[2 ** 32])


@case("suite quick seeds [1, 1]", "suite.quick.seeds", "twice")
def _(t, fx):
    return suite_args(t, [{"name": "a", "family": "none"}], quick={"seeds": [1, 1]})


@case("suite rows []", "suite.rows", "no rows")
def _(t, fx):
    return suite_args(t, [])


# -- issue 26: a run folder's own files (config.yaml, run.yaml) are read as strictly as any config file
def _run_with(t: Path, fx, name: str, content, folder: str = "run") -> Path:
    """A copy of the finished tiny run in ``t/folder`` with its file ``name`` replaced by ``content``."""
    shutil.copytree(fx.run, t / folder)
    (t / folder / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return t / folder


@case("eval a run whose config.yaml is binary", "config.yaml", "not a UTF-8 text file")
def _(t, fx):
    return ["eval", str(_run_with(t, fx, "config.yaml", b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x01" + bytes(range(256))))]


@case("eval a run whose config.yaml is not YAML", "config.yaml", "line 2", "invalid YAML")
def _(t, fx):
    return ["eval", str(_run_with(t, fx, "config.yaml", "seed: 0\nmodel: a: b\n"))]


@case("eval a run whose config.yaml is a list", "config.yaml", "expected a mapping", "list")
def _(t, fx):
    return ["eval", str(_run_with(t, fx, "config.yaml", "- model\n- data\n"))]


@case("eval a run whose config.yaml holds a key twice", "config.yaml", "duplicate key 'seed'")
def _(t, fx):
    return ["eval", str(_run_with(t, fx, "config.yaml", (fx.run / "config.yaml").read_text() + "seed: 1\n"))]


@case("resume a run whose config.yaml is Latin-1", "config.yaml", "not a UTF-8 text file", "0xe9")
def _(t, fx):
    (t / "run").mkdir()   # killed before its first checkpoint: the config alone, compared by --resume
    (t / "run" / "config.yaml").write_bytes("name: caf\u00e9\n".encode("latin-1"))
    return train_args(t, tiny(), "--resume")


@case("teacher run whose run.yaml is binary", "run.yaml", "not a UTF-8 text file")
def _(t, fx):
    teacher = _run_with(t, fx, "run.yaml", b"\xff\xfe\x00" + bytes(range(128, 256)), folder="teacher_run")
    return train_args(t, kd({"checkpoint": str(teacher)}, {"type": "kd"}))


# -- issue 26: the default --out is a checked name, the config's name or its file's
@case("config file ..yaml (the default --out)", "..yaml", "default --out", "invalid name '.'")
def _(t, fx):
    return ["train", str(write_yaml(t / "..yaml", tiny()))]


@case("hidden config file (the default --out)", ".hidden.yaml", "default --out", "'.hidden'")
def _(t, fx):
    return ["train", str(write_yaml(t / ".hidden.yaml", tiny()))]


@case("run name hidden (the default --out)", "name", "'.hidden'")
def _(t, fx):
    return ["train", str(write_yaml(t / "cfg.yaml", {**tiny(), "name": ".hidden"}))]


@case("chain file ..yaml (the default --out)", "..yaml", "default --out", "invalid name '.'")
def _(t, fx):
    write_yaml(t / "student.yaml", tiny())
    return ["train", str(write_yaml(t / "..yaml", {"chain": [{"name": "teacher", "config": "student.yaml"}]}))]


@case("logits save: config file name with a space (the default --out)", "a b.yaml", "default --out", "'a b'")
def _(t, fx):
    raw = kd({"model": "resnet_digits_s", "checkpoint": str(fx.cnn_weights)}, {"type": "kd"})
    return ["logits", "save", str(write_yaml(t / "a b.yaml", raw))]


@case("synthesize: hidden config file (the default --out)", ".syn.yaml", "default --out", "'.syn'")
def _(t, fx):
    return ["synthesize", str(write_yaml(t / ".syn.yaml", synth_cfg(fx)))]


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_bad_input(c: Case, fx, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)   # default output folders (runs/, results/) would land here
    monkeypatch.setenv("VITKD_ZOO_MANIFEST", os.environ.get("VITKD_ZOO_MANIFEST", ""))   # restored after a case sets it
    monkeypatch.delenv("VITKD_ZOO_MANIFEST")
    argv = c.build(tmp_path, fx)
    before, shared = snapshot(tmp_path), snapshot(fx.root)
    code, err = run_cli(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    for piece in c.expect:
        assert piece in lines[0], f"{piece!r} not in {lines[0]!r}"
    assert lines[0].startswith("vitkd: error: ")
    assert snapshot(tmp_path) == before
    assert snapshot(fx.root) == shared


# ---------------------------------------------------------------------------------------------- beside the table
def test_python_train_refuses_a_folder_holding_another_run(fx, tmp_path):
    from vitkd.config import ConfigError, parse_config
    from vitkd.engine import train
    shutil.copytree(fx.run, tmp_path / "run")
    before = snapshot(tmp_path)
    with pytest.raises(ConfigError, match="already holds a run"):
        train(parse_config(tiny(seed=1)), tmp_path / "run", log=lambda m: None)
    assert snapshot(tmp_path) == before


def test_numbers_written_1e_3_are_numbers(tmp_path):
    from vitkd.config import load_config
    cfg = write_yaml(tmp_path / "cfg.yaml", "model: {name: vit_tiny_patch16_224}\ntrain: {lr: 1e-3, min_lr: 5E-6}\n")
    c = load_config(cfg)
    assert (c.train.lr, c.train.min_lr) == (0.001, 5e-6)
    assert load_config(cfg, ["train.lr=1e-3", "train.weight_decay=2e-2"]).train.weight_decay == 0.02


def test_a_non_finite_loss_stops_in_one_line_with_exit_3(tmp_path, capsys, monkeypatch):
    """The loss turns NaN at the third training step: one line naming the term and the step as the logs count
    them (1-based), exit code 3, and the checkpoint of the last good step kept."""
    from vitkd.distiller import Distiller
    forward, calls = Distiller.forward, []

    def poisoned(self, batch):
        total, parts = forward(self, batch)
        if self.training:
            calls.append(1)
            if len(calls) == 3:
                parts = {**parts, "ce": parts["ce"] * float("nan")}
                total = total * float("nan")
        return total, parts
    monkeypatch.setattr(Distiller, "forward", poisoned)
    argv = train_args(tmp_path, tiny(data={"batch_size": 8}, train={"checkpoint_every": 1}))
    code, err = run_cli(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 3 and len(lines) == 1, err
    assert "term 'ce'" in lines[0] and "epoch 1 step 3" in lines[0] and "checkpoint is kept" in lines[0]
    from vitkd.engine import load_checkpoint
    ck = load_checkpoint(tmp_path / "run")
    assert (ck["epoch"], ck["epoch_done"], ck["step_in_epoch"]) == (0, False, 2)
    assert not (tmp_path / "run" / "stamp.json").exists()


# ---------------------------------------------------------------------------------------- issue 26 beside the table
def test_tap_indices_must_be_integers():
    """A tap request of block 1.5 is refused, never read as block 1 (integers of any kind are taken)."""
    from vitkd.config import ConfigError
    from vitkd.taps import TapRequest
    for field in ("tokens", "attn", "qkv", "stages"):
        for bad in ({1.5}, [0, 2.0], 1.5, {"1"}, {True}):
            with pytest.raises(ConfigError, match=f"tap request {field}: .* is not an integer"):
                TapRequest(**{field: bad})
    assert TapRequest(tokens=[0, -1, torch.tensor(3)], stages=8).tokens == frozenset({0, -1, 3})


def test_the_one_name_check():
    """The names that become paths are all checked by vitkd.config.check_name, and a resolved path that a link
    would take outside its root is refused."""
    from vitkd.config import ConfigError, check_name
    for good in ("a", "digits-more", "kd_T4", "s0", "v1.2", "A" * 100):
        assert check_name(good, "k") == good
    for bad in ("", ".", "..", "../x", "a/b", "a\\b", "/abs", ".hidden", "a..b", "a b", "x\n", "A" * 101, 3, None):
        with pytest.raises(ConfigError, match="^k: invalid name"):
            check_name(bad, "k")


def test_a_link_out_of_its_root_is_refused(tmp_path):
    from vitkd.config import ConfigError, path_under
    (tmp_path / "root").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "root" / "row").symlink_to(tmp_path / "elsewhere")
    assert path_under(tmp_path / "root", "fine", "s0", key="k") == tmp_path / "root" / "fine" / "s0"
    with pytest.raises(ConfigError, match="k: .* leads outside"):
        path_under(tmp_path / "root", "row", "s0", key="k")


def _held_cases(t: Path, fx) -> Dict[str, List[str]]:
    """Every command that writes a folder, each writing ``t/out`` (zoo publish: the index there)."""
    write_yaml(t / "student.yaml", tiny())
    write_yaml(t / "suite.yaml", {"name": "tiny", "student": "student.yaml", "seeds": [0], "jobs": 1,
                                  "rows": [{"name": "a", "family": "none"}]})
    write_yaml(t / "tune.yaml", {"name": "tiny", "student": "student.yaml", "seeds": [0], "jobs": 1,
                                 "rows": [{"name": "a", "family": "none"}],
                                 "tune": {"knobs": {"train.lr": {"values": [0.001, 0.002, 0.004]}}, "seeds": [0, 1]}})
    write_yaml(t / "chain.yaml", {"chain": [{"name": "teacher", "config": "student.yaml"}]})
    write_yaml(t / "kd.yaml", kd({"model": "resnet_digits_s", "checkpoint": str(fx.cnn_weights)}, {"type": "kd"}))
    write_yaml(t / "syn.yaml", synth_cfg(fx))
    out = str(t / "out")
    return {"train": ["train", str(t / "student.yaml"), "--out", out],
            "train --overwrite": ["train", str(t / "student.yaml"), "--out", out, "--overwrite"],
            "train --nproc 2": ["train", str(t / "student.yaml"), "--out", out, "--nproc", "2"],
            "chain": ["train", str(t / "chain.yaml"), "--out", out],
            "compare": ["compare", str(t / "suite.yaml"), "--out", out, "--cache", str(t / "cache")],
            "logits save": ["logits", "save", str(t / "kd.yaml"), "--out", out],
            "synthesize": ["synthesize", str(t / "syn.yaml"), "--out", out],
            "tune": ["tune", str(t / "tune.yaml"), "--out", out, "--cache", str(t / "cache")],
            "zoo publish": ["zoo", "publish", str(fx.run), "--name", "x", "--index", str(t / "out" / "zoo.yaml")]}


@pytest.mark.parametrize("command", ["train", "train --overwrite", "train --nproc 2", "chain", "compare",
                                     "logits save", "synthesize", "tune", "zoo publish"])
def test_a_folder_another_process_writes_is_refused(command, fx, tmp_path, capsys, monkeypatch):
    """While a writer holds --out (zoo publish: the --index folder), a second command writing there gets one line
    naming the folder and the holder, exit code 2, and touches nothing (the holder's folder, its lock included,
    stays byte-identical)."""
    import subprocess
    from vitkd.rundir import exclusive, lock_path
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(subprocess, "call", lambda cmd: pytest.fail(f"launched {cmd}"))
    argv = _held_cases(tmp_path, fx)[command]
    with exclusive(tmp_path / "out"):
        shutil.copytree(fx.run, tmp_path / "out", dirs_exist_ok=True)   # what the holder wrote so far
        before = snapshot(tmp_path)
        code, err = run_cli(argv, capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1, err
        option = "--index" if command == "zoo publish" else "--out"
        assert lines[0].startswith(f"vitkd: error: {option} {tmp_path / 'out'}: another process is writing there "
                                   f"(pid {os.getpid()})"), lines[0]
        assert snapshot(tmp_path) == before
    assert not lock_path(tmp_path / "out").exists()   # the holder's release removes its lock file


def test_a_lock_left_by_a_dead_process_blocks_nobody(tmp_path, capsys):
    """A killed writer leaves its lock file; the kernel dropped its lock, so the next writer goes ahead (and
    removes the file when it is done). Nothing of the lock is ever inside the run folder."""
    from vitkd.rundir import RunDir, lock_path
    lock_path(tmp_path / "run").write_text("999999\n")
    code, err = run_cli(train_args(tmp_path, tiny()), capsys)
    assert code == 0, err
    assert RunDir(tmp_path / "run").is_finished() and not lock_path(tmp_path / "run").exists()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == sorted(
        n for n in RunDir(tmp_path / "run").run_files() if n != RunDir.EMA_WEIGHTS)


def test_two_train_processes_on_one_out_one_wins(tmp_path):
    """Two real ``vitkd train`` processes with different configs, started together on the same --out: exactly
    one finishes (exit 0), the other gets one line and exit code 2; the folder holds the winner's complete run
    and no lock."""
    import subprocess
    from vitkd.config import load_config, to_dict
    from vitkd.rundir import RunDir, lock_path
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    cfgs, procs = [], []
    for seed in (0, 1):   # long enough (~10 s of training) that the two overlap whatever their start-up times
        raw = tiny(seed=seed, data={"train_subset": 512, "batch_size": 32}, train={"epochs": 25})
        cfgs.append(write_yaml(tmp_path / f"cfg{seed}.yaml", raw))
    for cfg in cfgs:
        procs.append(subprocess.Popen([sys.executable, "-m", "vitkd", "train", str(cfg), "--out",
                                       str(tmp_path / "run")], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    codes = sorted(r[0] for r in results)
    assert codes == [0, 2], results
    winner = next(i for i, r in enumerate(results) if r[0] == 0)
    loser = results[1 - winner]
    lines = loser[2].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"vitkd: error: --out {tmp_path / 'run'}: another process is "
                                                   f"writing there (pid {procs[winner].pid})"), loser[2]
    run = RunDir(tmp_path / "run")
    assert run.matches(to_dict(load_config(cfgs[winner]))) and not run.matches(to_dict(load_config(cfgs[1 - winner])))
    assert len(run.metrics()["epochs"]) == 25
    assert not lock_path(tmp_path / "run").exists()
    assert not list((tmp_path / "run").glob(".*"))


def _with_file_size_limit(argv: List[str], limit: int):
    """``vitkd ARGV`` in a child whose file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored) is ``limit`` bytes: a write
    past it fails with EFBIG, a real kernel refusal on the errno path of a full disk (ENOSPC) and a quota (EDQUOT);
    no small filesystem can be mounted here. Returns (exit code, the lines of stderr)."""
    import subprocess
    # imported before the limit: vitkd, and torch's RPC module, which writes a generated file into the temp folder
    # when it is first imported (torch 2.6 reaches it lazily from inside a command)
    code = ("import resource, signal, sys\n"
            "from vitkd.cli import main\n"
            "import torch.distributed\n"
            "if torch.distributed.is_available():\n"
            "    import torch.distributed.nn\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
            f"sys.exit(main({argv!r}))\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    return proc.returncode, proc.stderr.strip().splitlines()


def _temp_files(folder: Path) -> List[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith((".tmp", ".part"))]


def test_a_full_disk_ends_training_in_one_line_and_leaves_no_partial_file(tmp_path):
    """The disk refuses the checkpoint's bytes (:func:`_with_file_size_limit`)."""
    cfg = write_yaml(tmp_path / "c.yaml", tiny())
    out = tmp_path / "run"
    code, lines = _with_file_size_limit(["train", str(cfg), "--out", str(out)], 32 * 1024)   # config, metadata fit
    assert code == 2 and len(lines) == 1, "\n".join(lines)[-2000:]
    assert "File too large" in lines[0] and "--resume" in lines[0]
    assert not _temp_files(out)


def test_a_full_disk_ends_logits_save_in_one_line_and_the_store_continues(fx, tmp_path, capsys):
    """The disk takes the store's store.json but not its first shard: one line naming the shard, exit code 2, no
    shard under its final name, no temp file, no lock; the same command run again finishes the store."""
    from vitkd.methods.stored_logits.format import read_store_json
    from vitkd.rundir import lock_path
    raw = kd({"model": "resnet_digits_s", "checkpoint": str(fx.cnn_weights)}, {"type": "kd"})
    raw["data"]["train_subset"] = 256   # a shard of some 10 KB, a store.json of some 1.4 KB
    argv = ["logits", "save", str(write_yaml(tmp_path / "kd.yaml", raw)), "--out", str(tmp_path / "store")]
    code, lines = _with_file_size_limit(argv, 4096)
    assert code == 2 and len(lines) == 1, "\n".join(lines)[-2000:]
    assert "File too large" in lines[0] and "e0000-c00000.shard" in lines[0], lines[0]
    store = tmp_path / "store" / "t"
    assert read_store_json(store)["train_images"] == 256 and not list(store.glob("*.shard"))
    assert not _temp_files(tmp_path) and not lock_path(tmp_path / "store").exists()
    code, err = run_cli(argv, capsys)
    assert code == 0, err
    assert [p.name for p in store.glob("*.shard")] == ["e0000-c00000.shard"]


def test_a_full_disk_ends_synthesis_in_one_line_and_the_set_continues(fx, tmp_path, capsys):
    """The disk takes every image and batch record but not the manifest (the largest file, written last): one
    line naming it, exit code 2, no manifest, no temp file, no lock; the batches written are kept, and the same
    command run again completes the set with the files of an uninterrupted one."""
    from vitkd.rundir import lock_path
    cfg = write_yaml(tmp_path / "syn.yaml", synth_cfg(fx, images=4))
    ref = ["synthesize", str(cfg), "--out", str(tmp_path / "ref")]
    assert run_cli(ref, capsys)[0] == 0
    sizes = {str(p.relative_to(tmp_path / "ref")): p.stat().st_size for p in (tmp_path / "ref").rglob("*")
             if p.is_file()}
    others = max(n for name, n in sizes.items() if name != "manifest.json")
    assert sizes["manifest.json"] - others > 200, sizes   # room for the timings the files record to differ
    limit = (others + sizes["manifest.json"]) // 2   # the other files fit
    argv = ref[:-1] + [str(tmp_path / "set")]
    code, lines = _with_file_size_limit(argv, limit)
    assert code == 2 and len(lines) == 1, "\n".join(lines)[-2000:]
    assert "File too large" in lines[0] and "manifest.json" in lines[0], lines[0]
    left = {str(p.relative_to(tmp_path / "set")) for p in (tmp_path / "set").rglob("*") if p.is_file()}
    assert left == set(sizes) - {"manifest.json"}
    assert not _temp_files(tmp_path) and not lock_path(tmp_path / "set").exists()
    code, err = run_cli(argv, capsys)
    assert code == 0, err
    assert {str(p.relative_to(tmp_path / "set")) for p in (tmp_path / "set").rglob("*") if p.is_file()} == set(sizes)


def test_writability_checks_of_sibling_folders_at_once_never_fail(tmp_path):
    """A suite's parallel jobs check their --out folders (siblings under a parent not made yet) at the same time.
    The check makes nothing, so one job's tidy-up never removes a folder another has just made: 4 threads, each
    round under a fresh missing parent, all pass, and nothing is left behind (CI once saw ``cannot write there
    (No such file or directory)`` here when the check made and removed the folders)."""
    import threading
    from vitkd.rundir import ensure_writable
    rounds, n = 300, 4
    barrier, errors = threading.Barrier(n), []

    def job(k):
        for r in range(rounds):
            barrier.wait()
            try:
                ensure_writable(tmp_path / f"p{r}" / "logits" / f"s{k}")
            except Exception as e:   # noqa: BLE001 - collected and reported below
                errors.append(f"round {r}, job {k}: {e}")

    threads = [threading.Thread(target=job, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert list(tmp_path.iterdir()) == []
