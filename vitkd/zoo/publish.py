"""Publishing: a finished run folder becomes a zoo entry (a folder in timm's Hugging Face Hub layout, its index
entry and its card); a comparison suite's declared selection becomes a set of entries.

The folder holds the student alone (no teacher, no connectors):

* ``config.json``: written by timm's own ``save_config_for_hf`` (architecture, ``num_classes``, ``model_args``,
  pretrained cfg), so ``timm.create_model("local-dir:FOLDER")`` rebuilds it with the same arguments;
* the weights under timm's safetensors name, byte-deterministic (equal tensors give equal bytes);
* ``train.yaml``: the run's config, its teachers named by zoo entry (``{zoo: NAME}``), so it trains again
  anywhere with ``vitkd train``;
* ``README.md``: the card, generated from the index entry.
"""
from __future__ import annotations

import csv
import datetime
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import yaml

from .. import models as model_lib
from ..config import ConfigError, check_name, path_under
from ..io import atomic_save_safetensors, atomic_write_text
from ..rundir import RunDir, exclusive
from .fetch import sha256_of
from .index import (ZooEntry, ZooError, ZooFile, ZooIndex, SuiteRef, load_index, markdown_table,
                    row_of, save_index)

__all__ = ["publish_run", "publish_suite", "card_text", "suite_selection", "CONFIG_FILE", "CARD_FILE",
           "DEFAULT_MAX_MB", "check_card_figures"]

CONFIG_FILE = "train.yaml"
CARD_FILE = "README.md"
HF_CONFIG_FILE = "config.json"
DEFAULT_MAX_MB = 50.0


def _weights_name() -> str:
    from timm.models._hub import HF_SAFE_WEIGHTS_NAME
    return HF_SAFE_WEIGHTS_NAME


def open_index(path: Path) -> ZooIndex:
    """The index at ``path``, or a new empty one there."""
    path = Path(path)
    return load_index(str(path)) if path.is_file() else ZooIndex(path=path)


# ---------------------------------------------------------------------- the card
def card_text(entry: ZooEntry, root_rel: str = "models") -> str:
    """The model card (Hugging Face front matter + the table row, lineage, usage, the cited suite figures, the
    reproduce command and the training curve), generated from the entry alone (its file hashes excepted)."""
    row = row_of(entry)
    lines = ["---", "library_name: timm", f"license: {entry.license.lower()}", "tags:", "- image-classification",
             "- timm", "- vitkd", "- knowledge-distillation", "---", "", f"# {entry.name}", "",
             f"`{entry.architecture}` trained on {entry.dataset} by vitkd ({entry.method or 'no distillation'}). "
             f"Top-1 of these weights on {entry.dataset}/{entry.split}: **{row['top1']}**.", "",
             markdown_table([entry]).rstrip(), ""]
    if entry.teachers:
        lines += ["## Lineage", ""] + [f"- teacher `{k}`: zoo entry `{v}`" for k, v in entry.teachers.items()] + [""]
    lines += ["## Use", "", "```python", "import vitkd.zoo", f"model = vitkd.zoo.create_model({entry.name!r})",
              "# or, from this folder: import vitkd, timm; timm.create_model('local-dir:FOLDER', pretrained=True)", "```", "",
              f"`vitkd zoo eval {entry.name}` evaluates it on {entry.dataset}/{entry.split}.", ""]
    if entry.suite is not None:
        s = entry.suite
        lines += ["## In the comparison suite", "",
                  f"Cited from `{s.results}`, {s.key} `{s.row}`; the weights published are those of seed {s.seed}, "
                  f"declared in advance (nothing was chosen on test).", "",
                  "| " + " | ".join(s.figures) + " |", "|" + "---|" * len(s.figures),
                  figures_line(s), ""]
    lines += ["## Reproduce", "", "```", entry.reproduce, "```", "",
              f"Training config: `{entry.config}` (teachers named by zoo entry). Versions: vitkd {entry.vitkd}, "
              f"timm {entry.timm}; published {entry.date}.", ""]
    if entry.curve:
        lines += ["## Training curve", "", "| epoch | train loss | val top-1 |", "|---|---|---|"]
        lines += [f"| {int(e)} | {loss:.4f} | {'' if val is None else f'{val:.2f}'} |" for e, loss, val in entry.curve]
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------- one run
def _config_with_zoo_teachers(config: dict, teachers: Dict[str, str]) -> dict:
    """The run config with each teacher named by its zoo entry instead of a local run folder."""
    config = yaml.safe_load(yaml.safe_dump(config))
    for key, t in ((config.get("distill") or {}).get("teachers") or {}).items():
        t.update(zoo=teachers[key], checkpoint=None, model=None, args={})
    return config


