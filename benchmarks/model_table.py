"""Params and MACs of every model vitkd registers in timm, plus MiniViT of DeiT-Ti/S/B at share=2
next to their non-shared sources. Writes results/models.md (MACs: fvcore with the fused-attention
handle, one multiply-add = 1, norms excluded; at each model's default input size).

    python benchmarks/model_table.py [--out results/models.md]
"""
import argparse
from pathlib import Path

import timm
import torch

import vitkd.archs  # noqa: F401  (registers the models)
from vitkd.io import atomic_write_text
from vitkd.profile import count_macs


def row(name: str):
    with torch.device("cpu"):
        m = timm.create_model(name, pretrained=False).eval()
    size = tuple(m.pretrained_cfg["input_size"])
    rep = count_macs(m, size, batch_size=1, cross_check=True)
    shared = getattr(m, "minivit_share", None)
    return (f"| {name} | {'x'.join(map(str, size[1:]))} | {rep.params / 1e6:.3f} | {rep.total_macs / 1e6:.2f} | "
            f"{'yes' if rep.agree else 'NO'} | {shared or ''} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="results/models.md")
    args = ap.parse_args()
    names = sorted(vitkd.archs.MODEL_NAMES) + ["deit_tiny_patch16_224", "deit_small_patch16_224",
                                               "deit_base_patch16_224"]
    lines = ["# Registered models: params and MACs", "",
             "Made by `python benchmarks/model_table.py`. MACs per image at the default input, attention "
             "counted (fvcore + fused-attention handle, cross-checked with torch's flop counter: 'agree' = "
             "within 1%), norms excluded. MiniViT rows: share = blocks per weight-sharing group.", "",
             "| model | input | params (M) | MACs (M) | counters agree | share |", "|---|---|---|---|---|---|"]
    for n in names:
        lines.append(row(n))
        print(lines[-1], flush=True)
    atomic_write_text(Path(args.out), "\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
