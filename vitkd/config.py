"""Typed experiment configs read from YAML and checked before any work starts.

Every error is a :class:`ConfigError` with one line naming the offending key, value or file;
the CLI turns it into exit code 2. Unknown keys get a close-match suggestion.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import yaml

__all__ = ["Section", "SECTIONS", "register_section", "sections_field", "section", "key_value", "has_key", "path_keys", "schema_keys", "ConfigError", "DataError", "vitkd_home", "PRECISIONS", "step_bf16", "ModelCfg", "DataCfg", "TrainCfg", "TeacherCfg", "DistillCfg", "RunCfg",
           "load_config", "parse_config", "check_paths", "config_paths", "apply_overrides", "apply_mapping", "to_dict",
           "build_dataclass", "read_yaml", "load_yaml", "yaml_dump", "check_name", "path_under", "check_seed",
           "MAX_SEED"]


class ConfigError(ValueError):
    """A bad config: the message is one line naming the key, value or file."""


class DataError(ConfigError):
    """An input file that cannot be read, or that is not what it should be (named in the message)."""


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, but numbers like ``1e-3`` are floats (YAML 1.2), not strings (YAML 1.1), and a key
    written twice in one mapping is an error (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":   # ``<<: *base`` merges are overrides by design
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:   # an unhashable key: the base class reports it
                    continue
                if duplicate:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key '{key}'",
                                                            key_node.start_mark)
        return super().construct_mapping(node, deep)


_FLOAT = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X)
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


class _Dumper(yaml.SafeDumper):
    """PyYAML's safe dumper, quoting the strings :class:`_Loader` would read as numbers (``'1e5'``), so that what
    it writes reads back equal through :func:`yaml_load`."""


_Dumper.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def yaml_load(text):
    """Parse YAML text with :class:`_Loader` (the one YAML parser of configs and ``--set`` values)."""
    return yaml.load(text, Loader=_Loader)


def yaml_dump(data, **kw) -> str:
    """``data`` as YAML text that :func:`yaml_load` reads back equal (``yaml.safe_dump``'s options)."""
    return yaml.dump(data, Dumper=_Dumper, **kw)


def _path_field(default=None, **kw):
    return field(default=default, metadata={"path": True, **kw})


def sections_field():
    """The field of a schema class that holds the keys methods declare on it (:func:`register_section`)."""
    return field(default_factory=dict, metadata={"sections": True})


@dataclass(frozen=True)
class Section:
    """A config key that a method declares on a schema class (``owner``), rather than the core schema: its type
    (checked like any field), its default, and whether it names a file or folder (checked to exist)."""
    owner: type
    key: str
    type: Any
    default: Any = None
    default_factory: Optional[Any] = None
    path: bool = False

    def default_value(self):
        return self.default_factory() if self.default_factory is not None else self.default


# schema class -> {key: Section}: filled by the methods that own the keys (vitkd.methods.*), read by the parser,
# to_dict, the path checks and the run folder's reuse digest
SECTIONS: Dict[type, Dict[str, Section]] = {}


def register_section(owner: type, key: str, type_: Any, default: Any = None, default_factory=None,
                     path: bool = False) -> None:
    """Declare ``key`` on the schema class ``owner`` (e.g. a run config's top-level section, a data key, a
    teacher's source): parsed, dumped and checked like a field; read with :func:`section`."""
    if has_key(owner, key):
        raise ValueError(f"register_section: {owner.__name__}.{key} is already a key")
    SECTIONS.setdefault(owner, {})[key] = Section(owner, key, type_, default, default_factory, path)


def section(cfg, key: str):
    """The value of the declared key ``key`` of a config node (its default when not set)."""
    spec = SECTIONS.get(type(cfg), {}).get(key)
    if spec is None:
        raise KeyError(f"{type(cfg).__name__}.{key}: not a declared section")
    store = cfg.sections
    if key not in store:
        store[key] = spec.default_value()
    return store[key]


def key_value(cfg, key: str):
    """The value of ``key`` of a config node, a field or a declared section alike."""
    if key in SECTIONS.get(type(cfg), {}):
        return section(cfg, key)
    return getattr(cfg, key)


def path_keys(cls: type) -> list:
    """The keys of a schema class that name a file or folder (fields and declared sections)."""
    return [key for key, _, _, path in schema_keys(cls) if path]


def has_key(cls: type, key: str) -> bool:
    """Whether the schema class ``cls`` has ``key``, a field or a declared section."""
    return any(k == key for k, *_ in schema_keys(cls))


def schema_keys(cls):
    """``(key, type, default, path)`` of every key of a schema class: its fields, then its declared sections."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("sections"):
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
        yield f.name, hints[f.name], default, bool(f.metadata.get("path"))
    for key, spec in SECTIONS.get(cls, {}).items():
        yield key, spec.type, spec.default_value(), spec.path


@dataclass
class ModelCfg:
    name: str = "vit_tiny_patch16_224"
    args: Dict[str, Any] = field(default_factory=dict)   # keyword arguments for timm.create_model
    checkpoint: Optional[str] = _path_field()             # initial weights: run folder or weights file


PRECISIONS = ("fp32", "bf16")   # train.precision; never chosen from the CPU: a config says it


def step_bf16(precision: str, amp: bool, device_type: str) -> bool:
    """Whether a training step runs under bf16 autocast: ``train.precision: bf16`` on any device, or ``train.amp``
    on CUDA."""
    return precision == "bf16" or (amp and device_type == "cuda")


# the datasets vitkd.data registers (a test keeps the two equal); the ones read only from data.root
DATASET_NAMES = ("digits", "fashion_mnist", "cifar10", "cifar100", "imagefolder")
DATASETS_WITH_ROOT = ("cifar10", "cifar100", "imagefolder")


@dataclass
class DataCfg:
    name: str = "digits"                 # digits | fashion_mnist | cifar10 | cifar100 | imagefolder
    root: Optional[str] = _path_field()  # local folder (never downloaded): cifar / imagefolder; fashion_mnist's files
    img_size: Optional[int] = None       # default: the model's own input size
    train_subset: Optional[int] = None   # use only the first N of a seeded permutation of the train split
    val_size: int = 200                  # held out from train for cifar / imagefolder (digits, fashion_mnist: fixed)
    batch_size: int = 64
    eval_batch_size: int = 256
    num_workers: int = 0
    augment: str = "light"               # none | light (seeded affine jitter) | timm (timm create_transform)
    auto_augment: Optional[str] = None   # timm policy string, e.g. rand-m9-mstd0.5-inc1 (augment: timm)
    re_prob: float = 0.0                 # random erasing (augment: timm)
    hflip: float = 0.0                   # horizontal flip probability (augment: timm or light)
    repeated_aug: int = 1                # repeated augmentation: each image appears this many times per epoch
    aug_strength: float = 1.0            # augment: light: scales its rotation, scale and shift ranges (0 = none)
    sections: Dict[str, Any] = sections_field()   # keys methods declare (register_section), e.g. a train-split source

    def __post_init__(self):
        _choice("data.name", self.name, DATASET_NAMES)
        _choice("data.augment", self.augment, ("none", "light", "timm"))
        if self.name in DATASETS_WITH_ROOT and self.root is None:
            raise ConfigError(f"data.root: dataset '{self.name}' is read from a local folder; set data.root")
        _positive("data.batch_size", self.batch_size)
        _positive("data.eval_batch_size", self.eval_batch_size)
        _positive("data.repeated_aug", self.repeated_aug)
        if self.img_size is not None:
            _positive("data.img_size", self.img_size)
        if self.train_subset is not None:
            _positive("data.train_subset", self.train_subset)
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers: must be >= 0, got {self.num_workers}")
        if not 0 <= self.re_prob <= 1:
            raise ConfigError(f"data.re_prob: must be in [0, 1], got {self.re_prob}")
        if not 0 <= self.hflip <= 1:
            raise ConfigError(f"data.hflip: must be in [0, 1], got {self.hflip}")
        if not 0 <= self.aug_strength <= 4:
            raise ConfigError(f"data.aug_strength: must be in [0, 4], got {self.aug_strength}")
        if self.auto_augment is not None:
            _check_auto_augment(self.auto_augment)


@dataclass
class TrainCfg:
    epochs: int = 30
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 2.0
    min_lr: float = 1e-5
    label_smoothing: float = 0.1
    mixup: float = 0.0                   # mixup alpha (0 = off)
    cutmix: float = 0.0                  # cutmix alpha (0 = off)
    mixup_prob: float = 1.0
    ema_decay: Optional[float] = None    # model EMA (timm ModelEmaV3) when set
    clip_grad: Optional[float] = None
    device: str = "auto"                 # auto | cpu | cuda
    amp: bool = True                     # bf16 autocast on CUDA (CPU runs fp32)
    precision: str = "fp32"              # fp32 | bf16: the step's precision (student, teachers, loss) on any device
    threads: Optional[int] = None        # torch CPU threads
    progress: bool = True
    eval_every: int = 1                  # evaluate val/test every N epochs (the last epoch always)
    checkpoint_every: Optional[int] = None   # also checkpoint every N steps (besides every epoch)
    sync_bn: bool = False                # several processes: the student's BatchNorm as SyncBatchNorm (CUDA)

    def __post_init__(self):
        _positive("train.epochs", self.epochs)
        _positive("train.eval_every", self.eval_every)
        _positive("train.lr", self.lr)
        _choice("train.device", self.device, ("auto", "cpu", "cuda"))
        _choice("train.precision", self.precision, PRECISIONS)
        for k in ("weight_decay", "warmup_epochs", "min_lr", "label_smoothing", "mixup", "cutmix"):
            if getattr(self, k) < 0:
                raise ConfigError(f"train.{k}: must be >= 0, got {getattr(self, k)}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"train.label_smoothing: must be in [0, 1), got {self.label_smoothing}")
        if self.clip_grad is not None and not self.clip_grad > 0:
            raise ConfigError(f"train.clip_grad: must be > 0 (or null for none), got {self.clip_grad}")
        if not 0 <= self.mixup_prob <= 1:
            raise ConfigError(f"train.mixup_prob: must be in [0, 1], got {self.mixup_prob}")
        if self.threads is not None:
            _positive("train.threads", self.threads)
        if self.checkpoint_every is not None:
            _positive("train.checkpoint_every", self.checkpoint_every)
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ConfigError(f"train.ema_decay: must be in (0, 1), got {self.ema_decay}")


@dataclass
class TeacherCfg:
    model: Optional[str] = None                # timm name; default: the model of the checkpoint's run
    checkpoint: Optional[str] = _path_field()  # run folder (vitkd train output) or weights file
    args: Dict[str, Any] = field(default_factory=dict)
    bf16: bool = False                         # run the frozen teacher under bf16 autocast (CPU and CUDA)
    zoo: Optional[str] = None                  # a published zoo entry (downloaded, verified) instead of a checkpoint
    sections: Dict[str, Any] = sections_field()   # keys methods declare (register_section): other teacher sources


@dataclass
class DistillCfg:
    teachers: Dict[str, TeacherCfg] = field(default_factory=dict)
    terms: List[Dict[str, Any]] = field(default_factory=list)   # checked against the loss registry at build

    def __post_init__(self):
        for key in self.teachers:   # a teacher's key may name a folder (e.g. a store of its outputs)
            check_name(key, f"distill.teachers.{key}", "teacher key")


@dataclass
class RunCfg:
    seed: int = 0
    model: ModelCfg = field(default_factory=ModelCfg)
    data: DataCfg = field(default_factory=DataCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    distill: Optional[DistillCfg] = None
    name: Optional[str] = None
    sections: Dict[str, Any] = sections_field()   # top-level sections methods declare (register_section)

    def __post_init__(self):
        check_seed(self.seed, "seed")
        if self.name is not None:   # the default run folder is runs/<name>
            check_name(self.name, "name")


def _check_auto_augment(policy: str) -> None:
    """timm's policy strings: rand-..., augmix-..., trivial..., original / v0 (AutoAugment)."""
    from timm.data.auto_augment import augment_and_mix_transform, auto_augment_transform, rand_augment_transform
    hparams = dict(translate_const=10, img_mean=(124, 116, 104))
    builders = {"rand": rand_augment_transform, "augmix": augment_and_mix_transform}
    try:
        builders.get(policy.split("-")[0], auto_augment_transform)(policy, hparams)
    except Exception as e:   # timm raises assertion/key/value errors for unknown policies
        raise ConfigError(f"data.auto_augment: '{policy}' is not a timm augmentation policy "
                          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'unknown'})") from None


