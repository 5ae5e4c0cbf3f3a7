"""Publishing: a finished run folder becomes a zoo entry (a folder in timm's Hugging Face Hub layout, its index
entry and its card). A comparison suite's declared selection becomes a set of entries through
:mod:`vitkd.compare.publish`.

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
from ..config import ConfigError, check_name, path_under, raw_teachers
from ..io import atomic_save_safetensors, atomic_write_text, sha256_file
from ..rundir import RunDir, exclusive
from ..teachers import made_in_run
from .index import (COLUMNS, ZooEntry, ZooError, ZooFile, ZooIndex, SuiteRef, load_index, markdown_table,
                    row_of, save_index)

__all__ = ["publish_run", "export_run", "halve_entry", "index_folder", "weights_name", "card_text", "read_results_csv",
           "CONFIG_FILE", "CARD_FILE", "DEFAULT_MAX_MB", "check_card_figures"]

CONFIG_FILE = "train.yaml"
CARD_FILE = "README.md"
HF_CONFIG_FILE = "config.json"
DEFAULT_MAX_MB = 50.0


def weights_name() -> str:
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
             # the card is one of the entry's files: it cannot state their size (the index and `vitkd zoo list` do)
             markdown_table([entry], [c for c in COLUMNS if c != "MB"]).rstrip(), ""]
    if entry.teachers:
        lines += ["## Lineage", ""] + [f"- teacher `{k}`: zoo entry `{v}`" for k, v in entry.teachers.items()] + [""]
    lines += ["## Use", "", "```python", "import vitkd.zoo", f"model = vitkd.zoo.create_model({entry.name!r})",
              "# or, from this folder: import vitkd, timm; timm.create_model('local-dir:FOLDER', pretrained=True)", "```", "",
              f"`vitkd zoo eval {entry.name}` evaluates it on {entry.dataset}/{entry.split}.", ""]
    if entry.weights_dtype != "float32":
        lines += [f"The weights are stored in {entry.weights_dtype} (half the bytes) and load into float32 "
                  f"parameters; on {entry.dataset}/{entry.split} they score exactly what the float32 weights of the "
                  f"run scored (checked when published). Training again gives those float32 weights.", ""]
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
    for key, t in raw_teachers(config).items():
        if key in teachers:
            t.update(zoo=teachers[key], checkpoint=None, model=None, args={})
    return config


def _lineage(config: dict, given: Dict[str, str], index: ZooIndex) -> Dict[str, str]:
    """{teacher key: zoo name} for every teacher of the run that comes from outside it (not a peer or the EMA the
    run trains itself): named in ``given``, or already a zoo teacher."""
    out = {}
    for key, t in raw_teachers(config).items():
        if made_in_run(t):
            continue
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


def _save_weights(model, folder: Path, dtype: str) -> None:
    """The model's state in timm's safetensors file, its floating tensors in ``dtype``."""
    import torch
    cast = getattr(torch, dtype)
    state = {k: v.to(cast) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    atomic_save_safetensors(state, folder / weights_name(), {"format": "pt"})


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


def _finish_entry(entry: ZooEntry, staged: Path, final: Path, index: ZooIndex, root_rel: str, names) -> None:
    """Write the entry's card into the staged folder, hash the staged files ``names`` into the entry, swap the
    folder in at ``final`` by renames and save the index with the entry."""
    atomic_write_text(staged / CARD_FILE, card_text(entry, root_rel))
    entry.files = [ZooFile(n, f"{entry.name}/{n}", sha256_file(staged / n), (staged / n).stat().st_size)
                   for n in names]
    _replace_folder(staged, final)
    index.put(entry)
    save_index(index)


def publish_run(run_dir, name: str, index_path, *, method: str = "", family: str = "", group: str = "",
                teachers: Optional[Dict[str, str]] = None, suite: Optional[SuiteRef] = None,
                figures: Optional[Dict[str, Optional[float]]] = None, reproduce: Optional[str] = None,
                license: str = "Apache-2.0", split: str = "test", throughput: bool = True, half: bool = False,
                log: Callable[[str], None] = lambda m: None) -> ZooEntry:
    """Export the student of the finished run ``run_dir`` as zoo entry ``name`` beside the index at
    ``index_path`` (its folder ``<index folder>/<name>/``), evaluate the exported folder through ``local-dir:``
    on ``split``, and add (or replace) its entry. ``figures``: params_m / macs_m / img_per_s already measured
    (a suite's), else measured here (img/s only with ``throughput``). One process writes an index folder (the
    index and its entries) at a time (:func:`vitkd.rundir.exclusive`)."""
    check_name(name, "zoo", "model name")
    RunDir(run_dir).finished_weights("zoo publish RUN_DIR")
    with exclusive(index_folder(index_path), "--index"):
        return export_run(run_dir, name, index_path, method=method, family=family, group=group, teachers=teachers,
                            suite=suite, figures=figures, reproduce=reproduce, license=license, split=split,
                            throughput=throughput, half=half, log=log)


def index_folder(index_path) -> Path:
    """The folder the index file at ``index_path`` lives (or will live) in, links followed."""
    return Path(os.path.realpath(index_path)).parent


def export_run(run_dir, name: str, index_path, *, method: str = "", family: str = "", group: str = "",
                 teachers: Optional[Dict[str, str]] = None, suite: Optional[SuiteRef] = None,
                 figures: Optional[Dict[str, Optional[float]]] = None, reproduce: Optional[str] = None,
                 license: str = "Apache-2.0", split: str = "test", throughput: bool = True, half: bool = False,
                 log: Callable[[str], None] = lambda m: None) -> ZooEntry:
    """:func:`publish_run`, the index folder held by the caller (:func:`vitkd.rundir.exclusive` of
    :func:`index_folder`). ``half``: store the weights in float16 when they score exactly the exported float32
    weights' top-1 on ``split`` (else float32, said in the log)."""
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

    folder = index_folder(index_path)
    folder.mkdir(parents=True, exist_ok=True)
    root_rel = os.path.relpath(folder, folder.parent)
    staged = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=str(folder)))
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(staged, 0o777 & ~mask)   # mkdtemp makes 0700: the folder follows the umask like any other
    try:
        from timm.models._hub import save_config_for_hf
        save_config_for_hf(model, staged / HF_CONFIG_FILE, model_args=dict(args) or None)   # a Path (timm 1.0.26)
        atomic_write_text(staged / CONFIG_FILE, yaml.safe_dump(_config_with_zoo_teachers(config, lineage),
                                                               sort_keys=False))
        dtype = "float32"
        _save_weights(model, staged, dtype)
        measured = evaluate_folder(staged, config, split)
        if half:   # float16 only where the evaluation does not move
            _save_weights(model, staged, "float16")
            halved = evaluate_folder(staged, config, split)
            if abs(halved["top1"] - measured["top1"]) <= 1e-9:
                dtype, measured = "float16", halved
            else:
                log(f"zoo publish: {name}: float16 weights score {halved['top1']:.4f} on {split}, float32 "
                    f"{measured['top1']:.4f}: stored in float32")
                _save_weights(model, staged, dtype)
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
            curve=_curve(run), weights_dtype=dtype, license=license, date=datetime.date.today().isoformat(),
            vitkd=__version__,
            timm=timm.__version__)
        _finish_entry(entry, staged, path_under(folder, name, key="zoo publish --name"), index, root_rel,
                      (HF_CONFIG_FILE, weights_name(), CONFIG_FILE, CARD_FILE))
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    log(f"published {name}: {entry.split} top-1 {entry.top1:.2f}, {entry.total_size() / 1e6:.2f} MB -> {folder / name}")
    return entry


