"""The zoo index (``models/zoo.yaml``): its schema, where it is found, where its files are, and listing.

An index is a YAML mapping ``{version: 1, base_url: ..., models: [entry, ...]}``; each entry is a
:class:`ZooEntry` (see ``models/zoo.yaml`` for the fields). Which index is read:

1. ``--manifest PATH`` (or the ``manifest`` argument), else ``VITKD_ZOO_MANIFEST``;
2. else the index shipped with the package (``vitkd/zoo/zoo.yaml``, in a clone a link to ``models/zoo.yaml``).

A file's URL is absolute (``https://...``, ``file:///...``) or relative to a base: ``VITKD_ZOO_URL``, else the
index's own ``base_url``, else the folder the index file really lives in (in a clone: the repository's
``models/`` folder). An installed package ships the index without weights: there, a relative URL needs
``VITKD_ZOO_URL`` and gives one line without it.
"""
from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional
from urllib.parse import urljoin, urlparse
from urllib.request import pathname2url

import yaml

from .. import download
from ..config import ConfigError, build_dataclass, check_name, load_yaml

__all__ = ["ZooError", "ZooFile", "ZooEntry", "ZooIndex", "load_index", "save_index", "check_url",
           "PACKAGED_INDEX", "INDEX_VERSION", "ALLOWED_SCHEMES", "WEIGHT_SUFFIXES", "PICKLE_SUFFIXES", "markdown_table",
           "update_readme"]

PACKAGED_INDEX = Path(__file__).with_name("zoo.yaml")
INDEX_VERSION = 1   # the newest index format this vitkd reads
ALLOWED_SCHEMES = download.ALLOWED_SCHEMES
WEIGHT_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".pkl", ".pickle", ".ckpt", ".tar", ".npz", ".npy", ".joblib")
FILE_SUFFIXES = WEIGHT_SUFFIXES + (".json", ".md", ".yaml", ".csv", ".png", ".txt")


class ZooError(ConfigError):
    """A zoo problem (bad index, name, URL, download or verification): one line, exit 2."""


def check_file_name(name: str) -> str:
    """A file of an entry: a plain name, weights in safetensors only; a pickle is refused by its name."""
    check_name(name, "zoo", "file name")
    suffix = Path(name).suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise ZooError(f"zoo: refusing {name}: pickle files ({suffix}) can run code when loaded; "
                       f"the zoo serves safetensors only")
    if suffix not in FILE_SUFFIXES:
        raise ZooError(f"zoo: file {name}: unsupported type {suffix or '(none)'} "
                       f"(allowed: {' '.join(FILE_SUFFIXES)})")
    return name


def check_url(url: str, source: str = "") -> str:
    """A URL vitkd may fetch (:func:`vitkd.download.check_url`: an allowed scheme, and for http(s) a host and a
    numeric port; ``source`` names where it came from, e.g. ``VITKD_ZOO_URL``), as a zoo error."""
    try:
        return download.check_url(url, source)
    except download.DownloadError as e:
        raise ZooError(f"zoo: {e}") from None


@dataclass
class ZooFile:
    name: str                      # file name in the model folder (config.json, model.safetensors, README.md, ...)
    url: str                       # absolute, or relative to the base (VITKD_ZOO_URL / base_url / the index's folder)
    sha256: str
    size: int


@dataclass
class SuiteRef:
    """The comparison-suite figures an entry cites: one row of a committed results table, copied verbatim."""
    results: str                   # the table (CSV), relative to the project root (the index folder's parent)
    key: str = "row"               # its key column
    row: str = ""                  # the row
    seed: int = 0                  # the seed whose weights are published (declared in advance)
    figures: Dict[str, str] = field(default_factory=dict)   # {column: value as written in the table}


