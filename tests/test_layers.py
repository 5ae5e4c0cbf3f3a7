"""The layers, asserted over the package's source: the file-level import graph (read from the AST, imports inside
functions included) has no cycle, every import points to a lower floor, and no private name crosses a module.

An edge is what an import statement names: ``from .x import y`` is an edge to ``x`` (to ``x.y`` where that is a
module), ``import a.b`` to ``a.b``. A package's ``__init__`` is a file of its own. The package root is the
composition root: it wires what registers itself (archs in timm, teacher sources, run kinds) and sits on top.
"""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "vitkd"

# Floors, bottom first. A module's floor is that of the longest name here that it is, or lies under. An import
# points to a lower floor; inside one package (same parent folder, or package and its own modules) it may also
# point to the same floor.
FLOORS = [
    ("foundations: stdlib, torch and timm only", [
        "vitkd._version", "vitkd.io", "vitkd.config", "vitkd.dist", "vitkd.connectors", "vitkd.archs",
        "vitkd.losses.functional", "vitkd.profile.macs", "vitkd.compare.stats", "vitkd.methods.datafree.losses"]),
    ("files, taps, formats", [
        "vitkd.download", "vitkd.rundir", "vitkd.taps", "vitkd.evaluate", "vitkd.datasets.idx",
        "vitkd.methods.datafree.store", "vitkd.methods.stored_logits.format", "vitkd.profile.throughput",
        "vitkd.methods.m2m.config", "vitkd.commands"]),
    ("datasets, the zoo's index, loss terms", [
        "vitkd.datasets", "vitkd.datasets.fashion_mnist", "vitkd.zoo.index", "vitkd.zoo.fetch", "vitkd.losses"]),
    ("the data pipeline, loss terms that methods register", ["vitkd.data", "vitkd.methods.m2m.loss"]),
    ("models", ["vitkd.models", "vitkd.methods.datafree.config", "vitkd.methods.datafree.inversion"]),
    ("teacher sources, profiles", ["vitkd.teachers", "vitkd.profile", "vitkd.methods.stored_logits.fingerprint"]),
    ("the distiller, the sources and writers of methods", [
        "vitkd.distiller", "vitkd.zoo", "vitkd.zoo.load", "vitkd.zoo.evaluate", "vitkd.methods.stored_logits.replay",
        "vitkd.methods.stored_logits.save", "vitkd.methods.datafree.run", "vitkd.methods.online.common",
        "vitkd.methods.online.peer", "vitkd.methods.online.ema"]),
    ("the engine: one run, run kinds, stages", ["vitkd.engine"]),
    ("methods beyond a loss term", ["vitkd.methods.chain.stages", "vitkd.methods.m2m.stage"]),
    ("pipelines of methods, publishing", ["vitkd.methods.m2m.pipeline", "vitkd.zoo.publish"]),
    ("the comparison: the job kinds' registry, the built-in kinds, the loop over kinds", ["vitkd.compare"]),
    ("the suite job kinds of methods", [
        "vitkd.methods.datafree.suite", "vitkd.methods.stored_logits.suite", "vitkd.methods.m2m.suite",
        "vitkd.methods.chain.suite"]),
    ("the commands of a package or method", ["vitkd.zoo.commands", "vitkd.datasets.commands",
                                             "vitkd.methods.stored_logits.commands", "vitkd.methods.datafree.commands"]),
    ("the methods' registrations (each method package's __init__)", ["vitkd.methods"]),
    ("the command line", ["vitkd.cli"]),
    ("the composition root", ["vitkd", "vitkd.__main__"]),
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}
PACKAGES = {_module_name(p) for p in PKG.rglob("__init__.py")}


def _edges(name: str, path: Path):
    """(imported module, line, the names it takes from it) for every import of a vitkd module in the file."""
    me = name.split(".")
    package = me if name in PACKAGES else me[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "vitkd":
                    yield a.name, node.lineno, ()
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "vitkd":
                continue
            names = []
            for a in node.names:
                if f"{mod}.{a.name}" in MODULES:
                    yield f"{mod}.{a.name}", node.lineno, ()
                else:
                    names.append(a.name)
            if names:
                yield mod, node.lineno, tuple(names)


EDGES = {name: [e for e in _edges(name, path) if e[0] != name] for name, path in MODULES.items()}


def floor_of(module: str) -> int:
    best, floor = -1, None
    for i, (_, names) in enumerate(FLOORS):
        for n in names:
            if (module == n or module.startswith(n + ".")) and len(n) > best:
                best, floor = len(n), i
    assert floor is not None, f"{module}: no floor written for it in tests/test_layers.py"
    return floor


def _package(module: str) -> str:
    return module if module in PACKAGES else module.rsplit(".", 1)[0]


def test_every_module_has_a_floor_and_every_named_module_exists():
    for m in MODULES:
        floor_of(m)
    named = [n for _, names in FLOORS for n in names]
    assert len(named) == len(set(named))
    assert not [n for n in named if n not in MODULES], "a floor names a module that is not there"


def test_every_import_points_to_a_lower_floor():
    bad = []
    for m, edges in EDGES.items():
        for target, line, _ in edges:
            assert target in MODULES, f"{MODULES[m].relative_to(PKG.parent)}:{line} imports {target}, not a module"
            same_package = (_package(m) == _package(target) or _package(m) == target
                            or target.rsplit(".", 1)[0] == _package(m))   # a package's own modules and subpackages
            if floor_of(target) > floor_of(m) or (floor_of(target) == floor_of(m) and not same_package):
                bad.append(f"{MODULES[m].relative_to(PKG.parent)}:{line}: {m} (floor {floor_of(m)}, "
                           f"{FLOORS[floor_of(m)][0]}) imports {target} (floor {floor_of(target)}, "
                           f"{FLOORS[floor_of(target)][0]})")
    assert not bad, "imports that do not point down:\n" + "\n".join(bad)


def test_no_import_cycle():
    graph = {m: sorted({t for t, _, _ in edges}) for m, edges in EDGES.items()}
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for t in graph[m]:
            if state.get(t) == "open":
                cycle = stack[stack.index(t):] + [t]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = "done"

    for m in graph:
        if m not in state:
            visit(m)


def test_no_private_name_is_imported_across_modules():
    """What another module uses has a public name: a private name stays in its own module."""
    bad = []
    for m, edges in EDGES.items():
        for target, line, names in edges:
            for n in names:
                if n.startswith("_") and not n.startswith("__"):
                    bad.append(f"{MODULES[m].relative_to(PKG.parent)}:{line}: {m} imports {target}.{n}")
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


def test_the_engine_imports_no_method_and_names_none():
    """The engine trains whatever distiller it is given: it imports no method (a run kind registers its distiller
    builder in :mod:`vitkd.distiller`) and reads no method's config section."""
    methods = ("vitkd.methods", "vitkd.zoo", "vitkd.compare")
    bad = [(m, t) for m, edges in EDGES.items() if m.startswith("vitkd.engine") for t, _, _ in edges
           if t.startswith(methods)]
    assert not bad
    assert not [m for m, p in MODULES.items() if m.startswith("vitkd.engine") and "cfg.m2m" in p.read_text()]
