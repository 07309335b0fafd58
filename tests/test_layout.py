"""The package layout stays what docs/architecture.md says it is, and has no import cycles.

* ``scripts/import_cycles.py`` reads every module's imports with :mod:`ast` (top-level,
  inside functions, and under ``if TYPE_CHECKING:``); no modules may import each other in a
  circle, by any of those.
* The "Package map" block of docs/architecture.md is the tree on disk: every entry exists,
  every package and every top-level module is listed, and each line says what it is.
* Every ``*.py`` file and every test the document names exists.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "tickvault"
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def _import_cycles_tool() -> ModuleType:
    path = ROOT / "scripts" / "import_cycles.py"
    spec = importlib.util.spec_from_file_location("import_cycles", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


cycles_tool = _import_cycles_tool()


def test_the_package_has_no_import_cycles() -> None:
    graph = cycles_tool.build(ROOT)
    assert len(graph.modules) > 100  # the whole package was read
    edges = graph.edges["+TYPE_CHECKING"]  # every import, whichever way it runs
    report = [
        f"{a} -> {b} {sorted(graph.where[(a, b)])}"
        for component in cycles_tool.cycles(edges)
        for a in component
        for b in sorted(edges[a] & set(component))
    ]
    assert report == []


def _write(root: Path, modules: dict[str, str]) -> None:
    for name, text in modules.items():
        path = root / "src" / Path(*name.split("."))
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.parent / "__init__.py").touch()
        path.with_suffix(".py").write_text(text)


def test_the_tool_finds_cycles_closed_by_each_kind_of_import(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "tickvault.a": "from tickvault import b\n",
            "tickvault.b": "def f():\n    from tickvault.a import x\n",
            "tickvault.p.c": (
                "from typing import TYPE_CHECKING\n"
                "from tickvault.p import d\n"
                "if TYPE_CHECKING:\n    from tickvault.p.e import E\n"
            ),
            "tickvault.p.d": "",
            "tickvault.p.e": "from . import c\n",
        },
    )
    graph = cycles_tool.build(tmp_path)
    found = {name: cycles_tool.cycles(graph.edges[name]) for name in cycles_tool.GRAPHS}
    assert found["top-level"] == []
    assert found["+functions"] == [["tickvault.a", "tickvault.b"]]
    assert found["+TYPE_CHECKING"] == [
        ["tickvault.a", "tickvault.b"],
        ["tickvault.p.c", "tickvault.p.e"],
    ]
    assert graph.where[("tickvault.p.e", "tickvault.p.c")] == {"top:src/tickvault/p/e.py:1"}
    assert cycles_tool.main([str(tmp_path)]) == 1


def package_map() -> list[tuple[str, str]]:
    """``(path relative to src/tickvault, what it is)`` for every line of the map block."""
    lines = ARCHITECTURE.read_text(encoding="utf-8").splitlines()
    start = lines.index("## Package map")
    opening = next(i for i in range(start, len(lines)) if lines[i].startswith("```"))
    closing = next(i for i in range(opening + 1, len(lines)) if lines[i].startswith("```"))
    entries: list[tuple[str, str]] = []
    parents: list[str] = []
    for line in lines[opening + 1 : closing]:
        indent = len(line) - len(line.lstrip(" "))
        assert indent % 2 == 0, line
        name, _, what = line.strip().partition(" ")
        parents = parents[: indent // 2]
        assert len(parents) == indent // 2, f"{line!r} is indented under no package"
        entries.append(("".join(parents) + name, what.strip()))
        if name.endswith("/"):
            parents.append(name)
    return entries


def test_every_entry_of_the_package_map_exists_and_says_what_it_is() -> None:
    entries = package_map()
    assert len(entries) > 20
    assert [path for path, _ in entries if not path.endswith(("/", ".py"))] == []
    absent = [
        path
        for path, _ in entries
        if not ((PACKAGE / path).is_dir() if path.endswith("/") else (PACKAGE / path).is_file())
    ]
    assert absent == [], "listed in docs/architecture.md's package map, not under src/tickvault"
    assert [path for path, what in entries if not what] == []


def test_every_package_and_top_level_module_is_in_the_package_map() -> None:
    listed = {path for path, _ in package_map()}
    packages = {
        init.parent.relative_to(PACKAGE).as_posix() + "/"
        for init in PACKAGE.rglob("__init__.py")
        if init.parent != PACKAGE
    }
    top_level = {p.name for p in PACKAGE.glob("*.py")}
    assert packages - listed == set()
    assert top_level - listed == set()


def test_every_file_and_test_the_architecture_names_exists() -> None:
    text = ARCHITECTURE.read_text(encoding="utf-8")
    quoted = set(re.findall(r"`([^`\s]+)`", text))
    in_package = {p.name for p in PACKAGE.rglob("*.py")}
    absent = [
        name
        for name in sorted(q for q in quoted if q.endswith(".py") and "<" not in q)
        if not (
            (ROOT / name).is_file()
            or (PACKAGE / name).is_file()
            or ("/" not in name and name in in_package)
        )
    ]
    assert absent == []
    defined = {
        m
        for path in (ROOT / "tests").glob("test_*.py")
        for m in re.findall(r"^(?:async )?def (test_\w+)\(", path.read_text(), re.MULTILINE)
    }
    named = {q for q in quoted if re.fullmatch(r"test_\w+", q)}
    assert len(named) >= 15
    assert named - defined == set()
