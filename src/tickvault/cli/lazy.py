"""Sub-commands of the ``tickvault`` command line that are imported only when used.

A command's module is imported only when that command runs (or its own ``--help`` is
asked for), so ``tickvault --help`` or ``tickvault status`` does not pay for the guardian,
the position book, the venue collectors or their HTTP clients. The top-level help lists
them from the one-line help kept here (``tests/test_startup.py`` checks it matches the
real command). The group also gives its own and its commands' ``str``/``int``/``Path``
parameters a converter without pydantic (:mod:`tickvault.cli.coercion`).
Written by hand because click's documented answer to this is exactly such a
group subclass ("lazily loading subcommands" in click's documentation), and typer has none.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

from tickvault.cli.coercion import install_plain_coercion


@dataclass(frozen=True)
class LazyCommand:
    """``module:attribute`` is a ``typer.Typer`` (a command group) or a command function."""

    module: str
    attribute: str
    help: str


LAZY_COMMANDS: dict[str, LazyCommand] = {
    "dlq": LazyCommand("tickvault.cli.dlq", "app", "Inspect and requeue dead letters."),
    "positions": LazyCommand(
        "tickvault.cli.positions", "app", "Position state: import, show, restore, reconcile."
    ),
    "streams": LazyCommand(
        "tickvault.cli.streams",
        "app",
        "Consumer groups: inspect them, reclaim stuck entries, remove dead consumers.",
    ),
    "backfill": LazyCommand(
        "tickvault.cli.backfill", "app", "Download history through the pipeline."
    ),
    "guardian": LazyCommand(
        "tickvault.cli.guardian", "app", "Watch the pipeline, recover safely, escalate."
    ),
    "rebuild": LazyCommand(
        "tickvault.cli.guardian",
        "rebuild_command",
        "Re-write the records the bus still retains (its retention setting) into the store.",
    ),
    "systemd": LazyCommand(
        "tickvault.cli.streams",
        "systemd_command",
        "Print systemd units: the service (upkeep as ExecStartPre) and a recovery timer.",
    ),
}


def load_command(name: str, entry: LazyCommand) -> Any:
    """Import ``entry`` and turn it into the click command typer would have built."""
    target: Any = getattr(importlib.import_module(entry.module), entry.attribute)
    command: Any
    if isinstance(target, typer.Typer):
        command = typer.main.get_group(target)  # a group even with one command, as add_typer
    else:
        single = typer.Typer(add_completion=False)
        single.command(name)(target)
        command = typer.main.get_command(single)
    command.name = name
    return command


class LazyGroup(TyperGroup):
    """A typer group whose :data:`LAZY_COMMANDS` are imported on first use."""

    _listing = False

    # typer vendors its own click; ``Any`` keeps these signatures those of its classes.
    def list_commands(self, ctx: Any) -> list[str]:
        return [*super().list_commands(ctx), *(n for n in LAZY_COMMANDS if n not in self.commands)]

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        install_plain_coercion(self.get_params(ctx))  # with the help option
        return list(super().parse_args(ctx, args))

    @staticmethod
    def _plain_coercion(ctx: Any, command: Any) -> Any:
        params = list(command.params)
        if ctx is not None and "help_option_names" not in (command.context_settings or {}):
            # The command's context inherits this context's help option names, so this is
            # the help option (created once, cached) its own parsing will use.
            params.append(command.get_help_option(ctx))
        install_plain_coercion(params)
        return command

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        entry = LAZY_COMMANDS.get(cmd_name)
        if cmd_name in self.commands or entry is None:
            command = super().get_command(ctx, cmd_name)
            return None if command is None else self._plain_coercion(ctx, command)
        if self._listing:  # the group's own help needs only the one-line help
            return TyperCommand(cmd_name, help=entry.help)
        command = self._plain_coercion(ctx, load_command(cmd_name, entry))
        self.commands[cmd_name] = command
        return command

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False
