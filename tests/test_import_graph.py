"""trapd's modules import each other without a cycle.

A cycle means two modules that cannot be understood (or loaded, or tested)
one without the other; it also hides an arrow pointing up the layers. Every
``import`` counts: at module level, inside a function (a late import is
still a dependency) and under ``if TYPE_CHECKING:`` (a type is a dependency
of the design even when it is not loaded at run time).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import trapd

PACKAGE = Path(trapd.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.AST, package: str) -> Iterator[tuple[str, tuple[str, ...]]]:
    """(module, names) of each import: `import a.b` is ("a.b", ()), `from a import b, c` ("a", (b, c))."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, ()
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target, tuple(a.name for a in node.names)


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(), str(path))
        targets = set()
        for module, names in _imports(tree, package):
            # `from trapd.rules import conditions` depends on the module trapd.rules.conditions
            # (and only through Python's import machinery on the package's __init__).
            submodules = [f"{module}.{n}" for n in names if f"{module}.{n}" in modules]
            for target in submodules or [module]:
                while target and target not in modules:  # a name inside a module: the module
                    target = target.rpartition(".")[0]
                if target and target != name:
                    targets.add(target)
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_walker_sees_every_import() -> None:
    graph = import_graph()
    assert "trapd.plugin" in graph["trapd.dispatch.dispatcher"]
    assert "trapd.service.daemon" in graph["trapd.commands.run"]  # imported inside a function
    assert "trapd.kea.client" in graph["trapd.plugin"]  # imported under TYPE_CHECKING
    assert "trapd.rules.conditions" in graph["trapd.rules.compiler"]  # from trapd.rules import conditions
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_in_trapd() -> None:
    assert cycles(import_graph()) == []
