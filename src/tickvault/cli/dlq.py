"""``tickvault dlq``: list, show and requeue dead letters.

Letters recorded by a replay name the file and line they came from (``source_file``,
``source_line``; see :func:`tickvault.sources.replay.letter_origin`).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import msgspec
import orjson
import typer
from rich.console import Console
from rich.table import Table

from tickvault.bus import open_bus
from tickvault.bus.base import DeadLetter, DeadLetters
from tickvault.cli.options import (
    BusUrlExample,
    DataDirOrDefault,
    JsonFlag,
    config_option,
    print_json,
    settings_from,
)
from tickvault.core.codec import FrameBuilder
from tickvault.core.errors import TickvaultError
from tickvault.core.records import KINDS
from tickvault.core.redact import redact_text
from tickvault.sources.replay import letter_market, letter_origin

T = TypeVar("T")

app = typer.Typer(help="Inspect and requeue dead letters.", no_args_is_help=True)

out = Console()
err = Console(stderr=True)

ConfigFile = Annotated[
    Path | None, config_option("TOML config file ([bus], [store], [[sources]]).")
]


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except TickvaultError as exc:
        err.print(f"[red]error:[/red] {redact_text(str(exc))}", highlight=False)
        raise typer.Exit(2) from None


# -- dead letters -----------------------------------------------------------------------------


def _letter_source(letter: DeadLetter) -> str:
    """Where a dead letter came from: ``file:line`` for replays, else its entry."""
    origin = letter_origin(letter.entry_id)
    return f"{origin[0]}:{origin[1]}" if origin else letter.entry_id or ""


def _letter_json(letter: DeadLetter) -> dict[str, Any]:
    data = msgspec.to_builtins(letter)
    origin = letter_origin(letter.entry_id)
    data["source_file"], data["source_line"] = origin if origin else (None, None)
    try:
        data["payload"] = letter.payload.decode("utf-8")
    except UnicodeDecodeError:
        data["payload"] = None
        data["payload_base64"] = base64.b64encode(letter.payload).decode()
    return dict(data)


@app.command("list")
def dlq_list(
    json_out: JsonFlag = False,
    limit: Annotated[int, typer.Option(help="Show at most this many.")] = 1000,
    all_: Annotated[bool, typer.Option("--all", help="Include requeued letters.")] = False,
    data_dir: DataDirOrDefault = None,
    config: ConfigFile = None,
    bus: BusUrlExample = None,
) -> None:
    """List dead letters (oldest first) with their reasons."""
    settings = settings_from(config, data_dir, bus)

    async def main() -> list[DeadLetter]:
        b: DeadLetters = open_bus(settings.bus_url)
        try:
            return await b.dead_letters(limit=limit, include_requeued=all_)
        finally:
            await b.close()

    letters = _run(main())
    if json_out:
        print_json([_letter_json(x) for x in letters])
        return
    table = Table("id", "kind", "reason", "source (file:line) / entry", "payload")
    for x in letters:
        preview = _letter_json(x)["payload"] or f"<{len(x.payload)} bytes binary>"
        table.add_row(x.id, x.kind, x.reason, _letter_source(x), preview[:60])
    out.print(table)


@app.command("show")
def dlq_show(
    letter_id: Annotated[str, typer.Argument(metavar="ID")],
    data_dir: DataDirOrDefault = None,
    config: ConfigFile = None,
    bus: BusUrlExample = None,
) -> None:
    """Show one dead letter in full (JSON)."""
    settings = settings_from(config, data_dir, bus)

    async def main() -> DeadLetter | None:
        b: DeadLetters = open_bus(settings.bus_url)
        try:
            return await b.get_dead_letter(letter_id)
        finally:
            await b.close()

    letter = _run(main())
    if letter is None:
        err.print(f"[red]error:[/red] no dead letter {letter_id}")
        raise typer.Exit(2)
    print_json(_letter_json(letter))


def requeue_payload(letter: DeadLetter) -> bytes:
    """The bus payload that re-submits ``letter``; raise TickvaultError if it cannot be."""
    from tickvault.core.conflicts import CONFLICT_REASON
    from tickvault.sources.binance.capture import split_line
    from tickvault.sources.binance.wire import parse_message
    from tickvault.sources.poison import poison_reason

    if letter.reason == CONFLICT_REASON:
        raise TickvaultError(
            f"dead letter {letter.id} records a conflicting duplicate: the first version stays"
            " stored (both are in its payload); it cannot be requeued"
        )
    if letter.kind == "frame":
        return letter.payload
    if letter.kind in KINDS:
        row = orjson.loads(letter.payload)
        builder = FrameBuilder(letter.kind)
        builder.add_values(row.get(c) for c in KINDS[letter.kind].columns)
        return builder.take()
    if letter.kind == "raw":
        try:
            # A replayed line keeps its capture prefix (receive time) and its market.
            payload, recv_us, symbol = split_line(letter.payload)
            record = parse_message(payload, recv_us, letter_market(letter.entry_id), symbol)
        except Exception as exc:  # any payload at all: see sources.poison
            raise TickvaultError(
                f"dead letter {letter.id} is still invalid: {poison_reason(exc, letter.payload)}"
            ) from None
        builder = FrameBuilder(
            next(k for k, s in KINDS.items() if isinstance(record, s.record_type))
        )
        builder.add(record)
        return builder.take()
    raise TickvaultError(f"dead letter {letter.id} has unknown kind {letter.kind!r}")


@app.command("requeue")
def dlq_requeue(
    letter_ids: Annotated[list[str], typer.Argument(metavar="ID...")],
    data_dir: DataDirOrDefault = None,
    config: ConfigFile = None,
    bus: BusUrlExample = None,
) -> None:
    """Put dead letters back on their stream (the writer validates them again)."""
    settings = settings_from(config, data_dir, bus)

    async def main() -> int:
        b = open_bus(settings.bus_url)
        failed = 0
        try:
            for letter_id in letter_ids:
                letter = await b.get_dead_letter(letter_id)
                if letter is None:
                    err.print(f"[red]error:[/red] no dead letter {letter_id}")
                    failed += 1
                    continue
                if letter.requeued_at is not None:
                    err.print(f"dead letter {letter_id} was already requeued")
                    continue
                try:
                    payload = requeue_payload(letter)
                except TickvaultError as exc:
                    err.print(f"[red]error:[/red] {exc}", highlight=False)
                    failed += 1
                    continue
                ids = await b.append(letter.stream, [payload])
                await b.mark_requeued(letter_id)
                out.print(f"requeued {letter_id} as entry {ids[0]} on {letter.stream}")
        finally:
            await b.close()
        return failed

    failed = _run(main())
    raise typer.Exit(1 if failed else 0)
