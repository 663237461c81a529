"""trapd's modules import each other without a cycle.

A cycle means two modules that cannot be understood (or loaded, or tested)
one without the other; it also hides an arrow pointing up the layers. Every
``import`` counts, at module level or inside a function (a late import is
still a dependency), except those under ``if TYPE_CHECKING:``, which name a
type for mypy and are never executed.
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


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(node: ast.AST, package: str) -> Iterator[str]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:
                yield from _imports(other, package)
            continue
        if isinstance(child, ast.Import):
            yield from (a.name for a in child.names)
        elif isinstance(child, ast.ImportFrom):
            if child.level:
                base = package.split(".")[: len(package.split(".")) - child.level + 1]
                target = ".".join(base + ([child.module] if child.module else []))
            else:
                target = child.module or ""
            yield target
            # `from trapd.service import daemon` imports the module trapd.service.daemon.
            yield from (f"{target}.{a.name}" for a in child.names)
        else:
            yield from _imports(child, package)


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(), str(path))
        targets = set()
        for target in _imports(tree, package):
            # The module itself, or the package holding the imported name.
            while target and target not in modules:
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


def test_the_walker_sees_imports_and_skips_type_checking() -> None:
    graph = import_graph()
    assert "trapd.plugin" in graph["trapd.dispatch.dispatcher"]
    # Imported inside a function, still a dependency.
    assert "trapd.service.daemon" in graph["trapd.commands.run"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_in_trapd() -> None:
    # A package's __init__ importing its own submodules (re-exports) is not a cycle of the
    # design; a submodule importing its package's __init__ back is, so only that edge is dropped.
    graph = import_graph()
    for name, targets in graph.items():
        graph[name] = {t for t in targets if not (name.startswith(t + ".") and t in graph)}
    assert cycles(graph) == []
