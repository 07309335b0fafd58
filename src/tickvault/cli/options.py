"""What every command module shares: the common options, loading settings, printing JSON.

The options keep the help text each command has always shown (a command's ``--help`` is part
of the command line's interface), so each factory takes the text; the aliases are the
spellings several commands share. Light on purpose: importing it loads only typer, orjson
and the settings module, like the command modules that use it (``tests/test_startup.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, cast

import orjson
import typer
from rich.console import Console
from typer.models import OptionInfo

from tickvault.core.config import ENV_DATA_DIR, Settings, load_settings
from tickvault.core.errors import TickvaultError

EXIT_USAGE = 2
"""Exit status of an error the user must fix (bad option, bad config)."""


# typer.Option is annotated as returning Any (so that it can stand as a parameter's default);
# what it returns is an OptionInfo, which is what Annotated needs.
def _option(*names: str, help: str, envvar: str | None = None) -> OptionInfo:
    return cast(OptionInfo, typer.Option(*names, help=help, envvar=envvar))


def data_dir_option(help: str = "Data directory.") -> OptionInfo:
    """``--data-dir``, also read from ``TICKVAULT_DATA_DIR``."""
    return _option("--data-dir", envvar=ENV_DATA_DIR, help=help)


def config_option(help: str = "TOML config file.") -> OptionInfo:
    """``--config``: the TOML config file."""
    return _option("--config", help=help)


def bus_option(help: str = "Bus URL.") -> OptionInfo:
    """``--bus``: the bus URL, overriding the config's."""
    return _option("--bus", help=help)


def store_option(help: str = "Store URL.") -> OptionInfo:
    """``--store``: the store URL, overriding the config's."""
    return _option("--store", help=help)


DataDir = Annotated[Path | None, data_dir_option()]
DataDirOrDefault = Annotated[
    Path | None, data_dir_option("Data directory [default: ./tickvault-data].")
]
ConfigFile = Annotated[Path | None, config_option()]
BusUrl = Annotated[str | None, bus_option()]
BusUrlExample = Annotated[str | None, bus_option("Bus URL, e.g. sqlite:///bus.db.")]
StoreUrl = Annotated[str | None, store_option()]
JsonFlag = Annotated[bool, _option("--json", help="Print JSON.")]
Verbose = Annotated[bool, _option("--verbose", "-v", help="Log more.")]


def settings_from(
    config: Path | None,
    data_dir: Path | None = None,
    bus: str | None = None,
    store: str | None = None,
) -> Settings:
    """The settings from ``config``, the environment and the options given (None: unset)."""
    return load_settings(config, data_dir=data_dir, bus_url=bus, store_url=store)


def settings_or_exit(
    err: Console,
    config: Path | None,
    data_dir: Path | None = None,
    bus: str | None = None,
    store: str | None = None,
) -> Settings:
    """:func:`settings_from`, or one error line on ``err`` and exit status 2."""
    try:
        return settings_from(config, data_dir, bus, store)
    except TickvaultError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(EXIT_USAGE) from None


def print_json(value: Any, *, indent: bool = True) -> None:
    """``value`` as JSON on stdout (indented unless ``indent`` is false; anything orjson
    cannot encode is printed as its ``str``)."""
    data = (
        orjson.dumps(value, default=str, option=orjson.OPT_INDENT_2)
        if indent
        else orjson.dumps(value, default=str)
    )
    sys.stdout.buffer.write(data + b"\n")
    sys.stdout.flush()
