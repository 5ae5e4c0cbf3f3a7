"""Methods that are more than a loss live in one folder each (``vitkd/methods/<name>/``) and reach the rest of vitkd
only through registries: run kinds (``vitkd train``), teacher origins, distiller builders, config sections, train
splits, suite job kinds, commands. Asserted here over the source and the registries:

* no file outside a method's folder names the method (its identifiers and string literals, docstrings aside), nor
  reads its config keys; the one line of ``vitkd/methods/__init__.py`` that imports the method packages (their
  registration) excepted;
* every key a method declares is in a registry, every registry entry a method adds is there after ``import vitkd``;
* a new method with a pipeline needs no file outside its folder: a stand-in method made here of registrations alone
  trains through ``vitkd train``, plans suite jobs through ``vitkd compare``'s planner and parses its config section.
"""
import ast
import io
import json
import re
import tokenize
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest
import yaml

import vitkd  # noqa: F401  (every registration)

PKG = Path(vitkd.__file__).resolve().parent

# what names each method: identifiers or string literals containing these (case-insensitive)
METHOD_NAMES = {
    "chain": [r"chain"],
    "m2m": [r"m2m", r"incubat"],
    "stored_logits": [r"stored_logits", r"logits_store"],
    "datafree": [r"synth"],
    "online": [r"(?<![a-z])peer"],
}
# the config keys (and file keys, commands) each method declares: a string literal equal to one is the method's
METHOD_KEYS = {
    "chain": {"chain", "count_generations"},
    "m2m": {"m2m", "m2mkd", "pipeline"},
    "stored_logits": {"logits", "stored_logits"},
    "datafree": {"synthetic", "synthesize"},
    "online": {"peer", "ema"},
}
# string literals outside a method's folder that equal one of its keys and mean something else
OTHER_MEANING = {
    ("vitkd/engine/loop.py", "logits"): "the predictions file's tensor of a model's logits",
    ("vitkd/rundir.py", "logits"): "the predictions file's tensor of a model's logits",
    ("vitkd/engine/loop.py", "ema"): "the checkpoint's model EMA (train.ema_decay), an engine feature",
    ("vitkd/engine/checkpoint.py", "ema"): "the checkpoint's model EMA (train.ema_decay), an engine feature",
}
REGISTRATION = "vitkd/methods/__init__.py"   # imports the method packages: each registers what it adds


def _docstring_lines(tree) -> set:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            b = node.body
            if b and isinstance(b[0], ast.Expr) and isinstance(b[0].value, ast.Constant) \
                    and isinstance(b[0].value.value, str):
                out.update(range(b[0].lineno, b[0].end_lineno + 1))
    return out


def _tokens():
    """(file relative to the repo, line, token text, is a string literal) of every identifier and string literal of
    the package's code (docstrings and comments are prose: left out)."""
    for f in sorted(PKG.rglob("*.py")):
        text = f.read_text()
        doc = _docstring_lines(ast.parse(text))
        rel = f.relative_to(PKG.parent).as_posix()
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type in (tokenize.NAME, tokenize.STRING) and tok.start[0] not in doc:
                yield rel, tok.start[0], tok.string, tok.type == tokenize.STRING


def _outside(rel: str, method: str) -> bool:
    return not rel.startswith(f"vitkd/methods/{method}/")


def test_every_method_has_its_folder():
    assert {p.name for p in (PKG / "methods").iterdir() if (p / "__init__.py").is_file()} >= set(METHOD_NAMES)


def test_no_file_outside_a_methods_folder_names_it():
    bad = []
    for rel, line, text, _ in _tokens():
        for method, patterns in METHOD_NAMES.items():
            if _outside(rel, method) and rel != REGISTRATION and any(re.search(p, text, re.I) for p in patterns):
                bad.append(f"{rel}:{line}: names {method} ({text[:60]})")
    assert not bad, "methods named outside their folders:\n" + "\n".join(bad)


def test_no_file_outside_a_methods_folder_reads_its_config_keys():
    bad = []
    for rel, line, text, is_string in _tokens():
        if not is_string:
            continue
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):   # f-strings: their literal parts
            value = None
        for method, keys in METHOD_KEYS.items():
            if _outside(rel, method) and value in keys and (rel, value) not in OTHER_MEANING:
                bad.append(f"{rel}:{line}: {method}'s key {value!r}")
    assert not bad, "a method's keys read outside its folder:\n" + "\n".join(bad)


