"""Cost of tapping: a tapped forward vs the plain timm forward, measured in one process.

    python benchmarks/taps.py [--model deit_small_patch16_224] [--batch 32] [--reps 7]

Prints median times and ratios: tokens of 4 blocks (target within 1.03x of plain) and tokens + the
attention maps of 2 blocks (their blocks leave the fused attention kernel). Variants are interleaved
round-robin so machine noise hits them alike.
"""
import argparse
import statistics
import time

import timm
import torch

from vitkd.taps import TapRequest, Tapped


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="deit_small_patch16_224")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False).eval()
    depth = len(model.blocks)
    x = torch.randn(args.batch, 3, 224, 224)
    token_blocks = {depth // 4 - 1, depth // 2 - 1, 3 * depth // 4 - 1, depth - 1}
    variants = {
        "plain": lambda: model(x),
    }
    tokens_tap = Tapped(model, TapRequest(tokens=token_blocks))
    variants["tokens x4"] = lambda: tokens_tap(x)

    def run_attn():
        with Tapped(model, TapRequest(tokens=token_blocks, attn={depth // 2 - 1, depth - 1})) as t:
            return t(x)
    variants["tokens x4 + attn x2"] = run_attn
    times = {k: [] for k in variants}
    with torch.inference_mode():
        for fn in variants.values():   # warm-up
            fn()
        for _ in range(args.reps):
            for k, fn in variants.items():
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
    base = statistics.median(times["plain"])
    print(f"{args.model}, batch {args.batch}, 224 px, CPU threads {torch.get_num_threads()}, "
          f"median of {args.reps} interleaved reps")
    for k, ts in times.items():
        med = statistics.median(ts)
        print(f"  {k:22s} {med * 1000:8.1f} ms   ratio to plain {med / base:.3f}x")


if __name__ == "__main__":
    main()
