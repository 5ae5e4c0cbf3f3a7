"""A finished Fashion-MNIST run's test curve beside the published anchor's (issue 28): writes ``curve.csv``,
``curve.png`` and ``README.md`` into ``--out`` (e.g. ``results/fmnist/no_kd_50ep``).

    python tools/fmnist_curve.py RUN_DIR --out results/fmnist/no_kd_50ep [--command "..."]

The anchor (../shared/ANCHORS.md; s-chh/PyTorch-Scratch-Vision-Transformer-ViT): a ViT from scratch, patch 4, dim
64, depth 6, 4 heads, MLP x2 (about 210k params, 11.8 M MACs), AdamW 5e-4, batch 128, crop + flip, 10 warm-up
epochs and cosine over 200 epochs: about 87% test top-1 at epoch 25, 89% at 50, 90% at 75-100, 92.3% at 200.
Its points are read off a curve of one run on a 200-epoch schedule, so they are approximate and not paired.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

ANCHOR = {25: 87.0, 50: 89.0, 75: 90.0, 100: 90.0, 200: 92.3}   # epoch -> approximate test top-1 (%)
ANCHOR_SOURCE = "s-chh/PyTorch-Scratch-Vision-Transformer-ViT (200-epoch schedule; points approximate)"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--out", required=True)
    ap.add_argument("--command", default="", help="the command that trained the run (quoted in the README)")
    ap.add_argument("--note", default="", help="a sentence on how the run was made (machine load, ...)")
    args = ap.parse_args()
    run, out = Path(args.run), Path(args.out)
    metrics = json.loads((run / "metrics.json").read_text())
    meta = yaml.safe_load((run / "run.yaml").read_text())
    config = yaml.safe_load((run / "config.yaml").read_text())
    history = metrics["history"] if "history" in metrics else metrics.get("epochs", [])
    rows = [r for r in history if "test_top1" in r]
    out.mkdir(parents=True, exist_ok=True)
    lines = ["epoch,val_top1,test_top1,train_loss,epoch_time_s"]
    lines += [f"{r['epoch']},{r['val_top1']:.2f},{r['test_top1']:.2f},{r['train_loss']:.4f},{r['epoch_time_s']:.1f}"
              for r in rows]
    (out / "curve.csv").write_text("\n".join(lines) + "\n")
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["epoch"] for r in rows], [r["test_top1"] for r in rows], label=f"vitkd {meta['model']} (test)")
    ax.scatter(list(ANCHOR), list(ANCHOR.values()), color="k", marker="x", label="anchor ViT, 200-epoch schedule")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test top-1 (%)")
    ax.set_ylim(60, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "curve.png", dpi=120, metadata={"Software": None})
    plt.close(fig)

    last = rows[-1]
    n = len(rows)
    at = {e: next((r["test_top1"] for r in rows if r["epoch"] == e), None) for e in ANCHOR}
    wall = sum(r["epoch_time_s"] for r in history)
    readme = [f"# {config.get('name', run.name)}: {meta['model']} on Fashion-MNIST, {n} epochs, no KD",
              "",
              f"Made by: `{args.command}`, then `python tools/fmnist_curve.py {run} --out {out}`." if args.command
              else f"Made by `python tools/fmnist_curve.py {run} --out {out}`.",
              "",
              f"- Final (epoch {last['epoch']}): test top-1 **{last['test_top1']:.2f}%** on the {meta.get('test_images')} "
              f"official test images; val {last['val_top1']:.2f}% on the {meta.get('val_images')} held-out images; "
              f"trained on {meta['train_images']} images; one seed ({config.get('seed')}).",
              f"- Precision {meta.get('precision', 'fp32')}, device {meta['device']}, world size {meta['world_size']}, "
              f"{config['train'].get('threads')} threads; training wall {wall / 60:.1f} min (evaluation included).",
              f"- Versions: {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}.",
              *([f"- {args.note}"] if args.note else []),
              "",
              "| epoch | vitkd test top-1 | anchor (approx.) |",
              "|---|---|---|"]
    readme += [f"| {e} | {at[e]:.2f} |" if at[e] is not None else f"| {e} | - |" for e in ANCHOR]
    readme = [line + (f" {ANCHOR[int(line.split('|')[1])]:.1f} |" if line.startswith("| ") and
                      line.split("|")[1].strip().isdigit() else "") for line in readme]
    readme += ["", f"Anchor: {ANCHOR_SOURCE}. Our schedule is {n} epochs of cosine with warm-up (so its end is a "
               f"finished schedule, the anchor's epoch {n} is mid-schedule); the anchor's model is about 11.8 M MACs "
               f"and ours is stated in `config.yaml`. A single seed: no claim of a difference is made."]
    (out / "README.md").write_text("\n".join(readme) + "\n")
    print(json.dumps({"out": str(out), "final_test_top1": last["test_top1"], "epochs": n}))


if __name__ == "__main__":
    main()