def _choice(key, value, choices):
    if value not in choices:
        hint = difflib.get_close_matches(str(value), choices, n=1)
        extra = f" (did you mean '{hint[0]}'?)" if hint else ""
        raise ConfigError(f"{key}: '{value}' is not one of {', '.join(choices)}{extra}")


def _positive(key, value):
    if value <= 0:
        raise ConfigError(f"{key}: must be > 0, got {value}")


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
MAX_SEED = 2 ** 32 - 1   # numpy's seeds are 32-bit


def check_name(value, key: str, what: str = "name") -> str:
    """The one check of a name that becomes a file or folder name (a suite, row, teacher, synthetic set, chain
    stage, run, zoo entry or zoo file): letters, digits, ``.``, ``_``, ``-``, starting with a letter or digit,
    at most 100 characters, no ``..``; so never a path separator, never absolute, never hidden."""
    if not isinstance(value, str) or not _NAME.fullmatch(value) or ".." in value:
        raise ConfigError(f"{key}: invalid {what} {value!r} (letters, digits, '.', '_', '-', starting with a letter "
                          f"or digit; no path separators or '..')")
    return value


def path_under(root: Union[str, Path], *names: str, key: str) -> Path:
    """``root / name / ...`` with every name checked by :func:`check_name`, and the result still inside ``root``
    once links are resolved: the one way a name becomes a path under a folder."""
    path = Path(root)
    for name in names:
        path = path / check_name(name, key)
    real_root, real = os.path.realpath(root), os.path.realpath(path)
    if os.path.commonpath([real_root, real]) != real_root:
        raise ConfigError(f"{key}: {path} leads outside {root} (to {real})")
    return path


