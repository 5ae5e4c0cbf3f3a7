"""The cost picture: test top-1 against inference MACs and against training MACs, for the rows of several
committed suites, the teachers and the published anchors, drawn by ``vitkd report`` (:mod:`.evidence`) from the
suites' ``results.csv``, ``teachers.csv`` and ``resolved_configs.yaml`` alone.

Training MACs of a run: the suite's ``train_mmacs_per_image`` (student forward + backward, the teachers' forwards,
connectors, per image seen) times the images it saw (its ``data.train_subset``, else the whole train split,
times ``train.epochs``). The second training figure adds the teachers' own training, read from the suite that
trained them (``teachers:``, matched by architecture): what a distilled student costs when its teacher has to be
trained first, and what online and self distillation claim to save. An anchor's training MACs follow the same
convention (3x its forward MACs per image seen), from its published epochs and train-set size.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from ..config import ConfigError, read_yaml

__all__ = ["Anchor", "PictureSpec", "Point", "points", "teacher_points", "draw", "table"]

TRAIN_MACS_PER_FORWARD = 3.0   # forward + backward, as vitkd.profile counts a training image


@dataclass
class Anchor:
    label: str
    top1: float
    source: str = ""
    macs_m: Optional[float] = None     # inference MACs; none: drawn as a level line
    epochs: Optional[float] = None
    images: Optional[int] = None       # its train set

    def train_tmacs(self) -> Optional[float]:
        if self.macs_m is None or self.epochs is None or self.images is None:
            return None
        return TRAIN_MACS_PER_FORWARD * self.macs_m * 1e6 * self.images * self.epochs / 1e12


@dataclass
class PictureSpec:
    file: str                                          # the png, written by vitkd report
    suites: List[str] = field(default_factory=list)    # results folders whose rows are drawn
    teachers: Optional[str] = None                     # the suite that trained the teachers (their own cost)
    train_images: int = 0                              # the whole train split, for runs without data.train_subset
    anchors: List[Anchor] = field(default_factory=list)

    def __post_init__(self):
        if self.train_images <= 0:
            raise ConfigError("readme.picture.train_images: the train split's size, a positive integer")


@dataclass
class Point:
    suite: str
    row: str
    family: str
    size: str
    curve: str
    top1: float
    std: float
    macs_m: float
    train_tmacs: float
    teacher_tmacs: float               # the teachers' own training (0: none, or none trained for it)
    teachers: str                      # the labels of the teachers it reads
    arch: str = ""                     # the model's architecture (how a row's teacher finds its own training)


def _read_csv(path: Path) -> List[dict]:
    if not path.is_file():
        raise ConfigError(f"{path}: missing (run the suite first: vitkd compare)")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _images_seen(configs: dict, key: str, train_images: int) -> float:
    cfg = configs.get(key)
    if cfg is None:
        raise ConfigError(f"resolved_configs.yaml: no run '{key}'")
    data, train = cfg.get("data") or {}, cfg.get("train") or {}
    return float(data.get("train_subset") or train_images) * float(train["epochs"])


def _run_key(configs: dict, kind: str, name: str) -> str:
    """The first recorded run of a row or teacher (seeds share the regime)."""
    for k in configs:
        if k == f"{kind}/{name}" or k.startswith(f"{kind}/{name}/"):
            return k
    raise ConfigError(f"resolved_configs.yaml: no run of {kind} '{name}'")


def teacher_points(spec: PictureSpec) -> List[Point]:
    """The teachers' suite rows: each teacher's own accuracy, inference MACs and training MACs."""
    if spec.teachers is None:
        return []
    folder = Path(spec.teachers)
    configs = read_yaml(folder / "resolved_configs.yaml")
    out = []
    for r in _read_csv(folder / "results.csv"):
        seen = _images_seen(configs, _run_key(configs, "rows", r["row"]), spec.train_images)
        out.append(Point(suite=folder.name, row=r["row"], family=r["family"], size=r["size"], curve="",
                         top1=float(r["test_top1_mean"]), std=float(r["test_top1_std"]), macs_m=float(r["macs_m"]),
                         train_tmacs=float(r["train_mmacs_per_image"]) * 1e6 * seen / 1e12, teacher_tmacs=0.0,
                         teachers="", arch=r["student"]))
    return out


def points(spec: PictureSpec) -> List[Point]:
    """Every row of the picture's suites (a row two suites share is drawn once, from the first listed: list the
    suite whose curves should join it first)."""
    own = {p.arch: p.train_tmacs for p in teacher_points(spec)}
    out, seen = [], set()
    for f in spec.suites:
        folder = Path(f)
        configs = read_yaml(folder / "resolved_configs.yaml")
        arch = {t["label"]: t["model"] for t in _read_csv(folder / "teachers.csv")} \
            if (folder / "teachers.csv").is_file() else {}
        for r in _read_csv(folder / "results.csv"):
            if r["row"] in seen:
                continue
            seen.add(r["row"])
            labels = [t.strip() for t in (r.get("teachers") or "").split(",") if t.strip()]
            seen_imgs = _images_seen(configs, _run_key(configs, "rows", r["row"]), spec.train_images)
            out.append(Point(
                suite=folder.name, row=r["row"], family=r["family"], size=r["size"], curve=r.get("curve") or "",
                top1=float(r["test_top1_mean"]), std=float(r["test_top1_std"]), macs_m=float(r["macs_m"]),
                train_tmacs=float(r["train_mmacs_per_image"]) * 1e6 * seen_imgs / 1e12,
                teacher_tmacs=sum(own.get(arch.get(t, ""), 0.0) for t in labels), teachers=", ".join(labels),
                arch=r.get("student") or ""))
    return out


def table(spec: PictureSpec, pts: List[Point]) -> List[str]:
    L = ["| suite | row | size | family | teachers | test top-1 | inference MMACs | training TMACs | "
         "+ teachers' training |", "|---|---|---|---|---|---|---|---|---|"]
    for p in sorted(pts, key=lambda p: (p.macs_m, p.train_tmacs)):
        L.append(f"| {p.suite} | {p.row} | {p.size} | {p.family} | {p.teachers or '-'} | {p.top1:.2f} ± {p.std:.2f} | "
                 f"{p.macs_m:.2f} | {p.train_tmacs:.2f} | {p.train_tmacs + p.teacher_tmacs:.2f} |")
    for t in teacher_points(spec):
        L.append(f"| {t.suite} | {t.row} (teacher) | {t.size} | {t.family} | - | {t.top1:.2f} | {t.macs_m:.2f} | "
                 f"{t.train_tmacs:.2f} | {t.train_tmacs:.2f} |")
    for a in spec.anchors:
        tt = a.train_tmacs()
        L.append(f"| published | {a.label} | | anchor | - | {a.top1:.1f} | "
                 f"{'' if a.macs_m is None else f'{a.macs_m:.1f}'} | {'' if tt is None else f'{tt:.1f}'} | |")
    return L


def draw(spec: PictureSpec, pts: List[Point], colors: Dict[str, str], path: Path) -> None:
    """Two panels: top-1 against inference MACs; against training MACs, each row filled at its own training and
    hollow at its own plus its teachers' (a line joins the two); teachers as stars, anchors as diamonds (an
    anchor without MACs as a dotted level)."""
    from .plots import pyplot, save_png
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(15, 6.5), sharey=True)
    teachers = teacher_points(spec)
    for ax, x_of, label in ((axes[0], lambda p: p.macs_m, "inference MACs per image (M, log)"),
                            (axes[1], lambda p: p.train_tmacs, "training MACs per run (T, log): filled, the "
                                                               "student's run; hollow, + its teachers' training")):
        famseen = set()
        for p in pts:
            c = colors.get(p.family, "gray")
            ax.errorbar(x_of(p), p.top1, yerr=p.std, fmt="o", color=c, ms=5, capsize=2, alpha=0.85,
                        label=p.family if p.family not in famseen else None)
            famseen.add(p.family)
            if ax is axes[1] and p.teacher_tmacs > 0:
                ax.plot([p.train_tmacs, p.train_tmacs + p.teacher_tmacs], [p.top1, p.top1], color=c, lw=0.6,
                        alpha=0.5)
                ax.scatter([p.train_tmacs + p.teacher_tmacs], [p.top1], facecolors="none", edgecolors=c, s=30)
        curves: Dict[str, List[Point]] = {}
        for p in pts:
            if p.curve:
                curves.setdefault(p.curve, []).append(p)
        for name, cpts in curves.items():   # a curve joins one method across student sizes
            if len({p.size for p in cpts}) < 2:
                continue
            cpts = sorted(cpts, key=x_of)
            ax.plot([x_of(p) for p in cpts], [p.top1 for p in cpts], color=colors.get(cpts[0].family, "gray"),
                    lw=1, alpha=0.6)
            ax.annotate(name, (x_of(cpts[-1]), cpts[-1].top1), fontsize=8, xytext=(5, 0), textcoords="offset points")
        for t in teachers:
            ax.scatter(x_of(t), t.top1, marker="*", s=160, color="gold", edgecolor="k", zorder=5,
                       label="teacher" if t is teachers[0] else None)
            ax.annotate(t.size, (x_of(t), t.top1), fontsize=7, xytext=(3, -9), textcoords="offset points")
        for i, a in enumerate(spec.anchors):
            x = a.macs_m if ax is axes[0] else a.train_tmacs()
            if x is None:
                ax.axhline(a.top1, color="k", ls=":", lw=0.8)
                ax.text(0.01, a.top1, f" {a.label}", fontsize=7, va="bottom", transform=ax.get_yaxis_transform())
            else:
                ax.scatter(x, a.top1, marker="D", s=50, color="white", edgecolor="k", zorder=5,
                           label="published anchor" if i == 0 else None)
                ax.annotate(a.label, (x, a.top1), fontsize=7, xytext=(-4, 6), textcoords="offset points", ha="right")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test top-1 (%), mean ± std over seeds")
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle("Accuracy against inference and training cost: vitkd's Fashion-MNIST students, teachers and the "
                 "published anchors")
    fig.tight_layout()
    save_png(fig, path)