def _lineage(config: dict, given: Dict[str, str], index: ZooIndex) -> Dict[str, str]:
    """{teacher key: zoo name} for every teacher of the run: named in ``given``, or already a zoo teacher."""
    out = {}
    for key, t in ((config.get("distill") or {}).get("teachers") or {}).items():
        name = given.get(key) or (t or {}).get("zoo")
        if not name:
            raise ZooError(f"zoo publish: teacher '{key}' of the run has no zoo entry: publish the teacher first and "
                           f"give --teacher {key}=ZOO_NAME")
        index.get(name)
        out[key] = name
    extra = set(given) - set(out)
    if extra:
        raise ZooError(f"zoo publish: --teacher {sorted(extra)[0]}: the run has no teacher of that name")
    return out


def _curve(run: RunDir) -> List[List[Any]]:
    """[[epoch, train loss, val top-1]] at the epochs the run evaluated (``train.eval_every``)."""
    return [[int(r["epoch"]), round(float(r["train_loss"]), 6), round(float(r["val_top1"]), 4)]
            for r in run.metrics().get("epochs", []) if "train_loss" in r and r.get("val_top1") not in (None, "")]


def _measure(model, input_size, throughput: bool) -> Dict[str, Optional[float]]:
    from ..profile import count_macs, count_params, measure_throughput
    out = {"params_m": round(count_params(model)["total"] / 1e6, 4),
           "macs_m": round(count_macs(model, tuple(input_size), cross_check=False).macs_per_image / 1e6, 4),
           "img_per_s": None}
    if throughput:
        out["img_per_s"] = round(float(measure_throughput(model, tuple(input_size), batch_size=64)["img_per_s"]), 1)
    return out