def check_seed(value, key: str) -> int:
    """A seed: an integer in [0, 2**32 - 1] (what numpy, torch and python all accept)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise ConfigError(f"{key}: a seed is an integer in [0, {MAX_SEED}], got {value!r}")
    return value


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value, tp, key: str, base: Path, meta: dict):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Union:   # Optional[X]
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key, base, meta)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        return _build(tp, value, key, base)
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        vt = args[1] if args else Any
        return {k: _coerce(v, vt, f"{key}.{k}", base, {}) for k, v in value.items()}
    if origin in (list, List):
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        vt = args[0] if args else Any
        return [_coerce(v, vt, f"{key}[{i}]", base, {}) for i, v in enumerate(value)]
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {type(value).__name__} {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {type(value).__name__} {value!r}")
        if not math.isfinite(value):   # YAML's .inf / -.inf / .nan: refused like the strings 'inf' and 'nan'
            raise ConfigError(f"{key}: expected a finite number, got {value}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {type(value).__name__} {value!r}")
        if meta.get("path"):
            p = Path(os.path.expanduser(value))
            if not p.is_absolute():   # relative to the config file when it is there, else to the cwd
                p = (base / p) if (base / p).exists() else p
            return str(p)   # existence is checked after parsing (check_paths), in one place
        return value
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")


def _build(cls, data: dict, prefix: str, base: Path):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("sections")}
    declared = SECTIONS.get(cls, {})
    kwargs, sections = {}, {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k in declared:
            sections[k] = _coerce(v, declared[k].type, key, base, {"path": declared[k].path})
            continue
        if k not in fields:
            valid_keys = list(fields) + list(declared)
            hint = difflib.get_close_matches(str(k), valid_keys, n=1)
            extra = f" (did you mean '{hint[0]}'?)" if hint else ""
            valid = "" if extra else f" (valid keys: {', '.join(valid_keys)})"
            raise ConfigError(f"unknown config key '{key}'{extra}{valid}")
        kwargs[k] = _coerce(v, hints[k], key, base, dict(fields[k].metadata))
    missing = [f.name for f in fields.values() if f.name not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        key = f"{prefix}.{missing[0]}" if prefix else missing[0]
        raise ConfigError(f"{key}: missing (required)")
    if len(fields) < len(dataclasses.fields(cls)):   # a class that takes declared sections
        kwargs["sections"] = {k: sections.get(k, spec.default_value()) for k, spec in declared.items()}
    return cls(**kwargs)


def build_dataclass(cls, data: Optional[dict], prefix: str = "", base: Union[str, Path] = "."):
    """Validate a raw mapping into any config dataclass (one-line ConfigErrors naming ``prefix.key``)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(data).__name__}")
    return _build(cls, data, prefix, Path(base))


