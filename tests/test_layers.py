"""The web layer and the guardian wiring never import the pipeline that runs them (not
even for typing): they read it through :mod:`tickvault.web.ports` and
:mod:`tickvault.core.snapshot`, so the pipeline ↔ web/guardian import cycle cannot return."""

from __future__ import annotations

import ast
from pathlib import Path

import tickvault

SRC = Path(tickvault.__file__).parent
PIPELINE = "tickvault.service.pipeline"


def _imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_web_and_guardian_wiring_do_not_import_the_pipeline() -> None:
    modules = [*sorted((SRC / "web").glob("*.py")), SRC / "service" / "guardian.py"]
    assert len(modules) >= 5
    for path in modules:
        assert PIPELINE not in _imported(path), path
        assert "_status_op" not in path.read_text(), path