def halve_entry(name: str, index_path, log: Callable[[str], None] = lambda m: None) -> ZooEntry:
    """Store the published float32 entry ``name`` in float16 where that leaves its top-1 on its split exactly as
    the index records it (the float32 weights are evaluated first and must score that figure); else leave it
    as it is and say so. The folder is staged and swapped in by renames, the index rewritten after it. An entry
    other suites read as their teacher changes those suites' inputs: halve leaves only."""
    import torch
    from safetensors.torch import load_file
    from .evaluate import evaluate_folder
    with exclusive(index_folder(index_path), "--index"):
        index = open_index(Path(index_path))
        entry = index.get(name)
        if entry.weights_dtype != "float32":
            raise ZooError(f"zoo halve: {name}: its weights are {entry.weights_dtype} already")
        folder = index_folder(index_path)
        current = path_under(folder, name, key="zoo halve NAME")
        config = yaml.safe_load((current / CONFIG_FILE).read_text())
        measured = evaluate_folder(current, config, entry.split)
        if abs(measured["top1"] - entry.top1) > 5e-6:   # the index rounds to 6 decimals
            raise ZooError(f"zoo halve: {name}: its float32 weights score {measured['top1']:.4f} on "
                           f"{entry.dataset}/{entry.split} here, the index records {entry.top1:.4f}")
        staged = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=str(folder)))
        try:
            for f in entry.files:
                shutil.copy2(current / f.name, staged / f.name)
            state = load_file(str(staged / weights_name()))
            state = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in state.items()}
            atomic_save_safetensors(state, staged / weights_name(), {"format": "pt"})
            halved = evaluate_folder(staged, config, entry.split)
            if abs(halved["top1"] - measured["top1"]) > 1e-9:
                log(f"zoo halve: {name}: float16 weights score {halved['top1']:.4f} on {entry.split}, float32 "
                    f"{measured['top1']:.4f}: left in float32")
                shutil.rmtree(staged, ignore_errors=True)
                return entry
            entry.weights_dtype = "float16"
            _finish_entry(entry, staged, current, index, os.path.relpath(folder, folder.parent),
                          [f.name for f in entry.files])
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise
    log(f"halved {name}: {entry.split} top-1 {entry.top1:.2f} unchanged, {entry.total_size() / 1e6:.2f} MB")
    return entry


# ---------------------------------------------------------------------- cited figures
def read_results_csv(path: Path, key: str) -> Dict[str, Dict[str, str]]:
    """The rows of a suite's results table (``results.csv``, ``teachers.csv``) by their ``key`` column."""
    if not path.is_file():
        raise ZooError(f"zoo publish-suite: {path} not found (run the suite first)")
    with open(path, newline="") as f:
        return {r[key]: r for r in csv.DictReader(f)}


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
    table = read_results_csv(project_root / s.results, s.key)
    if s.row not in table:
        raise ConfigError(f"zoo: {entry.name} cites {s.key} {s.row} of {s.results}, which has no such row")
    for col, v in s.figures.items():
        if table[s.row].get(col) != v:
            raise ConfigError(f"zoo: {entry.name}: {col} = {v!r}, but {s.results} row {s.row} says "
                              f"{table[s.row].get(col)!r}")