def parse_config(data: Optional[dict], base: Union[str, Path] = ".", paths: bool = True) -> RunCfg:
    """Validate a raw mapping into a :class:`RunCfg` (the schema: pure). Relative paths resolve against
    ``base`` first. ``paths``: then check that every file or folder it names exists (:func:`check_paths`);
    planners that validate configs whose teachers are not trained yet pass ``paths=False``."""
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config: expected a mapping at the top level, got {type(data).__name__}")
    cfg = _build(RunCfg, data, "", Path(base))
    if paths:
        check_paths(cfg)
    return cfg


def config_paths(node, prefix: str = ""):
    """``(dotted key, value)`` of every path a config names (fields and declared sections marked as paths, set)."""
    if dataclasses.is_dataclass(node):
        for f in dataclasses.fields(node):
            if f.metadata.get("sections"):
                continue
            key = f"{prefix}.{f.name}" if prefix else f.name
            value = getattr(node, f.name)
            if f.metadata.get("path") and value is not None:
                yield key, value
            yield from config_paths(value, key)
        for k, spec in SECTIONS.get(type(node), {}).items():
            key = f"{prefix}.{k}" if prefix else k
            value = section(node, k)
            if spec.path and value is not None:
                yield key, value
            yield from config_paths(value, key)
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from config_paths(v, f"{prefix}.{k}")