@dataclass
class ZooEntry:
    name: str
    architecture: str                                        # timm name
    model_args: Dict[str, Any] = field(default_factory=dict)
    num_classes: int = 0
    method: str = ""                                         # the suite row (or teacher) that made it
    family: str = ""                                         # the suite's method family (none, logit, ..., teacher)
    group: str = ""                                          # baseline | homomorphic | heteromorphic | ...
    teachers: Dict[str, str] = field(default_factory=dict)   # lineage: {teacher key in the config: zoo name}
    dataset: str = ""
    split: str = "test"
    input_size: List[int] = field(default_factory=list)
    top1: Optional[float] = None                             # the published weights on dataset/split
    suite: Optional[SuiteRef] = None
    params_m: Optional[float] = None
    macs_m: Optional[float] = None
    img_per_s: Optional[float] = None
    config: str = ""                                         # the training config, a file of the entry
    reproduce: str = ""                                      # the exact command that trains these weights
    curve: List[List[float]] = field(default_factory=list)   # [[epoch, train_loss, val_top1], ...]
    files: List[ZooFile] = field(default_factory=list)
    weights_dtype: str = "float32"                           # as stored; loading makes float32 parameters
    license: str = "Apache-2.0"
    date: str = ""
    vitkd: str = ""
    timm: str = ""

    def file(self, name: str) -> ZooFile:
        for f in self.files:
            if f.name == name:
                return f
        raise ZooError(f"zoo: entry {self.name} has no file {name}")

    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ZooIndex:
    models: List[ZooEntry] = field(default_factory=list)
    version: int = 1
    base_url: Optional[str] = None
    path: Optional[Path] = None      # where it was read from (not part of the file)

    def get(self, name: str) -> ZooEntry:
        check_name(name, "zoo", "model name")
        for e in self.models:
            if e.name == name:
                return e
        import difflib
        hint = difflib.get_close_matches(name, [e.name for e in self.models], n=1)
        raise ZooError(f"zoo: no model named '{name}' in {self.path}" + (f" (did you mean '{hint[0]}'?)" if hint else ""))

    def select(self, dataset: Optional[str] = None, family: Optional[str] = None,
               method: Optional[str] = None) -> List[ZooEntry]:
        want = {"dataset": dataset, "family": family, "method": method}
        return [e for e in self.models if all(v is None or getattr(e, k) == v for k, v in want.items())]

    def put(self, entry: ZooEntry) -> None:
        """Add ``entry``, or replace the entry of the same name in place."""
        for i, e in enumerate(self.models):
            if e.name == entry.name:
                self.models[i] = entry
                return
        self.models.append(entry)

    # ------------------------------------------------------------------ locations
    def folder(self) -> Path:
        """The folder the index file really lives in (links followed)."""
        return Path(os.path.realpath(self.path)).parent

    def project_root(self) -> Path:
        """Relative paths of cited results resolve against the index folder's parent (the repository root)."""
        return self.folder().parent

    def base(self) -> str:
        """The base URL relative file URLs resolve against (ends with '/')."""
        env = os.environ.get("VITKD_ZOO_URL")
        base = env or self.base_url
        if not base:
            folder = self.folder()
            if folder == PACKAGED_INDEX.parent.resolve():
                raise ZooError("zoo: no base URL for the index's files: this install ships the index without "
                               "weights; set VITKD_ZOO_URL (or give --manifest with a base_url)")
            base = "file://" + pathname2url(str(folder))
        base = base if base.endswith("/") else base + "/"
        return check_url(base, "VITKD_ZOO_URL" if env else ("base_url" if self.base_url else ""))

    def url_of(self, f: ZooFile) -> str:
        if urlparse(f.url).scheme:
            return check_url(f.url)
        try:
            joined = urljoin(self.base(), f.url)
        except ValueError as e:
            raise ZooError(f"zoo: file {f.name}: malformed URL {f.url!r} ({e})") from None
        return check_url(joined)


def _entry_from(raw: Any, where: str) -> ZooEntry:
    entry = build_dataclass(ZooEntry, raw, where)
    check_name(entry.name, f"zoo: {where}.name", "model name")
    for key, t in entry.teachers.items():
        check_name(t, f"zoo: {where}.teachers.{key}", "teacher name")
    seen = set()
    for i, f in enumerate(entry.files):
        if isinstance(f, dict):
            f = entry.files[i] = build_dataclass(ZooFile, f, f"{where}.files.{i}")
        check_file_name(f.name)
        if f.name in seen:
            raise ZooError(f"{where}.files.{i}.name: duplicate file '{f.name}' (each file of an entry is listed once)")
        seen.add(f.name)
        if not re.fullmatch(r"[0-9a-f]{64}", str(f.sha256)):
            raise ZooError(f"{where}.files.{i}.sha256: expected 64 lowercase hex digits, got {f.sha256!r}")
        if int(f.size) < 0:
            raise ZooError(f"{where}.files.{i}.size: must be >= 0, got {f.size}")
        if urlparse(f.url).scheme:
            check_url(f.url)
    if entry.config and entry.config not in {f.name for f in entry.files}:   # read from the entry's cache folder
        raise ZooError(f"zoo: {where}.config: {entry.config!r} is not one of the entry's files "
                       f"({', '.join(f.name for f in entry.files) or 'none'})")
    if isinstance(entry.suite, dict):
        entry.suite = build_dataclass(SuiteRef, entry.suite, f"{where}.suite")
    return entry


def manifest_path(manifest: Optional[str] = None) -> Path:
    p = manifest or os.environ.get("VITKD_ZOO_MANIFEST")
    return Path(p) if p else PACKAGED_INDEX


