"""``tickvault positions ...`` commands.

All take ``--data-dir`` (env ``TICKVAULT_DATA_DIR``, default ``./tickvault-data``); the
state lives in ``<data dir>/state.sqlite3`` unless ``--state`` (env
``TICKVAULT_POSITIONS_STATE``) names another: ``clickhouse://host:8123/db``, optionally with
``--table`` (a table tickvault did not create, read-only) and ``--columns`` (its column
names for tickvault's). ``--json`` prints JSON on stdout. Errors that
are the user's to fix print one line and exit 2. Malformed stored rows are never an error:
they are reported, and the exit status stays 0.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer
from rich.console import Console
from rich.table import Table

from tickvault.cli.options import (
    JsonFlag,
    config_option,
    data_dir_option,
    print_json,
    settings_or_exit,
)
from tickvault.core.config import DEFAULT_DATA_DIR
from tickvault.core.errors import PositionSourceError, TickvaultError
from tickvault.positions.backend import Candidate, PositionBackend
from tickvault.positions.clickhouse_sql import parse_columns
from tickvault.positions.guard import CrashLoopGuard, CrashLoopPolicy
from tickvault.positions.importer import import_jsonl
from tickvault.positions.open import open_backend, state_name
from tickvault.positions.reconcile import reconcile as run_reconcile
from tickvault.positions.restore import judge, restore
from tickvault.positions.sources import (
    JsonFileSource,
    RedisHashSource,
    RestoreSource,
    StateStoreSource,
)
from tickvault.positions.startup import STATE_FILE
from tickvault.positions.store import PositionStore

app = typer.Typer(help="Position state: import, show, restore, reconcile.", no_args_is_help=True)

out = Console()
err = Console(stderr=True)

DataDir = Annotated[Path, data_dir_option()]  # shows its default: ./tickvault-data
StateUrl = Annotated[
    str | None,
    typer.Option(
        "--state",
        envvar="TICKVAULT_POSITIONS_STATE",
        help="Position state: clickhouse://host:8123/db, sqlite:///path (default: the"
        " data dir's state.sqlite3).",
    ),
]
TableName = Annotated[
    str | None,
    typer.Option(
        "--table", help="ClickHouse table holding the rows (read-only if not tickvault's)."
    ),
]
ColumnMap = Annotated[
    str | None,
    typer.Option("--columns", help="Their column names: trade_id=tid,quantity=qty,..."),
]
ConfigFile = Annotated[
    Path | None, config_option("TOML config file; its [positions] section gives defaults.")
]


def _with_config(
    config: Path | None, state: str | None, table: str | None, columns: str | None
) -> tuple[str | None, str | None, str | None]:
    """``--state``/``--table``/``--columns`` where given, else the config's ``[positions]``."""
    if config is None:
        return state, table, columns
    section = settings_or_exit(err, config).positions
    return (
        state if state is not None else section.state or None,
        table if table is not None else section.table or None,
        columns if columns is not None else section.columns or None,
    )


def _print_json(value: Any) -> None:
    print_json(msgspec.to_builtins(value))


@contextmanager
def _user_errors() -> Iterator[None]:
    try:
        yield
    except TickvaultError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None


def _iso(ts: Any) -> str:
    if isinstance(ts, int) and not isinstance(ts, bool):
        try:
            return datetime.fromtimestamp(ts / 1e6, UTC).isoformat(timespec="seconds")
        except (OverflowError, OSError, ValueError):
            pass
    return repr(ts)


def _state_path(data_dir: Path) -> Path:
    return data_dir / STATE_FILE


def _is_sqlite(state: str | None) -> bool:
    return state is None or state.startswith("sqlite://") or "://" not in state


def _sqlite_path(state: str | None, data_dir: Path) -> Path:
    if state is None:
        return _state_path(data_dir)
    return Path(state.removeprefix("sqlite://"))


def _open(
    state: str | None, data_dir: Path, table: str | None, columns: str | None, *, read_only: bool
) -> PositionBackend:
    """The backend the options name (raises TickvaultError for the user to fix)."""
    target: str | Path = state if state is not None else _state_path(data_dir)
    mapping = parse_columns(columns) if columns else None
    return open_backend(target, read_only=read_only, table=table, columns=mapping)


def _no_state(state: str | None, data_dir: Path) -> bool:
    """True when the state is a SQLite file that does not exist."""
    return _is_sqlite(state) and not _sqlite_path(state, data_dir).is_file()


