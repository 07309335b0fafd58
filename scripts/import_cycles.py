#!/usr/bin/env python3
"""Find import cycles in the tickvault package, from the source text alone.

Usage: ``python scripts/import_cycles.py [CHECKOUT]`` (default: the current directory; reads
``CHECKOUT/src/tickvault``). Prints each strongly connected component of the import graph
with the import statements that make it, and exits 1 if there is any.

The graph is built with :mod:`ast` (nothing is imported, so a broken or heavy module does not
hide its edges). An edge goes from a module to the most specific tickvault module an import
statement names: ``from tickvault.a import b`` is an edge to ``tickvault.a.b`` when that is a
module, else to ``tickvault.a``. A package's ``__init__`` is not counted as imported by its
submodules (Python runs it first, but that is not a dependency the code chose).

Three graphs are reported, each a superset of the one before:

* ``top-level``: imports that run when the module is imported (module body, including
  module-level ``if``/``try`` blocks), without ``if TYPE_CHECKING:`` blocks;
* ``+functions``: also the imports inside functions and methods (deferred imports are still
  dependencies);
* ``+TYPE_CHECKING``: also the imports only the type checker sees. This is the one that must
  have no cycle: a cycle that only typing closes still ties the modules into one unit.

Hand-written rather than taken from a library (pydeps, import-linter, grimp) because those
either import the code or would be a new dependency for forty lines of graph walking; the
components are found with Tarjan's algorithm.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

GRAPHS = ("top-level", "+functions", "+TYPE_CHECKING")
"""The graphs, in order; an import of a kind counts in its own graph and every later one."""

_KIND_GRAPH = {"top": 0, "function": 1, "typing": 2}


@dataclass
class ImportGraph:
    """The package's modules and, per graph, the modules each one imports."""

    modules: set[str]
    edges: dict[str, dict[str, set[str]]] = field(default_factory=dict)
    """Graph name -> module -> imported modules."""
    where: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    """(importer, imported) -> ``kind:path:line`` of each import statement."""


def module_name(src: Path, path: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(node: ast.AST, kind: str = "top") -> Iterator[tuple[str, ast.Import | ast.ImportFrom]]:
    """Every import statement under ``node`` with its kind: top, function or typing."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield kind, child
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for sub in child.body:
                yield from _imports(ast.Module(body=[sub], type_ignores=[]), "typing")
            for sub in child.orelse:
                yield from _imports(ast.Module(body=[sub], type_ignores=[]), kind)
        elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            yield from _imports(child, "function" if kind == "top" else kind)
        else:
            yield from _imports(child, kind)


def _nearest_module(name: str, modules: set[str]) -> str:
    while name not in modules and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _targets(
    module: str, is_package: bool, node: ast.Import | ast.ImportFrom, modules: set[str]
) -> list[str]:
    """The tickvault modules one import statement names."""
    if isinstance(node, ast.Import):
        return [
            _nearest_module(a.name, modules)
            for a in node.names
            if a.name.split(".")[0] == "tickvault"
        ]
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        package = ".".join(base + ([node.module] if node.module else []))
    else:
        package = node.module or ""
    if package.split(".")[0] != "tickvault":
        return []
    return [
        f"{package}.{a.name}"
        if f"{package}.{a.name}" in modules
        else _nearest_module(package, modules)
        for a in node.names
    ]


def build(checkout: Path) -> ImportGraph:
    """Parse every module under ``checkout/src/tickvault`` into the three graphs."""
    src = checkout / "src"
    files = sorted((src / "tickvault").rglob("*.py"))
    graph = ImportGraph({module_name(src, p) for p in files})
    graph.edges = {g: {m: set() for m in graph.modules} for g in GRAPHS}
    for path in files:
        module = module_name(src, path)
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for kind, node in _imports(tree):
            for target in _targets(module, path.name == "__init__.py", node, graph.modules):
                if target == module or target not in graph.modules:
                    continue
                for name in GRAPHS[_KIND_GRAPH[kind] :]:
                    graph.edges[name][module].add(target)
                graph.where.setdefault((module, target), set()).add(
                    f"{kind}:{path.relative_to(checkout)}:{node.lineno}"
                )
    return graph


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), largest first."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
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

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(edges) + 100))
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(found, key=lambda c: (-len(c), c))


def main(argv: list[str]) -> int:
    checkout = Path(argv[0]) if argv else Path(".")
    graph = build(checkout)
    print(f"modules: {len(graph.modules)}")
    status = 0
    for name in GRAPHS:
        edges = graph.edges[name]
        found = cycles(edges)
        print(f"\n{name} imports: {sum(map(len, edges.values()))} edges, {len(found)} cycle(s)")
        for component in found:
            print(f"  cycle ({len(component)}): {', '.join(component)}")
            members = set(component)
            for a in component:
                for b in sorted(edges[a] & members):
                    print(f"      {a} -> {b}   [{'; '.join(sorted(graph.where[(a, b)]))}]")
        status = status or int(bool(found))
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