def test_the_other_meanings_are_still_there():
    """The allow-list stays true: each entry still names a literal of that file."""
    for (rel, key), _ in OTHER_MEANING.items():
        assert repr(key) in (PKG.parent / rel).read_text().replace('"', "'")


def test_every_method_key_is_declared_in_a_registry():
    from vitkd.commands import COMMANDS
    from vitkd.config import SECTIONS
    from vitkd.engine.kinds import RUN_KINDS
    declared = {k for keys in SECTIONS.values() for k in keys} | set(RUN_KINDS) | set(COMMANDS)
    for method, keys in METHOD_KEYS.items():
        assert keys <= declared, f"{method}: {keys - declared} declared nowhere"


def test_the_registries_hold_what_the_methods_add():
    from vitkd.commands import COMMANDS
    from vitkd.compare.jobs import KINDS, kinds_in_order
    from vitkd.config import SECTIONS, DataCfg, RunCfg, TeacherCfg
    from vitkd.compare.suite import RowSpec, SuiteCfg
    from vitkd.data import TRAIN_SPLITS
    from vitkd.distiller import BUILDERS
    from vitkd.engine.kinds import RUN_KINDS
    from vitkd.losses import LOSSES
    from vitkd.teachers import ORIGINS
    assert {k: v.name for k, v in RUN_KINDS.items()} == {"chain": "chain", "m2mkd": "m2mkd pipeline"}
    assert not RUN_KINDS["m2mkd"].takes_resume and RUN_KINDS["chain"].takes_resume
    assert set(ORIGINS) == {"zoo", "logits", "peer", "ema"} and set(BUILDERS) == {"m2m"} and set(TRAIN_SPLITS) == {"synthetic"}
    assert "m2mkd" in LOSSES and {"logits", "synthesize"} <= set(COMMANDS)
    assert set(SECTIONS[RunCfg]) == {"m2m"} and set(SECTIONS[DataCfg]) == {"synthetic"}
    assert set(SECTIONS[TeacherCfg]) == {"logits", "peer", "ema"}
    assert set(SECTIONS[SuiteCfg]) == {"synthetic", "stored_logits"}
    assert set(SECTIONS[RowSpec]) == {"synthetic", "logits", "pipeline", "count_generations"}
    # one registry of suite job kinds, planned in this order: teachers, restored teachers, rows, what rewrites rows
    assert [k.name for k in kinds_in_order()] == ["teacher", "zoo_teacher", "row", "synth", "logits", "pipeline", "generations",
                                                  "tune"]
    assert all(k.run is not None and k.is_done is not None for k in KINDS.values())


def test_declared_sections_dump_like_fields_so_run_folders_keep_their_digest():
    """A declared key is dumped where a field was (its default when unset), so the config a run folder holds, and
    the digest its reuse rule compares, are what they were when the key was a field of the core schema."""
    from vitkd.config import parse_config, section, to_dict
    from vitkd.rundir import config_digest
    raw = {"model": {"name": "vit_digits_tiny"}, "distill": {"teachers": {"t": {"checkpoint": "x"}}}}
    cfg = parse_config(raw, paths=False)
    d = to_dict(cfg)
    assert d["m2m"] is None and d["data"]["synthetic"] is None and d["distill"]["teachers"]["t"]["logits"] is None
    assert "sections" not in d and "sections" not in d["data"]
    assert to_dict(parse_config(d, paths=False)) == d
    with_m2m = parse_config({**raw, "m2m": {"depths": [1, 1], "module": 0, "meta": "t"}}, paths=False)
    assert section(with_m2m, "m2m").depths == [1, 1]
    assert config_digest(to_dict(with_m2m)) != config_digest(d)
    assert config_digest(d) == config_digest({k: v for k, v in d.items() if k != "m2m"})   # a default: no change