def _replace_folder(staged: Path, final: Path) -> None:
    """Put ``staged`` at ``final``: renames only, so a reader sees the old folder or the new one."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(staged, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def publish_run(run_dir, name: str, index_path, *, method: str = "", family: str = "", group: str = "",
                teachers: Optional[Dict[str, str]] = None, suite: Optional[SuiteRef] = None,
                figures: Optional[Dict[str, Optional[float]]] = None, reproduce: Optional[str] = None,
                license: str = "Apache-2.0", split: str = "test", throughput: bool = True,
                log: Callable[[str], None] = lambda m: None) -> ZooEntry:
    """Export the student of the finished run ``run_dir`` as zoo entry ``name`` beside the index at
    ``index_path`` (its folder ``<index folder>/<name>/``), evaluate the exported folder through ``local-dir:``
    on ``split``, and add (or replace) its entry. ``figures``: params_m / macs_m / img_per_s already measured
    (a suite's), else measured here (img/s only with ``throughput``). One process writes an index folder (the
    index and its entries) at a time (:func:`vitkd.rundir.exclusive`)."""
    check_name(name, "zoo", "model name")
    RunDir(run_dir).finished_weights("zoo publish RUN_DIR")
    with exclusive(_index_folder(index_path), "--index"):
        return _publish_run(run_dir, name, index_path, method=method, family=family, group=group, teachers=teachers,
                            suite=suite, figures=figures, reproduce=reproduce, license=license, split=split,
                            throughput=throughput, log=log)


def _index_folder(index_path) -> Path:
    """The folder the index file at ``index_path`` lives (or will live) in, links followed."""
    return Path(os.path.realpath(index_path)).parent


def _publish_run(run_dir, name: str, index_path, *, method: str = "", family: str = "", group: str = "",
                 teachers: Optional[Dict[str, str]] = None, suite: Optional[SuiteRef] = None,
                 figures: Optional[Dict[str, Optional[float]]] = None, reproduce: Optional[str] = None,
                 license: str = "Apache-2.0", split: str = "test", throughput: bool = True,
                 log: Callable[[str], None] = lambda m: None) -> ZooEntry:
    """:func:`publish_run`, the index folder held by the caller."""
    import timm
    from .._version import __version__
    from .evaluate import evaluate_folder
    check_name(name, "zoo", "model name")
    run = RunDir(run_dir)
    run.finished_weights("zoo publish RUN_DIR")
    config = run.read_config()
    arch, args, ncls = run.model_spec()
    index = open_index(Path(index_path))
    lineage = _lineage(config, dict(teachers or {}), index)
    model = model_lib.freeze(model_lib.create(arch, ncls, args, str(run.path), where="zoo publish"))
    input_size = list(model_lib.data_spec(model, (config.get("data") or {}).get("img_size")).img_size)
    input_size = [int(getattr(model, "in_chans", 3) or 3)] + input_size

    folder = _index_folder(index_path)
    folder.mkdir(parents=True, exist_ok=True)
    root_rel = os.path.relpath(folder, folder.parent)
    staged = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=str(folder)))
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(staged, 0o777 & ~mask)   # mkdtemp makes 0700: the folder follows the umask like any other
    try:
        from timm.models._hub import save_config_for_hf
        save_config_for_hf(model, staged / HF_CONFIG_FILE, model_args=dict(args) or None)   # a Path (timm 1.0.26)
        atomic_save_safetensors(model.state_dict(), staged / _weights_name(), {"format": "pt"})
        atomic_write_text(staged / CONFIG_FILE, yaml.safe_dump(_config_with_zoo_teachers(config, lineage),
                                                               sort_keys=False))
        measured = evaluate_folder(staged, config, split)
        recorded = run.final().get(f"{split}_top1")
        if recorded is not None and abs(float(recorded) - measured["top1"]) > 1e-9:
            log(f"zoo publish: {name}: exported weights score {measured['top1']:.4f} on {split}, the run recorded "
                f"{float(recorded):.4f} (the index holds the exported weights' figure)")
        figs = dict(figures) if figures else _measure(model, input_size, throughput)
        entry = ZooEntry(
            name=name, architecture=arch, model_args=dict(args), num_classes=int(ncls or model.num_classes),
            method=method, family=family, group=group, teachers=lineage,
            dataset=str((config.get("data") or {}).get("name", "")), split=split, input_size=input_size,
            top1=round(measured["top1"], 6), suite=suite, params_m=figs.get("params_m"), macs_m=figs.get("macs_m"),
            img_per_s=figs.get("img_per_s"), config=CONFIG_FILE,
            reproduce=reproduce or f"vitkd train {root_rel}/{name}/{CONFIG_FILE} --out runs/zoo/{name}",
            curve=_curve(run), license=license, date=datetime.date.today().isoformat(), vitkd=__version__,
            timm=timm.__version__)
        atomic_write_text(staged / CARD_FILE, card_text(entry, root_rel))
        names = (HF_CONFIG_FILE, _weights_name(), CONFIG_FILE, CARD_FILE)
        entry.files = [ZooFile(n, f"{name}/{n}", sha256_of(staged / n), (staged / n).stat().st_size) for n in names]
        _replace_folder(staged, path_under(folder, name, key="zoo publish --name"))
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    index.put(entry)
    save_index(index)
    log(f"published {name}: {entry.split} top-1 {entry.top1:.2f}, {entry.total_size() / 1e6:.2f} MB -> {folder / name}")
    return entry


# ---------------------------------------------------------------------- a comparison suite
def _read_csv(path: Path, key: str) -> Dict[str, Dict[str, str]]:
    if not path.is_file():
        raise ZooError(f"zoo publish-suite: {path} not found (run the suite first)")
    with open(path, newline="") as f:
        return {r[key]: r for r in csv.DictReader(f)}


def _num(v: Optional[str]) -> Optional[float]:
    return float(v) if v not in (None, "") else None


TEACHER_FIGURES = ("test_top1", "val_top1", "params_m", "macs_m", "img_per_s")
ROW_FIGURES = ("seeds", "test_top1_mean", "test_top1_std", "test_top1_all", "val_top1_mean", "params_m", "macs_m",
               "img_per_s")


def suite_selection(results_dir: Path) -> List[Dict[str, Any]]:
    """What a suite publishes, declared in advance and chosen on nothing measured on test: every teacher its
    rows read (those in its ``teachers.csv``); the
    no-distillation baselines (the suite's ``baseline_family``), one per student size; and, for every other
    method family (reference families left out), the row with the best mean *validation* top-1 (ties: the
    first in the suite's order). Each: {kind, key (teacher or row), family, group, teachers, csv row}.

    Rows trained by a pipeline of stages (m2mKD) are left out: no single run config reproduces them.
    A suite that shares another's runs (``shares:``, an extension of the main suite) publishes only the rows
    and teachers the other's results do not hold: those are the other's own runs, published with it."""
    from ..compare.suite import load_suite
    results_dir = Path(results_dir)
    suite, _ = load_suite(results_dir / "suite.yaml")
    rows = _read_csv(results_dir / "results.csv", "row")
    trows = _read_csv(results_dir / "teachers.csv", "teacher") if suite.teachers else {}
    if suite.shares:
        home = results_dir.parent / suite.shares
        if not (home / "results.csv").is_file():
            raise ZooError(f"zoo publish-suite: {results_dir} shares the runs of suite '{suite.shares}', whose "
                           f"results ({home / 'results.csv'}) are not there")
        rows = {k: v for k, v in rows.items() if k not in _read_csv(home / "results.csv", "row")}
        theirs = _read_csv(home / "teachers.csv", "teacher") if (home / "teachers.csv").is_file() else {}
        trows = {k: v for k, v in trows.items() if k not in theirs}
        suite.rows = [r for r in suite.rows if r.name in rows]
    out = []
    for tname, t in suite.teachers.items():
        if tname not in trows:   # a teacher no row of this suite reads was not trained by it
            continue
        out.append({"kind": "teacher", "key": tname, "family": t.family, "group": "teacher",
                    "teachers": dict(t.distill_from), "csv": trows[tname]})
    spec = {r.name: r for r in suite.rows}
    missing = [r for r in spec if r not in rows]
    if missing:
        raise ZooError(f"zoo publish-suite: row {missing[0]} missing from {results_dir / 'results.csv'}")
    best: Dict[str, str] = {}
    for r in suite.rows:
        if r.pipeline:   # reproduced by its pipeline of stages, not by one run config: not published
            continue
        if r.family == suite.baseline_family:
            out.append({"kind": "row", "key": r.name, "family": r.family, "group": r.group,
                        "teachers": dict(r.teachers), "csv": rows[r.name]})
        elif r.family not in suite.reference_families:
            if r.family not in best or float(rows[r.name]["val_top1_mean"]) > float(rows[best[r.family]]["val_top1_mean"]):
                best[r.family] = r.name
    for fam, rname in best.items():
        r = spec[rname]
        out.append({"kind": "row", "key": rname, "family": fam, "group": r.group, "teachers": dict(r.teachers),
                    "csv": rows[rname]})
    return out


def _zoo_name(suite_name: str, kind: str, key: str) -> str:
    return check_name(f"{suite_name}-teacher-{key}" if kind == "teacher" else f"{suite_name}-{key}", "zoo",
                      "model name")


def publish_suite(results_dir, index_path, cache: Optional[str] = None, seed: int = 0,
                  max_mb: float = DEFAULT_MAX_MB, suite_file: Optional[str] = None,
                  log: Callable[[str], None] = print) -> List[ZooEntry]:
    """Publish :func:`suite_selection` of the suite whose results are in ``results_dir``, from its run cache
    (default ``runs/compare/<suite>``): seed ``seed`` of each row, the teachers (seed 0). Refuses, before writing
    anything, when the weights would pass ``max_mb`` (fp32 parameter bytes)."""
    from ..compare.plan import row_folder
    from ..compare.suite import load_suite
    results_dir = Path(results_dir)
    suite, _ = load_suite(results_dir / "suite.yaml")
    cache_dir = Path(cache) if cache else Path("runs") / "compare" / suite.home
    picks = suite_selection(results_dir)
    spec = {r.name: r for r in suite.rows}
    own = {p["key"] for p in picks if p["kind"] == "teacher"}   # the others: published with the suite it shares
    runs = []
    for p in picks:
        run = cache_dir / "teachers" / p["key"] if p["kind"] == "teacher" else row_folder(cache_dir, spec[p["key"]], seed)
        RunDir(run).finished_weights(f"zoo publish-suite ({p['kind']} {p['key']})")
        runs.append(run)
    est = sum(4e6 * float(p["csv"]["params_m"]) for p in picks) / 1e6
    if est > max_mb:
        raise ZooError(f"zoo publish-suite: the selection's weights are about {est:.1f} MB, over --max-mb {max_mb:g}")
    with exclusive(_index_folder(index_path), "--index"):
        return _publish_selection(suite, picks, runs, own, results_dir, index_path, seed, max_mb, suite_file, log)


def _publish_selection(suite, picks, runs, own, results_dir: Path, index_path, seed: int, max_mb: float,
                       suite_file: Optional[str], log: Callable[[str], None]) -> List[ZooEntry]:
    """:func:`publish_suite`'s entries, the index folder held by the caller."""
    project = Path(index_path).resolve().parent.parent
    rel = os.path.relpath(results_dir.resolve(), project)
    suite_cmd = f"vitkd compare {suite_file or (results_dir / 'suite.yaml')}"
    entries = []
    for p, run in zip(picks, runs):
        name = _zoo_name(suite.name, p["kind"], p["key"])
        lineage = {k: _zoo_name(suite.name if t in own else suite.home, "teacher", t) for k, t in p["teachers"].items()}
        if p["kind"] == "teacher":
            ref = SuiteRef(results=f"{rel}/teachers.csv", key="teacher", row=p["key"], seed=0,
                           figures={k: p["csv"][k] for k in TEACHER_FIGURES if k in p["csv"]})
        else:
            ref = SuiteRef(results=f"{rel}/results.csv", key="row", row=p["key"], seed=seed,
                           figures={k: p["csv"][k] for k in ROW_FIGURES if k in p["csv"]})
        figs = {k: _num(p["csv"].get(k)) for k in ("params_m", "macs_m", "img_per_s")}
        entries.append(_publish_run(run, name, index_path, method=p["key"], family=p["family"], group=p["group"],
                                    teachers=lineage, suite=ref, figures=figs, log=log))
        log(f"  (the suite itself: {suite_cmd}; run folder {run})")
    total = sum(e.total_size() for e in load_index(str(index_path)).models) / 1e6
    log(f"zoo: {len(entries)} entries published; the index's files total {total:.1f} MB")
    if total > max_mb:
        log(f"zoo: warning: the zoo's files total {total:.1f} MB, over {max_mb:g} MB")
    return entries


def figures_line(s: SuiteRef) -> str:
    """The card's line of cited figures."""
    return "| " + " | ".join(str(v) for v in s.figures.values()) + " |"


def check_card_figures(entry: ZooEntry, project_root: Path, card: Optional[str] = None) -> None:
    """The entry's cited suite figures equal the row of the committed results table it cites, and the card
    (its text, when given) shows them (ConfigError if not)."""
    s = entry.suite
    if s is None:
        return
    if card is not None and figures_line(s) not in card.splitlines():
        raise ConfigError(f"zoo: the card of {entry.name} does not show its cited figures {figures_line(s)}")
    table = _read_csv(project_root / s.results, s.key)
    if s.row not in table:
        raise ConfigError(f"zoo: {entry.name} cites {s.key} {s.row} of {s.results}, which has no such row")
    for col, v in s.figures.items():
        if table[s.row].get(col) != v:
            raise ConfigError(f"zoo: {entry.name}: {col} = {v!r}, but {s.results} row {s.row} says "
                              f"{table[s.row].get(col)!r}")
