"""Stored teacher logits vs a live teacher: the step time of one distillation training step, all in one run.

Four steps (forward + backward + AdamW step) of a deit_tiny_patch16_224 student at 224 px, batch 16, fp32,
random init (no downloads), resnet50 teacher:

* no-KD: vitkd's distiller with the ``ce`` term alone;
* live KD: ``ce`` 0.5 + ``kd`` 0.5 (T) with the teacher run every step (:class:`vitkd.teachers.LiveTeacher`);
* stored KD: the same terms, the teacher read from a store (:class:`vitkd.methods.stored_logits.replay.StoredTeacher`);
* timm's ``LogitDistillationTask`` (live teacher, the same weights).

The store is written first by :func:`vitkd.methods.stored_logits.save.save_store` (the writer ``vitkd logits save`` uses) over
``--save-images`` images: its teacher throughput (img/s) is the save cost. The steps are timed round-robin
(the order rotates each round) and the medians reported with their ratios. Targets: stored KD within 1.05x of
no-KD; stored KD at most 0.7x timm's live step.

    python benchmarks/stored_logits.py [--steps 6] [--warmup 1] [--batch-size 16] [--img-size 224] [--topk 10]
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import timm
import torch
from torch import nn

from timm.task import LogitDistillationTask
from vitkd import models as model_lib
from vitkd.config import RunCfg
from vitkd.distiller import Distiller
from vitkd.dist import World
from vitkd.methods.stored_logits.format import HEADER, record_dtype
from vitkd.methods.stored_logits.replay import StoredTeacher
from vitkd.methods.stored_logits.save import save_store
from vitkd.losses import Batch, build_term
from vitkd.taps import TapRequest
from vitkd.teachers import LiveTeacher


class FixedImages:
    """A train split of ``n`` fixed random images (what the writer replays: ``ds[(index, copy)]``)."""

    def __init__(self, images):
        self.images = images

    def set_epoch(self, epoch):
        pass

    def __len__(self):
        return len(self.images)

    def __getitem__(self, key):
        return (self.images[key[0]],)


def distiller_step(student, teachers, specs, img):
    names = list(teachers)
    terms = [build_term(s, i, names) for i, s in enumerate(specs)]
    spec = model_lib.data_spec(student, img)
    d = Distiller(student, teachers, terms, (img, img), spec)
    d.train()
    return _step(d.trainable_parameters(), lambda x, y, b: d(b)[0])


def timm_step(task):
    task.train()
    teacher = {id(p) for p in task.teacher.parameters()}
    return _step([p for p in task.parameters() if p.requires_grad and id(p) not in teacher],
                 lambda x, y, b: task(x, y)["loss"])


def _step(params, loss):
    opt = torch.optim.AdamW(params, lr=1e-4)

    def step(x, y, b):
        total = loss(x, y, b)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
    return step


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--topk", type=int, default=10)
    ap.add_argument("--save-images", type=int, default=32, help="images the store is written over (save throughput)")
    ap.add_argument("--T", type=float, default=4.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    img, b = args.img_size, args.batch_size
    n = max(args.save_images, b)
    images = torch.randn(n, 3, img, img)
    x, y = images[:b], torch.randint(0, 1000, (b,))
    batch = Batch(images=x, target=y, index=torch.arange(b), epoch=0)
    teacher = model_lib.freeze(model_lib.create("resnet50", 1000, {}))
    base = model_lib.create("deit_tiny_patch16_224", 1000, {"img_size": img})
    spec = model_lib.data_spec(base, img)
    print(f"torch {torch.__version__}, timm {timm.__version__}, threads {torch.get_num_threads()}, batch {b} at "
          f"{img} px, fp32, deit_tiny student, resnet50 teacher, K={args.topk}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "t"
        live = LiveTeacher(teacher, spec)
        live.set_request(TapRequest())
        t0 = time.perf_counter()
        save_store(RunCfg(), live, "random-init", {"name": "resnet50", "vit": False, "depth": 0, "embed_dim": None,
                                                   "num_heads": None, "num_classes": 1000, "grid": None,
                                                   "prefix_names": [], "stages": {}, "head_names": ["cls"]},
                   store, FixedImages(images), spec, 1000, topk=args.topk, epochs=1, batch_size=b, world=World(),
                   progress=False)
        save_s = time.perf_counter() - t0
        live.close()
        rec = record_dtype(min(args.topk, 1000), "fp16").itemsize
        on_disk = sum(p.stat().st_size for p in store.glob("*.shard"))
        print(f"save: {n} images in {save_s:.1f} s = {n / save_s:.1f} img/s (teacher forward + top-K + write); "
              f"{rec} bytes per sample per epoch ({on_disk / n:.1f} with the {HEADER}-byte shard header)", flush=True)

        kd = [{"type": "ce", "weight": 0.5}, {"type": "kd", "weight": 0.5, "T": args.T}]
        cases = {
            "no-KD": distiller_step(copy.deepcopy(base), {}, [{"type": "ce"}], img),
            "live KD": distiller_step(copy.deepcopy(base), {"teacher": LiveTeacher(teacher, spec)}, kd, img),
            "stored KD": distiller_step(copy.deepcopy(base), {"teacher": StoredTeacher(store)}, kd, img),
            "timm live": timm_step(LogitDistillationTask(copy.deepcopy(base), teacher,
                                                         criterion=nn.CrossEntropyLoss(), task_loss_weight=0.5,
                                                         distill_loss_weight=0.5, temperature=args.T,
                                                         verbose=False)),
        }
        names = list(cases)
        for _ in range(args.warmup):
            for name in names:
                cases[name](x, y, batch)
        times = {name: [] for name in names}
        for r in range(args.steps):
            for name in names[r % len(names):] + names[:r % len(names)]:
                t0 = time.perf_counter()
                cases[name](x, y, batch)
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k in names:
        print(f"{k:>10}: step median {med[k]:.3f} s over {len(times[k])} steps", flush=True)
    ratios = {"stored/no-KD": med["stored KD"] / med["no-KD"], "stored/timm live": med["stored KD"] / med["timm live"],
              "live/no-KD": med["live KD"] / med["no-KD"], "live/timm live": med["live KD"] / med["timm live"]}
    print("ratios: " + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items()), flush=True)
    print(f"targets: stored/no-KD <= 1.05: {'met' if ratios['stored/no-KD'] <= 1.05 else 'MISSED'}; "
          f"stored/timm live <= 0.7: {'met' if ratios['stored/timm live'] <= 0.7 else 'MISSED'}", flush=True)
    if args.json:
        print(json.dumps({"median_s": med, "ratios": ratios, "steps": times, "save_img_per_s": n / save_s,
                          "bytes_per_sample_per_epoch": rec}))


if __name__ == "__main__":
    main()
