"""The house rules, asserted over the package's source: the import graph and where things may happen."""
import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "vitkd"
STDLIB_AND_THIRD = {"torch", "timm", "__future__", "typing", "math", "copy", "functools", "itertools",
                    "dataclasses", "collections"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path):
    """Every module a file imports (relative imports resolved), with the imported names."""
    tree = ast.parse(path.read_text())
    me = _module_name(path).split(".")
    package = me if path.name == "__init__.py" else me[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            for a in node.names:
                out.append((mod, a.name))
                out.append((f"{mod}.{a.name}", None))   # `from . import archs` imports the module too
    return out


MODULES = {_module_name(p): p for p in PKG.rglob("*.py")}
LOSS_FAMILIES = {m for m in MODULES if m.startswith("vitkd.losses.") and m.split(".")[-1] not in ("base",)}


def _imported(prefix: str):
    for name, path in MODULES.items():
        if name == prefix or name.startswith(prefix + "."):
            for mod, what in _imports(path):
                yield name, mod, what


def test_the_engine_imports_no_loss_family():
    bad = [(n, m) for n, m, _ in _imported("vitkd.engine") if m in LOSS_FAMILIES]
    assert not bad


def test_losses_import_neither_the_engine_nor_the_cli():
    bad = [(n, m) for n, m, _ in _imported("vitkd.losses") if m and m.startswith(("vitkd.engine", "vitkd.cli"))]
    assert not bad


def test_taps_import_no_loss():
    bad = [m for _, m, _ in _imported("vitkd.taps") if m and m.startswith("vitkd.losses")]
    assert not bad


def test_nothing_but_main_imports_the_cli():
    bad = [(n, m) for n, m, _ in _imported("vitkd") if m == "vitkd.cli" and n != "vitkd.__main__"]
    assert not bad


def test_archs_need_only_torch_and_timm():
    bad = [(n, m) for n, m, _ in _imported("vitkd.archs")
           if m and m.split(".")[0] not in STDLIB_AND_THIRD and not m.startswith("vitkd.archs")]
    assert not bad


def test_compare_and_profile_do_not_import_each_others_internals():
    bad = [(n, m, w) for n, m, w in _imported("vitkd.compare") if m == "vitkd.profile" and w and w.startswith("_")]
    bad += [(n, m) for n, m, _ in _imported("vitkd.profile") if m and m.startswith("vitkd.compare")]
    assert not bad


def _code_lines(path: Path):
    """Source lines outside docstrings and comments."""
    tree = ast.parse(path.read_text())
    doc_lines = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            d = node.body[0] if node.body else None
            if isinstance(d, ast.Expr) and isinstance(getattr(d, "value", None), ast.Constant) and \
                    isinstance(d.value.value, str):
                doc_lines |= set(range(d.lineno, d.end_lineno + 1))
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if i not in doc_lines:
            yield i, line.split("#", 1)[0]


def _grep(pattern: str, paths):
    rx = re.compile(pattern)
    return [f"{p.relative_to(PKG.parent)}:{i}" for p in paths for i, line in _code_lines(p) if rx.search(line)]


def test_timm_create_model_is_called_only_in_models():
    assert not _grep(r"timm\.create_model\(", [p for p in MODULES.values() if p.name != "models.py"])


def test_no_module_outside_the_connectors_derives_a_grid_from_a_token_count():
    paths = [p for p in MODULES.values() if p.name != "connectors.py" and "compare" not in p.parts]
    assert not _grep(r"isqrt|\*\* ?0\.5|sqrt\((n|N|num_|tokens|len)", paths)


def test_no_loss_slices_prefix_tokens_by_index():
    losses = [p for n, p in MODULES.items() if n.startswith("vitkd.losses")]
    # x[:, 1:], x[:, p:], a[:, :, p:, p:], x[:, :n] on token axes
    assert not _grep(r"\[:, *(:, *)?(\d+|[a-z_]\w*)?:(\d+|[a-z_]\w*)?[,\]]", losses)


@pytest.mark.parametrize("name", ["config.yaml", "run.yaml", "metrics.json", "metrics.csv", "checkpoint.pt",
                                  "model.safetensors", "model_ema.safetensors", "stamp.json", "predictions_"])
def test_run_folder_file_names_appear_only_in_the_run_folder_module(name):
    in_a_string = r"""["'][^"']*""" + re.escape(name)
    assert not _grep(in_a_string, [p for p in MODULES.values() if p.name != "rundir.py"])


def test_the_training_loop_is_split_into_readable_steps():
    """engine/loop: restore, one epoch, evaluation and finish are functions of their own, none of them long."""
    tree = ast.parse((PKG / "engine" / "loop.py").read_text())
    lengths = {n.name: n.end_lineno - n.lineno + 1 for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    assert {"_restore_or_start", "_train_epoch", "_evaluate_epoch", "_finish"} <= set(lengths)
    assert not {k: v for k, v in lengths.items() if v > 60}