@app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(metavar="FILE.jsonl", help="One JSON row per line.")],
    json_out: JsonFlag = False,
    data_dir: DataDir = Path(DEFAULT_DATA_DIR),
) -> None:
    """Load snapshot rows exported from another system as they are (invalid ones too)."""
    with _user_errors(), PositionStore(_state_path(data_dir)) as store:
        report = import_jsonl(store, file)
    if json_out:
        _print_json(report)
        return
    out.print(
        f"{report.lines:,} lines: imported {report.imported:,}, already present"
        f" {report.duplicates:,}, unparseable {len(report.unparseable):,},"
        f" flagged {len(report.flagged):,} (stored anyway)",
        highlight=False,
    )
    for f in report.flagged:
        out.print(f"  flagged line {f.line}: trade {f.trade_id!r}: {f.reason}", highlight=False)
    for f in report.unparseable:
        out.print(f"  unparseable line {f.line}: {f.reason}", highlight=False)
    if report.extra_columns:
        out.print(f"  extra columns kept in raw: {', '.join(report.extra_columns)}")


@app.command()
def show(
    json_out: JsonFlag = False,
    data_dir: DataDir = Path(DEFAULT_DATA_DIR),
    state: StateUrl = None,
    table: TableName = None,
    columns: ColumnMap = None,
    config: ConfigFile = None,
) -> None:
    """Show open positions and malformed latest rows (reads only)."""
    state, table, columns = _with_config(config, state, table, columns)
    if _no_state(state, data_dir):
        if json_out:
            _print_json({"positions": [], "malformed": [], "rows": 0, "quarantined": 0})
        else:
            out.print(f"no position state in {_sqlite_path(state, data_dir).parent}")
        return
    with _user_errors(), _open(state, data_dir, table, columns, read_only=True) as store:
        candidates = StateStoreSource(store).read() or []
        positions, malformed = judge(candidates, store.source_name)
        rows, quarantined = store.row_count(), len(store.quarantined())
    if json_out:
        _print_json(
            {
                "positions": positions,
                "malformed": [
                    {"trade_id": q.trade_id, "reason": q.reason, "row": q.row} for q in malformed
                ],
                "rows": rows,
                "quarantined": quarantined,
            }
        )
        return
    grid = Table("trade", "symbol", "side", "quantity", "notional", "entry", "bars", "since", "seq")
    for p in positions:
        grid.add_row(
            p.trade_id,
            p.symbol,
            p.side,
            f"{p.quantity:g}",
            f"{p.notional:,.2f}",
            f"{p.entry_price:g}",
            str(p.bars_held),
            _iso(p.ts),
            str(p.seq),
        )
    out.print(grid)
    out.print(
        f"{len(positions)} open, {len(malformed)} malformed latest row(s), {rows:,} rows,"
        f" {quarantined} quarantine copies",
        highlight=False,
    )
    for q in malformed:
        out.print(f"  [yellow]malformed[/yellow] trade {q.trade_id!r}: {q.reason}", highlight=False)


def _row_text(row: dict[str, Any]) -> str:
    """The identifying values of a stored row, for a report line."""
    names = ("symbol", "side", "status", "quantity", "notional", "bars_held", "seq")
    return ", ".join(f"{n}={row.get(n)!r}" for n in names if n in row)


class _Unreadable(RestoreSource):
    """The state that could not even be opened: restore records it as unavailable."""

    def __init__(self, name: str, error: PositionSourceError) -> None:
        self.name = name
        self.error = error

    def read(self) -> list[Candidate] | None:
        raise self.error