def load_index(manifest: Optional[str] = None) -> ZooIndex:
    """The index (see the module docstring for which one), validated: one line naming the key on error."""
    path = manifest_path(manifest)
    if not path.is_file():
        raise ZooError(f"zoo: index not found: {path}")
    try:
        raw = load_yaml(path) or {}
    except ConfigError as e:
        raise ZooError(f"zoo: {e}") from None
    if not isinstance(raw, dict):
        raise ZooError(f"zoo: {path}: expected a mapping with 'models', got {type(raw).__name__}")
    version = raw.get("version", INDEX_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ZooError(f"zoo: {path}: version must be a positive integer, got {version!r}")
    if version > INDEX_VERSION:
        raise ZooError(f"zoo: {path}: index version {version} is newer than this vitkd reads ({INDEX_VERSION}): "
                       f"upgrade vitkd")
    models = raw.get("models") or []
    if not isinstance(models, list):
        raise ZooError(f"zoo: {path}: 'models' must be a list")
    entries = [_entry_from(m, f"{path.name}.models.{i}") for i, m in enumerate(models)]
    names = [e.name for e in entries]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ZooError(f"zoo: {path}: duplicate model name '{dup[0]}'")
    unknown = set(raw) - {"version", "base_url", "models"}
    if unknown:
        raise ZooError(f"zoo: {path}: unknown key '{sorted(unknown)[0]}' (known: version, base_url, models)")
    if raw.get("base_url"):
        check_url(str(raw["base_url"]), "base_url")
    return ZooIndex(entries, version, raw.get("base_url"), path)


HEADER = """\
# The vitkd model zoo index: one entry per published model (written by `vitkd zoo publish`; do not edit by hand).
# Each model is a folder in timm's Hugging Face Hub layout (config.json, model.safetensors, README.md card)
# plus its training config; `timm.create_model("local-dir:FOLDER", pretrained=True)` loads it (after `import vitkd`).
# Entry fields: name; architecture + model_args + num_classes (timm); method, family, group (as the comparison
# suite names them); teachers (lineage, by zoo name); dataset, split, input_size; top1 (the published weights
# on that split); suite (the results-table row cited, its figures copied verbatim, the seed published);
# params_m, macs_m, img_per_s; config + reproduce (the exact command); curve [[epoch, train_loss, val_top1]];
# files (url absolute or relative to VITKD_ZOO_URL / base_url / this folder, sha256, size); license, date,
# vitkd and timm versions.
"""


def save_index(index: ZooIndex, path: Optional[Path] = None) -> Path:
    from ..io import atomic_write_text
    path = Path(path or index.path)
    body = {"version": index.version, "base_url": index.base_url, "models": [e.to_dict() for e in index.models]}
    atomic_write_text(path, HEADER + yaml.safe_dump(body, sort_keys=False, width=120, default_flow_style=None))
    index.path = path
    return path


# ---------------------------------------------------------------------- listing
COLUMNS = ("name", "architecture", "method", "family", "group", "teachers", "dataset", "top1", "suite", "params_m",
           "macs_m", "img_per_s", "MB")


def row_of(e: ZooEntry) -> Dict[str, str]:
    """One table row of an entry (the same row in `vitkd zoo list`, the README and the card)."""
    s = e.suite
    fig = (s.figures if s else {}) or {}
    mean, std = fig.get("test_top1_mean", fig.get("test_top1")), fig.get("test_top1_std")
    suite = f"{float(mean):.2f} ± {float(std):.2f} (n={fig.get('seeds', '?')})" if mean and std else \
        (f"{float(mean):.2f}" if mean else "")
    return {"name": e.name, "architecture": e.architecture, "method": e.method, "family": e.family,
            "group": e.group, "teachers": ", ".join(e.teachers.values()), "dataset": f"{e.dataset}/{e.split}",
            "top1": "" if e.top1 is None else f"{e.top1:.2f}", "suite": suite,
            "params_m": "" if e.params_m is None else f"{e.params_m:.3f}",
            "macs_m": "" if e.macs_m is None else f"{e.macs_m:.2f}",
            "img_per_s": "" if e.img_per_s is None else f"{e.img_per_s:.0f}",
            "MB": f"{e.total_size() / 1e6:.2f}"}


HEADINGS = {"name": "model", "architecture": "timm architecture", "method": "method", "family": "family",
            "group": "group", "teachers": "teachers (zoo)", "dataset": "data/split", "top1": "top-1",
            "suite": "suite mean ± std", "params_m": "params (M)", "macs_m": "MACs (M)", "img_per_s": "img/s",
            "MB": "MB"}


def markdown_table(entries: List[ZooEntry], columns=COLUMNS) -> str:
    lines = ["| " + " | ".join(HEADINGS[c] for c in columns) + " |", "|" + "---|" * len(columns)]
    for e in entries:
        r = row_of(e)
        lines.append("| " + " | ".join(r[c] for c in columns) + " |")
    return "\n".join(lines) + "\n"


def text_table(entries: List[ZooEntry]) -> str:
    rows = [[HEADINGS[c] for c in COLUMNS]] + [[row_of(e)[c] for c in COLUMNS] for e in entries]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows) + "\n"


START, END = "<!-- zoo:start -->", "<!-- zoo:end -->"


def update_readme(readme: Path, entries: List[ZooEntry]) -> None:
    """Replace the block between the README's zoo markers with the table of ``entries``."""
    from ..io import atomic_write_text
    readme = Path(readme)
    text = readme.read_text() if readme.is_file() else ""
    if START not in text or END not in text:
        raise ZooError(f"zoo: {readme} has no '{START}' ... '{END}' block to fill")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    body = ("\n<!-- generated by `vitkd zoo list --readme README.md` from models/zoo.yaml; "
            "do not edit by hand -->\n" + (markdown_table(entries) if entries else
                                            "_No models published yet._\n"))
    atomic_write_text(readme, head + START + body + END + tail)
