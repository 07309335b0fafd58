"""The command line's pydantic-free value conversion gives exactly typer's own results.

Each value is converted by typer's own runtime converter (the pydantic ``TypeAdapter``) and
by :class:`tickvault.cli.coercion.PlainRuntimeParam`; both must return the same value of
the same type, or both refuse it with the same message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import pytest
import typer
from typer._click.exceptions import BadParameter
from typer._coercion import build_runtime_param

from tickvault.cli.coercion import PlainRuntimeParam, install_plain_coercion
from tickvault.cli.lazy import LazyGroup

from .cli_helpers import tv

VALUES: list[Any] = [
    "abc", "", " 5", "5", "007", "0", "-0", "-5", "+5", "1_000", "1e3", "5.0",
    "123456789012345678", "1234567890123456789", "99999999999999999999999", "ünïcode ✓",
    "\udcff", "x\x00y", "-", ".", "/", "/tmp", "~/data", 7, True, False,
]  # fmt: skip


def _command(tmp_path: Path) -> Any:
    app = typer.Typer(add_completion=False)

    @app.command()
    def cmd(
        text: str = "",
        number: int = 0,
        path: Path | None = None,
        existing: Annotated[Path | None, typer.Option(exists=True)] = None,
        file_only: Annotated[Path | None, typer.Option(dir_okay=False)] = None,
        flag: bool = False,
    ) -> None:
        """A command with one parameter of each plain kind."""

    (tmp_path / "a_dir").mkdir()
    return typer.main.get_command(app)


def _outcome(runtime: Any, value: Any, param: Any, ctx: Any) -> tuple[str, Any]:
    try:
        result = runtime._coerce_value(value, param=param, ctx=ctx)
    except BadParameter as exc:
        return "refused", exc.format_message()
    return type(result).__name__, result


def test_plain_conversion_matches_typer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    command = _command(tmp_path)
    ctx = command.make_context("cmd", [])
    compared = 0
    for param in command.params:
        descriptor = param.type_descriptor
        ours = PlainRuntimeParam(
            parameter_info=descriptor.parameter_info,
            annotation=descriptor.annotation,
            descriptor=descriptor,
        )
        theirs = build_runtime_param(descriptor)
        for value in [*VALUES, "a_dir", str(tmp_path / "a_dir"), "missing"]:
            expected = _outcome(theirs, value, param, ctx)
            assert _outcome(ours, value, param, ctx) == expected, (param.name, value)
            compared += 1
    assert compared >= 6 * len(VALUES)


def test_cli_parameters_get_the_plain_converter() -> None:
    from tickvault.cli.root import app

    group = typer.main.get_command(app)
    assert isinstance(group, LazyGroup)
    ctx = group.make_context("tickvault", ["query", "SELECT 1"], resilient_parsing=True)
    query = group.get_command(ctx, "query")
    kinds = {p.name: type(p._runtime_param).__name__ for p in query.params}
    assert kinds["sql"] == kinds["limit"] == kinds["data_dir"] == "PlainRuntimeParam"
    assert isinstance(query.get_help_option(ctx)._runtime_param, PlainRuntimeParam)
    assert all(isinstance(p._runtime_param, PlainRuntimeParam) for p in group.params)
    install_plain_coercion([*query.params, None])  # idempotent, ignores absent entries
    assert type(query.params[0]._runtime_param).__name__ == "PlainRuntimeParam"


def test_refused_values_keep_typers_messages() -> None:
    bad = tv("query", "SELECT 1", "--limit", "ten", check=False)
    assert bad.returncode == 2
    assert "Input should be a valid integer" in " ".join(bad.stderr.split())
    ok = tv("config-reference")
    assert ok.returncode == 0 and ok.stdout
