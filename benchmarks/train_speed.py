"""Training speed on Fashion-MNIST, measured in one process (issue 28): ratios against baselines run beside them.

    python benchmarks/train_speed.py [--model MODEL] [--teacher CNN] [--batch 128] [--steps 10] [--warmup 3]
                                     [--precisions fp32 bf16] [--json]

For each precision (bf16 only where the CPU has native bf16 instructions, unless asked for):

* **step**: vitkd's training step (the engine's distiller with a CE term, its optimizer and schedule, under the
  precision's autocast) against a minimal plain-PyTorch loop (the same model and weights, ``F.cross_entropy``
  with the same label smoothing, AdamW) on the same in-memory batches; goal: vitkd within 1.05x the time;
* **data**: the data path alone (the DataLoader over the train split, seeded light augmentation, batched) in
  img/s, against the step's img/s; goal: at least 5x;
* **teacher**: inference of a CNN teacher in img/s (bf16 against fp32: goal at least 2x);
* **GFLOP/s**: the step's achieved rate (3 x forward MACs x 2 per image: forward plus backward) as a share of the
  matmul peak measured in the same process (n = 1024, the precision's dtype).

Step variants are interleaved (alternating which goes first) and medians reported. Needs the Fashion-MNIST files
(``vitkd data get fashion_mnist``); ``--subset`` images are used.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
import torch.nn.functional as F

import vitkd  # noqa: F401  (registers the archs)
from vitkd.config import parse_config
from vitkd.engine import build_run
from vitkd.engine.optim import build_optimizer
from vitkd.losses import Batch
from vitkd.profile.macs import count_macs


def native_bf16() -> bool:
    """The CPU computes bf16 natively (AVX512-BF16 or AMX), as oneDNN reports it."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def matmul_peak(dtype: torch.dtype, n: int = 1024, reps: int = 5) -> float:
    """GFLOP/s of an n x n matmul in ``dtype`` (median of ``reps``)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        ts.append(time.perf_counter() - t0)
    return 2 * n ** 3 / statistics.median(ts) / 1e9


def config(model: str, batch: int, subset: int, precision: str, threads: int) -> dict:
    return {"seed": 0, "model": {"name": model},
            "data": {"name": "fashion_mnist", "train_subset": subset, "batch_size": batch, "augment": "light"},
            "train": {"epochs": 1, "warmup_epochs": 0, "progress": False, "threads": threads,
                      "precision": precision, "label_smoothing": 0.1},
            "distill": {"terms": [{"type": "ce", "weight": 1.0}]}}


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(args, precision: str) -> dict:
    cfg = parse_config(config(args.model, args.batch, args.subset, precision, args.threads))
    torch.set_num_threads(args.threads)
    run = build_run(cfg)
    distiller, student = run.distiller, run.student
    train_ds = run.datasets["train"]
    loader = torch.utils.data.DataLoader(train_ds, batch_size=args.batch, shuffle=False)
    # the data path alone: every batch of the subset through the DataLoader, twice (medians of the passes)
    data_s = []
    for _ in range(2):
        t0 = time.perf_counter()
        batches = [(x, y, i) for x, y, i in loader]
        data_s.append(time.perf_counter() - t0)
    data_ips = len(train_ds) / statistics.median(data_s)
    bf16 = precision == "bf16"

    optimizer, sched = build_optimizer(distiller, cfg.train, len(batches))
    distiller.train()

    def vitkd_step(x, y, i):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, _ = distiller(Batch(images=x, target=y, index=i, epoch=0, progress=0.0))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sched.step()

    plain = copy.deepcopy(student).train()
    opt = torch.optim.AdamW(plain.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)

    def plain_step(x, y, i):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(plain(x), y, label_smoothing=cfg.train.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for k in range(args.warmup):
        x, y, i = batches[k % len(batches)]
        vitkd_step(x, y, i)
        plain_step(x, y, i)
    tv, tp = [], []
    for k in range(args.steps):
        x, y, i = batches[(args.warmup + k) % len(batches)]
        first, second = ((vitkd_step, tv), (plain_step, tp)) if k % 2 == 0 else ((plain_step, tp), (vitkd_step, tv))
        first[1].append(_timed(lambda: first[0](x, y, i)))
        second[1].append(_timed(lambda: second[0](x, y, i)))
    mv, mp = statistics.median(tv), statistics.median(tp)
    macs = count_macs(student, (student.pretrained_cfg["input_size"][0], *run.spec.img_size), batch_size=1).total_macs
    step_ips = args.batch / mv
    gflops = 3 * 2 * macs * step_ips / 1e9
    peak = matmul_peak(torch.bfloat16 if bf16 else torch.float32)
    return {"precision": precision, "model": args.model, "batch": args.batch, "threads": args.threads,
            "vitkd_step_s": mv, "plain_step_s": mp, "ratio_vitkd_plain": mv / mp, "step_img_s": step_ips,
            "data_img_s": data_ips, "data_over_step": data_ips / step_ips, "forward_macs": macs,
            "step_gflops": gflops, "matmul_peak_gflops": peak, "share_of_peak": gflops / peak}


def teacher_speed(name: str, batch: int, precisions, reps: int) -> dict:
    import timm
    model = timm.create_model(name).eval()
    x = torch.randn(batch, *model.pretrained_cfg["input_size"])
    out = {}
    with torch.inference_mode():
        for p in precisions:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=p == "bf16"):
                model(x)
        ts = {p: [] for p in precisions}
        for r in range(reps):
            for p in (precisions if r % 2 == 0 else list(reversed(precisions))):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=p == "bf16"):
                    ts[p].append(_timed(lambda: model(x)))
    for p in precisions:
        out[p] = batch / statistics.median(ts[p])
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vit_fmnist_small")
    ap.add_argument("--teacher", default="resnet_fmnist_m")   # a mid-size CNN teacher
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--subset", type=int, default=2048)
    ap.add_argument("--teacher-batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--precisions", nargs="+", default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    precisions = args.precisions or (["fp32", "bf16"] if native_bf16() else ["fp32"])
    print(f"torch {torch.__version__}, {args.threads} threads, native bf16: {native_bf16()}; {args.model}, batch "
          f"{args.batch}, medians of {args.steps} interleaved steps after {args.warmup} warm-up", flush=True)
    rows = [measure(args, p) for p in precisions]
    for r in rows:
        print(f"{r['precision']}: step vitkd {r['vitkd_step_s'] * 1e3:.1f} ms, plain {r['plain_step_s'] * 1e3:.1f} ms, "
              f"ratio vitkd/plain {r['ratio_vitkd_plain']:.3f}x (goal <= 1.05); {r['step_img_s']:.0f} img/s; "
              f"data path {r['data_img_s']:.0f} img/s = {r['data_over_step']:.1f}x the step (goal >= 5); "
              f"{r['step_gflops']:.1f} GFLOP/s = {100 * r['share_of_peak']:.0f}% of the {r['matmul_peak_gflops']:.0f} "
              f"GFLOP/s matmul peak", flush=True)
    if len(rows) == 2:
        print(f"bf16/fp32 step speed-up: {rows[0]['vitkd_step_s'] / rows[1]['vitkd_step_s']:.2f}x (goal >= 1.4)")
    teacher = teacher_speed(args.teacher, args.teacher_batch, precisions, max(3, args.steps // 2))
    print(f"teacher {args.teacher} inference, batch {args.teacher_batch}: "
          + ", ".join(f"{p} {v:.0f} img/s" for p, v in teacher.items())
          + (f"; bf16/fp32 {teacher['bf16'] / teacher['fp32']:.2f}x (goal >= 2)" if len(teacher) == 2 else ""))
    if args.json:
        print(json.dumps({"steps": rows, "teacher_img_s": teacher}))


if __name__ == "__main__":
    main()
