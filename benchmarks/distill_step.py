"""One distillation training step (forward + backward + AdamW step): vitkd's Distiller vs timm.task.

Two cases, each with a resnet18 teacher, batch 16 at 224 px, fp32, batch-mean losses on both sides:

* logit KD: deit_tiny_patch16_224 student; vitkd ``ce`` (0.5) + ``kd`` (0.5, T) vs timm
  ``LogitDistillationTask(task_loss_weight=0.5, distill_loss_weight=0.5, temperature=T)``;
* DeiT token distillation (soft): deit_tiny_distilled_patch16_224 student; vitkd ``ce`` on the cls head
  (0.5) + ``deit`` soft on the dist head (0.5, T, batchmean) vs timm ``TokenDistillationTask`` (soft).

Both sides start from the same student weights and share the same frozen teacher; the loss values on
one batch are compared first (sanity check), then the steps are timed interleaved (alternating which
side goes first) and the medians reported with the ratio vitkd / timm.

    python benchmarks/distill_step.py [--steps 8] [--warmup 2] [--batch-size 16] [--img-size 224]
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import timm
import torch
from torch import nn

from timm.task import LogitDistillationTask, TokenDistillationTask
from vitkd import models as model_lib
from vitkd.distiller import Distiller
from vitkd.losses import Batch, build_term
from vitkd.teachers import LiveTeacher


def vitkd_step_fn(student, teacher, specs, img):
    terms = [build_term(s, i, ["teacher"]) for i, s in enumerate(specs)]
    spec = model_lib.data_spec(student, img)
    d = Distiller(student, {"teacher": LiveTeacher(teacher, spec)}, terms, (img, img), spec)
    d.train()
    return _loss_and_step(d.trainable_parameters(), lambda x, y: d(Batch(images=x, target=y))[0])


def timm_step_fn(task):
    task.train()
    teacher = {id(p) for p in task.teacher.parameters()}   # run under no_grad, but not marked frozen
    params = [p for p in task.parameters() if p.requires_grad and id(p) not in teacher]
    return _loss_and_step(params, lambda x, y: task(x, y)["loss"])


def _loss_and_step(params, loss):
    """The same AdamW step around either side's loss, so only the loss computation differs."""
    opt = torch.optim.AdamW(params, lr=1e-4)

    def step(x, y):
        total = loss(x, y)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        return total.detach()
    return loss, step


def timed(fn, x, y) -> float:
    t0 = time.perf_counter()
    fn(x, y)
    return time.perf_counter() - t0


def run_case(name, vitkd_fns, timm_fns, x, y, steps, warmup):
    (v_loss, v_step), (t_loss, t_step) = vitkd_fns, timm_fns
    with torch.no_grad():
        lv, lt = v_loss(x, y).item(), t_loss(x, y).item()
    ok = abs(lv - lt) <= 1e-4 * max(1.0, abs(lt))
    for _ in range(warmup):
        v_step(x, y)
        t_step(x, y)
    tv, tt = [], []
    for i in range(steps):
        if i % 2 == 0:
            tv.append(timed(v_step, x, y))
            tt.append(timed(t_step, x, y))
        else:
            tt.append(timed(t_step, x, y))
            tv.append(timed(v_step, x, y))
    mv, mt = statistics.median(tv), statistics.median(tt)
    print(f"{name:>10}: loss vitkd {lv:.6f} timm {lt:.6f} ({'same' if ok else 'DIFFERENT'}); "
          f"step median vitkd {mv:.3f} s, timm {mt:.3f} s, ratio vitkd/timm {mv / mt:.3f}", flush=True)
    return {"case": name, "loss_vitkd": lv, "loss_timm": lt, "same_loss": ok, "vitkd_s": mv, "timm_s": mt,
            "ratio": mv / mt, "vitkd_steps": tv, "timm_steps": tt}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--T", type=float, default=4.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    img, T = args.img_size, args.T
    x = torch.randn(args.batch_size, 3, img, img)
    y = torch.randint(0, 1000, (args.batch_size,))
    teacher = timm.create_model("resnet18", pretrained=False, num_classes=1000)
    teacher.eval().requires_grad_(False)
    print(f"torch {torch.__version__}, timm {timm.__version__}, threads {torch.get_num_threads()}, "
          f"batch {args.batch_size} at {img} px, fp32, resnet18 teacher", flush=True)
    results = []

    # logit KD
    base = timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=1000)
    v = vitkd_step_fn(copy.deepcopy(base), teacher, [{"type": "ce", "weight": 0.5},
                                                     {"type": "kd", "weight": 0.5, "T": T}], img)
    t = timm_step_fn(LogitDistillationTask(copy.deepcopy(base), teacher, criterion=nn.CrossEntropyLoss(),
                                           task_loss_weight=0.5, distill_loss_weight=0.5, temperature=T,
                                           verbose=False))
    results.append(run_case("logit KD", v, t, x, y, args.steps, args.warmup))
    del v, t, base

    # DeiT token distillation (soft, batch mean)
    base = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, num_classes=1000)
    v = vitkd_step_fn(copy.deepcopy(base), teacher, [
        {"type": "ce", "head": "cls", "weight": 0.5},
        {"type": "deit", "mode": "soft", "T": T, "reduction": "batchmean", "weight": 0.5}], img)
    t = timm_step_fn(TokenDistillationTask(copy.deepcopy(base), teacher, criterion=nn.CrossEntropyLoss(),
                                           distill_type="soft", task_loss_weight=0.5, distill_loss_weight=0.5,
                                           temperature=T, verbose=False))
    results.append(run_case("DeiT token", v, t, x, y, args.steps, args.warmup))
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