@app.command("restore")
def restore_(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Write nothing.")] = False,
    json_out: JsonFlag = False,
    snapshot: Annotated[
        Path | None, typer.Option("--snapshot", help="Secondary JSON snapshot file.")
    ] = None,
    redis_url: Annotated[
        str | None, typer.Option("--redis-url", help="Secondary Redis hash server.")
    ] = None,
    redis_key: Annotated[str, typer.Option(help="Key of the Redis hash.")] = "tickvault:positions",
    ledger: Annotated[Path | None, typer.Option(help="Capital ledger JSON file.")] = None,
    data_dir: DataDir = Path(DEFAULT_DATA_DIR),
    state: StateUrl = None,
    table: TableName = None,
    columns: ColumnMap = None,
    config: ConfigFile = None,
) -> None:
    """Run the restore chain (state store, --snapshot, --redis-url, flat) and report it."""
    state, table, columns = _with_config(config, state, table, columns)
    # The report below says everything restore logs; keep stderr for errors.
    logging.getLogger("tickvault.positions").addHandler(logging.NullHandler())
    with _user_errors():
        store: PositionBackend | None = None
        first: RestoreSource
        if not dry_run or not _no_state(state, data_dir):
            try:
                store = _open(state, data_dir, table, columns, read_only=dry_run)
                first = StateStoreSource(store)
            except PositionSourceError as exc:  # unreachable: report it, try the next source
                first = _Unreadable(state_name(state or "", table), exc)
        else:
            first = StateStoreSource(_sqlite_path(state, data_dir))
        chain: list[RestoreSource] = [first]
        if snapshot is not None:
            chain.append(JsonFileSource(snapshot))
        if redis_url is not None:
            chain.append(RedisHashSource(redis_url, redis_key))
        try:
            report = restore(chain, quarantine_store=store, dry_run=dry_run, ledger=ledger)
        finally:
            if store is not None:
                store.close()
    if json_out:
        _print_json(report.to_dict())
        return
    for a in report.sources_tried:
        detail = f" ({a.detail})" if a.detail else ""
        out.print(
            f"source {a.source}: {a.outcome}{detail}: {a.rows} rows, {a.restored} restored,"
            f" {a.quarantined} quarantined",
            highlight=False,
        )
    out.print(f"restored {len(report.restored)} position(s) from {report.source_used}")
    for p in report.restored:
        out.print(f"  {p.trade_id} {p.symbol} {p.side} {p.quantity:g} @ {p.entry_price:g}")
    for q in report.quarantined:
        out.print(
            f"  [yellow]quarantined[/yellow] {q.trade_id!r}: {q.reason}; row {_row_text(q.row)}"
            f" ({q.source} {q.source_ref})",
            highlight=False,
            soft_wrap=True,
        )
    if report.capital is not None:
        c = report.capital
        out.print(f"capital {c.capital:,.2f} (ledger {c.shape}-shaped, {c.entries} entries)")
    for w in report.warnings:
        out.print(f"[yellow]warning:[/yellow] {w}", highlight=False)
    if dry_run:
        out.print("(dry run: nothing written)")


@app.command()
def reconcile(
    apply: Annotated[bool, typer.Option("--apply", help="Append tombstone CLOSED rows.")] = False,
    json_out: JsonFlag = False,
    data_dir: DataDir = Path(DEFAULT_DATA_DIR),
    state: StateUrl = None,
    table: TableName = None,
    columns: ColumnMap = None,
    config: ConfigFile = None,
) -> None:
    """List legacy malformed rows; with --apply, settle latest ones with tombstones."""
    state, table, columns = _with_config(config, state, table, columns)
    if _no_state(state, data_dir):
        if json_out:
            _print_json({"latest": [], "superseded": [], "applied": apply, "tombstones": []})
        else:
            out.print(f"no position state in {_sqlite_path(state, data_dir).parent}")
        return
    with _user_errors(), _open(state, data_dir, table, columns, read_only=not apply) as store:
        report = run_reconcile(store, apply=apply)
    if json_out:
        _print_json(report)
        return
    out.print(f"{len(report.latest)} trade(s) with a malformed latest row (restore quarantines)")
    for m in report.latest:
        out.print(f"  row {m.row_id} trade {m.trade_id!r}: {m.reason}", highlight=False)
    out.print(f"{len(report.superseded)} malformed row(s) already superseded (no action)")
    for t in report.tombstones:
        what = f"tombstone seq {t.seq}" if t.seq is not None else "skipped (changed meanwhile)"
        out.print(f"  trade {t.trade_id!r}: {what}", highlight=False)
    if report.latest and not apply:
        out.print("run with --apply to append tombstone CLOSED rows (history is kept)")


@app.command()
def guard(
    reset: Annotated[bool, typer.Option("--reset", help="Forget recorded starts.")] = False,
    max_starts: Annotated[int, typer.Option(help="Starts allowed in the window.")] = 5,
    window: Annotated[float, typer.Option(help="Window in seconds.")] = 600.0,
    json_out: JsonFlag = False,
    data_dir: DataDir = Path(DEFAULT_DATA_DIR),
    state: StateUrl = None,
    table: TableName = None,
) -> None:
    """Show the crash-loop guard's start count; --reset clears it (leaves safe mode)."""
    with _user_errors(), _open(state, data_dir, table, None, read_only=False) as store:
        g = CrashLoopGuard(store, CrashLoopPolicy(max_starts=max_starts, window_seconds=window))
        cleared = g.reset() if reset else 0
        status = g.status()
    if json_out:
        _print_json({"status": status, "cleared": cleared})
        return
    state = "[red]tripped[/red]" if status.safe_mode else "ok"
    out.print(
        f"{status.starts_in_window} start(s) within {status.window_seconds:g} s"
        f" (limit {status.max_starts}): {state}"
    )
    if reset:
        out.print(f"cleared {cleared} recorded start(s)")
