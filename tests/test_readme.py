"""The README's promises about the code: its module table names every module, and only those."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _table_paths():
    text = (ROOT / "README.md").read_text()
    section = text.split("## How it is built", 1)[1].split("\n## ", 1)[0]
    return {m.group(1) for m in re.finditer(r"^\| `(vitkd/[^`]*)` \|", section, re.M)}


def test_module_table_lists_every_module_and_only_existing_ones():
    pkg = ROOT / "vitkd"
    modules = {p.relative_to(ROOT).as_posix() for p in pkg.rglob("*.py")
               if p.name not in ("__init__.py", "__main__.py")}
    packages = {p.parent.relative_to(ROOT).as_posix() + "/" for p in pkg.rglob("__init__.py") if p.parent != pkg}
    listed = _table_paths()
    assert modules | packages == listed, (sorted((modules | packages) - listed), sorted(listed - (modules | packages)))


def test_readme_names_the_test_and_demo_commands_that_ci_runs():
    text = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test " in text and "make demo" in text
    assert "make test\n" in ci and "make test-oldest" in ci
    pins = dict(line.split("==") for line in (ROOT / "constraints" / "oldest.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    for name in ("torch", "torchvision", "timm", "numpy"):
        assert f"{name} {pins[name]}" in text, name
        assert f'"{name}>={pins[name]}' in (ROOT / "pyproject.toml").read_text(), name