def check_paths(node, prefix: str = "") -> None:
    """Every path a config names (fields marked as paths) exists: the one place files are checked."""
    for key, value in config_paths(node, prefix):
        if not Path(value).exists():
            raise ConfigError(f"{key}: file or folder not found: {value}")


def apply_mapping(data: dict, values: Dict[str, Any]) -> dict:
    """Apply ``{dotted.key: value}`` overrides (a suite's or a chain stage's ``set:``) to a raw mapping."""
    import json
    return apply_overrides(data, [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in values.items()])


def apply_overrides(data: dict, overrides: List[str]) -> dict:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a raw mapping."""
    data = dict(data or {})
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item}: expected key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml_load(raw)
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            child = node.get(p)
            if child is None:
                child = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"--set {key}: '{p}' is not a mapping")
            node[p] = child = dict(child)
            node = child
        node[parts[-1]] = value
    return data


def read_config(path: Union[str, Path], base: Union[str, Path] = ".", *sets: Dict[str, Any],
                overrides: Sequence[str] = ()) -> dict:
    """The one reading of "a config file plus overrides": the raw mapping of the YAML file ``path`` (relative to
    ``base`` unless absolute; its ``base:`` files merged), then each ``{dotted.key: value}`` mapping of ``sets`` in
    order (a suite's or a stage's ``set:``), then the ``KEY=VALUE`` ``overrides`` (``--set``)."""
    p = Path(path)
    raw = read_yaml(p if p.is_absolute() else Path(base) / p)
    for s in sets:
        raw = apply_mapping(raw, s)
    return apply_overrides(raw, list(overrides)) if overrides else raw


def raw_teachers(raw: Optional[dict]) -> dict:
    """A raw config's ``distill.teachers`` mapping, {} when it has none: the mapping itself, so editing a teacher
    in it edits the config."""
    return ((raw or {}).get("distill") or {}).get("teachers") or {}


def _merge(base: dict, child: dict) -> dict:
    """``child`` over ``base``: mappings merge key by key, anything else is replaced."""
    out = dict(base)
    for k, v in child.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml(path: Union[str, Path], _reading: tuple = ()) -> dict:
    """A YAML mapping, with ``base:`` inheritance resolved: ``base: other.yaml`` (or a list of files, applied
    in order; paths relative to this file) is read first and this file's keys are merged over it."""
    data = _read_yaml_file(path)
    bases = data.pop("base", None) if isinstance(data, dict) else None
    if bases is None:
        return data
    path = Path(path).resolve()
    if path in _reading:
        raise ConfigError(f"{path}: base: inheritance cycle ({' -> '.join(p.name for p in _reading + (path,))})")
    merged: dict = {}
    for b in [bases] if isinstance(bases, str) else bases if isinstance(bases, list) else [None]:
        if not isinstance(b, str):
            raise ConfigError(f"{path}: base: expected a file name or a list of them, got {bases!r}")
        merged = _merge(merged, read_yaml(path.parent / b, _reading + (path,)))
    return _merge(merged, data)