def test_an_unknown_key_lists_the_declared_ones_and_a_declared_one_is_checked_like_a_field():
    from vitkd.config import ConfigError, parse_config
    with pytest.raises(ConfigError, match=r"unknown config key 'm2n'.*did you mean 'm2m'"):
        parse_config({"m2n": {}}, paths=False)
    with pytest.raises(ConfigError, match=r"data\.synthetic: expected a string"):
        parse_config({"data": {"synthetic": 3}}, paths=False)
    with pytest.raises(ConfigError, match=r"data\.synthetic: file or folder not found"):
        parse_config({"data": {"synthetic": "/nonexistent/set"}})
    with pytest.raises(ConfigError, match=r"unknown config key 'sections'"):
        parse_config({"sections": {}}, paths=False)


# ------------------------------------------------------------------------------- a new method: registrations only
@dataclass
class _EchoCfg:
    note: str
    stages: int = 1


@pytest.fixture
def echo_method():
    """A stand-in method with a pipeline, made of registrations alone (what its folder's ``__init__`` would hold):
    a config section, a run kind for its files, a suite job kind that plans one job per row that names it."""
    from vitkd.compare.jobs import KINDS, Job, register_kind
    from vitkd.compare.suite import RowSpec
    from vitkd.config import SECTIONS, RunCfg, register_section, section
    from vitkd.engine.kinds import RUN_KINDS, register_run_kind

    def train(path, out, overrides=(), overwrite=False, log=print):
        raw = yaml.safe_load(Path(path).read_text())["echo_stages"]
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "done.json").write_text(json.dumps(raw))
        return {"stages": raw["n"]}

    def plan(p):
        for r in p.suite.rows:
            if section(r, "echo") is not None:
                p.jobs.append(Job(f"echo/{r.name}", {"note": section(r, "echo")}, p.cache / "echo" / r.name,
                                  kind="echo", row=r.name, role="row", stage="only", phase="echo"))

    register_section(RunCfg, "echo", Optional[_EchoCfg])
    register_section(RowSpec, "echo", Optional[str])
    register_run_kind("echo pipeline", "echo_stages", train, one_process=True, takes_resume=False)
    register_kind("echo", run=lambda job: None, is_done=lambda job: False, plan=plan, order=60,
                  trains_row=lambda r: section(r, "echo") is not None)
    try:
        yield
    finally:
        SECTIONS[RunCfg].pop("echo")
        SECTIONS[RowSpec].pop("echo")
        RUN_KINDS.pop("echo_stages")
        KINDS.pop("echo")


def test_a_new_method_with_a_pipeline_needs_only_registrations(echo_method, tmp_path, capsys):
    from vitkd.cli import main
    from vitkd.compare.jobs import SuitePlan
    from vitkd.compare.plan import plan_suite
    from vitkd.compare.suite import load_suite
    from vitkd.config import parse_config, section, to_dict
    # its config section parses, dumps and is read back, checked like a field
    cfg = parse_config({"echo": {"note": "hi", "stages": 2}}, paths=False)
    assert section(cfg, "echo") == _EchoCfg("hi", 2) and to_dict(cfg)["echo"] == {"note": "hi", "stages": 2}
    # vitkd train dispatches its files to its run kind (and applies the kind's declared limits)
    f = tmp_path / "echo.yaml"
    f.write_text(yaml.safe_dump({"echo_stages": {"n": 3}}))
    assert main(["train", str(f), "--out", str(tmp_path / "out")]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {"out": str(tmp_path / "out"), "stages": 3}
    assert main(["train", str(f), "--out", str(tmp_path / "out"), "--resume"]) == 2
    assert "a echo pipeline reuses finished stages" in capsys.readouterr().err
    # vitkd compare's planner asks its job kind for the rows that name it
    (tmp_path / "student.yaml").write_text(yaml.safe_dump({"model": {"name": "vit_digits_tiny"}}))
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump({
        "name": "s", "student": "student.yaml", "seeds": [0],
        "rows": [{"name": "no_kd", "family": "none"}, {"name": "e", "family": "echo", "echo": "note"}]}))
    suite, base = load_suite(tmp_path / "suite.yaml")
    p = SuitePlan(suite, base, tmp_path / "cache")
    plan_suite(p)
    assert [(j.key, j.kind) for j in p.with_role("row")] == [("rows/no_kd/s0", "row"), ("echo/e", "echo")]
