"""The package's import graph: one-way boundaries between the library and its clients.

Read from the source with ``ast`` (every ``import``, at module level or inside a function),
so the test sees lazy imports too and needs nothing installed.

- The library is ``nnd/*.py``. ``nnd/experiments/`` and ``nnd/bench/`` are clients: they
  import the library, and no library module imports them.
- The library's module-level imports form no cycle.
- The arrows the reorganisation removed stay removed (likelihood ↛ data, data ↛ losses,
  no module reaches for another's private name).
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "nnd"
CLIENTS = ("nnd.experiments", "nnd.bench")
MAX_LINES = 600


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path, module_level_only: bool = False) -> list[tuple[str, str | None]]:
    """(module, name) pairs that ``path`` imports from nnd: ``from nnd.x import y`` gives
    ("nnd.x", "y"), and ``from nnd import x`` gives ("nnd.x", None)."""
    tree = ast.parse(path.read_text(), str(path))
    nodes = tree.body if module_level_only else ast.walk(tree)
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names if alias.name.startswith("nnd")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nnd"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                is_module = (PACKAGE.parent / (candidate.replace(".", "/") + ".py")).is_file() or (
                    PACKAGE.parent / candidate.replace(".", "/")).is_dir()
                found.append((candidate, None) if is_module else (node.module, alias.name))
    return found


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
LIBRARY = {name: path for name, path in MODULES.items() if not name.startswith(CLIENTS)}


def test_the_graph_is_read():
    # Guards the test itself: the library is found and its known arrows are seen.
    assert {"nnd.losses", "nnd.walks", "nnd.train", "nnd.ziggurat"} <= set(LIBRARY)
    assert ("nnd.ziggurat", None) in _imports(LIBRARY["nnd.increments"])
    assert any(m.startswith("nnd.experiments") for name in MODULES
               for m, _ in _imports(MODULES[name]) if name.startswith("nnd.experiments"))


@pytest.mark.parametrize("name", sorted(LIBRARY))
def test_no_library_module_imports_an_experiment_or_a_benchmark(name):
    bad = sorted({m for m, _ in _imports(LIBRARY[name]) if m.startswith(CLIENTS)})
    assert not bad, f"{name} imports {bad}; experiments and benchmarks are clients of the library"


def test_library_module_imports_have_no_cycle():
    graph = {name: {m for m, _ in _imports(path, module_level_only=True) if m in LIBRARY and m != name}
             for name, path in LIBRARY.items()}
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def _reaches(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        name = todo.pop()
        for m, _ in _imports(MODULES[name]):
            if m in MODULES and m not in seen:
                seen.add(m)
                todo.append(m)
    return seen


def test_removed_arrows_stay_removed():
    assert "nnd.data" not in {m for m, _ in _imports(LIBRARY["nnd.likelihood"])}
    assert "nnd.losses" not in _reaches("nnd.data"), "the data pipeline must not depend on the loss"


def _private_uses(path: pathlib.Path) -> list[str]:
    """``from nnd.x import _y`` and ``x._y`` where x is a module of nnd bound by an import."""
    tree = ast.parse(path.read_text(), str(path))
    bound = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nnd"):
            for alias in node.names:
                if f"{node.module}.{alias.name}" in MODULES:
                    bound[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in MODULES and alias.asname:
                    bound[alias.asname] = alias.name
    uses = [f"{m}.{n}" for m, n in _imports(path) if n and n.startswith("_")]
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in bound and node.attr.startswith("_")
                and not node.attr.startswith("__")):
            uses.append(f"{bound[node.value.id]}.{node.attr}")
    return sorted(set(uses))


def test_private_use_is_seen():
    # Guards the check below: a module reaching into another's private name is caught.
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        probe = pathlib.Path(tmp) / "probe.py"
        probe.write_text("from nnd import fid\nfrom nnd.losses import _closed_form\nfid._private(1)\n")
        assert _private_uses(probe) == ["nnd.fid._private", "nnd.losses._closed_form"]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_uses_another_modules_private_name(name):
    private = _private_uses(MODULES[name])
    assert not private, f"{name} uses private names {private}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_exceeds_600_lines(name):
    lines = MODULES[name].read_text().count("\n")
    assert lines <= MAX_LINES, f"{MODULES[name].relative_to(ROOT)} has {lines} lines (at most {MAX_LINES})"