def _read_yaml_file(path: Union[str, Path]) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    data = load_yaml(path)
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level, got {type(data).__name__}")
    return data or {}


def vitkd_home() -> Path:
    """vitkd's cache folder (zoo downloads, datasets): ``$VITKD_HOME``, default ``~/.cache/vitkd``; a path that
    exists but is not a folder is one line."""
    home = Path(os.environ.get("VITKD_HOME") or Path.home() / ".cache" / "vitkd")
    if home.exists() and not home.is_dir():
        raise ConfigError(f"VITKD_HOME: {home} is not a folder")
    return home


def load_yaml(path: Union[str, Path]) -> Any:
    """The YAML document in the file ``path``, parsed by :func:`yaml_load` (duplicate keys refused); a file that
    is not UTF-8 text or not valid YAML is one line naming the file (and the line)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or type(e).__name__})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte 0x{data[e.start]:02x} at offset {e.start})") from None
    try:
        return yaml_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or getattr(e, "reason", None) or str(e)
        raise ConfigError(f"{path}:{where} invalid YAML ({' '.join(str(problem).split())})") from None


def load_config(path: Union[str, Path], overrides: Optional[List[str]] = None) -> RunCfg:
    data = read_yaml(path)
    if not data:
        raise ConfigError(f"{path}: the config is empty (it would train a default 224-px ViT-Ti on digits)")
    raw = apply_overrides(data, overrides or [])
    return parse_config(raw, base=Path(path).parent)


def to_dict(cfg) -> Any:
    """A config node as plain data (what ``dataclasses.asdict`` gives), declared sections among its keys."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        out = {}
        for f in dataclasses.fields(cfg):
            if not f.metadata.get("sections"):
                out[f.name] = to_dict(getattr(cfg, f.name))
        for k in SECTIONS.get(type(cfg), {}):
            out[k] = to_dict(section(cfg, k))
        return out
    if isinstance(cfg, dict):
        return {to_dict(k): to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return type(cfg)(to_dict(v) for v in cfg)
    return copy.deepcopy(cfg)
