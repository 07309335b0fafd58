"""The ``tickvault`` command line.

Every command takes ``--data-dir`` (env ``TICKVAULT_DATA_DIR``, default ``./tickvault-data``)
and ``--config FILE``; ``--bus`` and ``--store`` override the file's URLs. Errors that are
the user's to fix print one line and exit 2; nothing prints a traceback for them.

Exit codes: 0 done (for ``run`` and ``replay`` also: stopped by SIGTERM/SIGINT within
``[shutdown] grace_s``, everything unfinished left durable for the next start); 1
``replay`` read everything but a backlog is not stored yet (rerun to finish); 2 a usage or
configuration error (the line says which); 3 a local fault such as a full disk or an I/O
error (the line says where and what to do; rerunning afterwards resumes).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from tickvault.bus import open_bus
from tickvault.cli.lazy import LazyGroup
from tickvault.cli.options import BusUrlExample as BusUrl
from tickvault.cli.options import DataDirOrDefault as DataDir
from tickvault.cli.options import JsonFlag, Verbose, config_option, store_option
from tickvault.cli.options import print_json as _print_json
from tickvault.cli.options import settings_from as _settings
from tickvault.core.config import (
    ENV_DATA_DIR,
    Settings,
    http_token,
    settings_reference,
)
from tickvault.core.errors import ConfigError, ResourceFault, StoreUnavailable, TickvaultError
from tickvault.core.faults import resource_fault
from tickvault.core.gc_tuning import tune_for_throughput
from tickvault.core.redact import install_log_redaction, redact_text
from tickvault.service import control

if TYPE_CHECKING:
    from tickvault.core.snapshot import StatusSnapshot
    from tickvault.delivery.producer import ProducerResult
    from tickvault.service.replay_job import ReplayPlan
    from tickvault.service.replay_start import ReplayStart
    from tickvault.stores.base import Store

T = TypeVar("T")
EXIT_FAULT = 3
"""Exit code for a local fault (disk full, I/O error): free the resource and rerun."""

app = typer.Typer(
    name="tickvault",
    help="A market-data plane that does not lose data.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    cls=LazyGroup,  # dlq, guardian, positions, streams, backfill...: imported when used
)


def _command_defaults(command: Any, name: str, value: str) -> dict[str, Any]:
    """A click ``default_map`` giving every (sub)command that has option ``name`` ``value``."""
    defaults: dict[str, Any] = {}
    for sub_name, sub in getattr(command, "commands", {}).items():
        if getattr(sub, "commands", None):
            defaults[sub_name] = _command_defaults(sub, name, value)
        elif any(p.name == name for p in sub.params):
            defaults[sub_name] = {name: value}
    return defaults


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for key, value in b.items():
        out[key] = _merge(out[key], value) if isinstance(out.get(key), dict) else value
    return out


@app.callback()
def _global_options(
    ctx: typer.Context,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="Data directory for every command (as if given after the command).",
            show_envvar=False,
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="TOML config file for every command that takes one."),
    ] = None,
) -> None:
    """A market-data plane that does not lose data.

    ``--data-dir`` and ``--config`` may come before the command as well as after it; after
    it wins.
    """
    if data_dir is not None:
        # Every command reads the data dir from its option or, failing that, this variable
        # (the option after the command still wins); nested command groups included.
        os.environ[ENV_DATA_DIR] = str(data_dir)
    if config is not None:
        ctx.default_map = _merge(
            dict(ctx.default_map or {}), _command_defaults(ctx.command, "config", str(config))
        )


out = Console()
err = Console(stderr=True)

ConfigFile = Annotated[
    Path | None, config_option("TOML config file (tables bus, store, sources, ...).")
]
StoreUrl = Annotated[str | None, store_option("Store URL, e.g. duckdb:///t.duckdb.")]
Fallback = Annotated[
    list[str] | None,
    typer.Option(
        "--fallback", help="Fallback bus URL, tried in order when the primary fails (repeatable)."
    ),
]
HttpListen = Annotated[
    str | None,
    typer.Option(
        "--http-listen",
        help='HTTP API and dashboard address, host:port ("" = off)'
        " [default: [http] listen, 127.0.0.1:8765].",
    ),
]


def _setup_logging(verbose: bool) -> None:
    install_log_redaction()
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _run(coro: Coroutine[Any, Any, T]) -> T:
    tune_for_throughput()  # this process lives for the command: see tickvault.core.gc_tuning
    try:
        return asyncio.run(coro)
    except ResourceFault as exc:
        err.print(f"[red]error:[/red] {redact_text(str(exc))}", highlight=False)
        raise typer.Exit(EXIT_FAULT) from None
    except TickvaultError as exc:
        err.print(f"[red]error:[/red] {redact_text(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    except (OSError, RuntimeError, ValueError) as exc:  # sqlite3/duckdb errors included
        fault = resource_fault(exc, "the data dir")
        if fault is None:
            raise
        err.print(f"[red]error:[/red] {redact_text(str(fault))}", highlight=False)
        raise typer.Exit(EXIT_FAULT) from None


# -- run / demo / replay ----------------------------------------------------------------------


@app.command()
def run(
    config: ConfigFile = None,
    data_dir: DataDir = None,
    bus: BusUrl = None,
    store: StoreUrl = None,
    verbose: Verbose = False,
    http_listen: HttpListen = None,
    fallback: Fallback = None,
) -> None:
    """Run the service: configured sources → bus → writer → store, until SIGTERM/SIGINT."""
    from tickvault.service.pipeline import Pipeline
    from tickvault.service.wiring import build_sources

    _setup_logging(verbose)
    settings = _settings(config, data_dir, bus, store)
    if fallback:
        settings.bus.fallback = list(fallback)
    if http_listen is not None:
        settings.http.listen = http_listen

    async def main() -> None:
        sources = build_sources(settings, os.environ)
        if not sources:
            logging.getLogger("tickvault").warning(
                "no [[sources]] configured: only the writer runs (draining the bus)"
            )
        async with Pipeline(
            settings, sources, serve_http=True, http_token=http_token(settings)
        ) as pipeline:
            pipeline.with_guardian = True
            pipeline.install_signal_handlers()
            if not sources:
                await pipeline.stop_sources.wait()
            summary = await pipeline.run()
        err.print(
            f"stopped: {summary.published:,} published, stored {summary.stored:,} new"
            f" + {summary.duplicates:,} already stored, backlog {summary.backlog:,}",
            highlight=False,
        )

    _run(main())


@app.command()
def demo(
    seconds: Annotated[float, typer.Option(help="How long to generate data.")] = 10.0,
    rate: Annotated[float, typer.Option(help="Synthetic records per second.")] = 50_000.0,
    data_dir: DataDir = None,
    config: ConfigFile = None,
    bus: BusUrl = None,
    store: StoreUrl = None,
    http_listen: HttpListen = None,
    fallback: Fallback = None,
) -> None:
    """Synthetic ticks through the full pipeline with live progress and a summary (offline).

    The HTTP API and dashboard are served meanwhile (``--http-listen``)."""
    from rich.live import Live

    from tickvault.service.pipeline import Pipeline
    from tickvault.sources.synthetic import SyntheticSource

    _setup_logging(False)
    settings = _settings(config, data_dir, bus, store)
    if http_listen is not None:
        settings.http.listen = http_listen
    if fallback:
        settings.bus.fallback = list(fallback)

    async def main() -> None:
        source = SyntheticSource(rate=rate, symbols=["BTCUSDT", "ETHUSDT", "SOLUSDT"], seed=42)
        async with Pipeline(
            settings, [source], serve_http=True, http_token=http_token(settings)
        ) as pipeline:
            pipeline.install_signal_handlers()
            started = time.monotonic()
            if pipeline.http is not None:
                err.print(f"dashboard: {pipeline.http.url}/", highlight=False)

            def view() -> Table:
                elapsed = max(time.monotonic() - started, 1e-6)
                w = pipeline.writer.stats
                table = Table(title="tickvault demo", show_header=False)
                table.add_row("elapsed", f"{elapsed:5.1f} s / {seconds:.0f} s")
                table.add_row("generated", f"{source.generated:,}")
                table.add_row("on the bus", f"{pipeline.publisher.stats.records:,}")
                table.add_row("stored", f"{w.inserted:,}")
                table.add_row("ticks/s stored", f"{w.inserted / elapsed:,.0f}")
                table.add_row("in flight", f"{pipeline.publisher.stats.records - w.records:,}")
                return table

            async def stopper() -> None:
                try:
                    await asyncio.wait_for(pipeline.stop_sources.wait(), timeout=seconds)
                except TimeoutError:
                    pipeline.stop_sources.set()
                    source.stop()

            with Live(view(), console=err, refresh_per_second=4, transient=False) as live:
                stop_task = asyncio.create_task(stopper())
                run_task = asyncio.create_task(pipeline.run())
                while not run_task.done():
                    live.update(view())
                    await asyncio.sleep(0.25)
                summary = run_task.result()
                stop_task.cancel()
                live.update(view())
            counts = await pipeline.store.counts()
        rate_s = summary.stored / max(summary.seconds, 1e-6)
        out.print(
            f"\n[bold]demo done[/bold]: {summary.stored:,} records stored in"
            f" {summary.seconds:.1f} s ({rate_s:,.0f} ticks/s), backlog {summary.backlog},"
            f" dead letters {sum(summary.dead_letters.values())}",
            highlight=False,
        )
        out.print("rows per table: " + ", ".join(f"{k}={v:,}" for k, v in counts.items()))
        out.print(
            f"data dir: {settings.data_dir}  (try: tickvault query 'SELECT count(*) FROM trades')"
        )

    _run(main())


@app.command()
def replay(
    paths: Annotated[
        list[Path],
        typer.Argument(
            help="Recorded message files (JSON lines, cryptofeed or hftbacktest captures;"
            " .gz ok) or data.binance.vision trades/aggTrades CSVs (.zip ok)."
        ),
    ],
    restart: Annotated[
        bool, typer.Option(help="Ignore checkpoints and replay from the start.")
    ] = False,
    exchange: Annotated[
        str,
        typer.Option(
            "--exchange",
            help="The Binance market the files come from: binance (spot), binance-usdm,"
            " binance-coinm, binance-us, binance-tr.",
        ),
    ] = "binance",
    line_format: Annotated[
        str,
        typer.Option(
            "--format",
            help="Line format: auto, json, cryptofeed (`<s>: {json}`),"
            " hftbacktest (`<ns> {json}`).",
        ),
    ] = "auto",
    symbol: Annotated[
        str | None,
        typer.Option(
            "--symbol",
            help="Symbol of lines that do not name one (bare REST depth snapshots, CSVs"
            " not named SYMBOL-trades-...).",
        ),
    ] = None,
    json_out: JsonFlag = False,
    data_dir: DataDir = None,
    config: ConfigFile = None,
    bus: BusUrl = None,
    store: StoreUrl = None,
    verbose: Verbose = False,
) -> None:
    """Ingest recorded Binance messages through the full pipeline; exit 0 once all is stored."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    _setup_logging(verbose)
    settings = _settings(config, data_dir, bus, store)

    from tickvault.sources.binance.capture_formats import FORMATS
    from tickvault.sources.binance.markets import check_market

    try:
        check_market(exchange)
        if line_format not in FORMATS:
            raise ConfigError(f"--format must be one of {', '.join(FORMATS)}")
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None

    show_progress = not json_out and err.is_terminal

    async def main() -> int:
        from tickvault.service.replay_start import start_replay

        files = list(paths)

        def start() -> ReplayStart:
            return start_replay(
                settings, files, restart, exchange=exchange, line_format=line_format, symbol=symbol
            )

        # Lock and producer first: the child starts while this process imports the rest.
        # An interactive run first reads where earlier runs stopped and counts the lines
        # (its progress bar needs both, and the child moves the checkpoints).
        if show_progress:
            from tickvault.service.replay_job import plan_replay

            plan = plan_replay(settings, files, restart, exchange=exchange)
            started = start()
        else:
            started = start()
            from tickvault.service.replay_job import ReplayPlan

            plan = ReplayPlan(files, 0, 0)
        try:
            return await replay_started(plan, started)
        except BaseException:
            started.abandon()  # a no-op once the pipeline has stopped them itself
            raise

    async def replay_started(plan: ReplayPlan, started: ReplayStart) -> int:
        from tickvault.service.replay_job import run_replay

        progress = Progress(
            TextColumn("[bold]replay[/bold]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("lines · stored {task.fields[stored]:,}"),
            TimeElapsedColumn(),
            console=err,
            disable=not show_progress,
        )
        with progress:
            task = progress.add_task(
                "replay", total=plan.total_lines, stored=0, completed=plan.resume_at
            )
            summary, produced = await run_replay(
                settings,
                plan,
                restart=restart,
                exchange=exchange,
                started=started,
                handle_signals=True,
                on_progress=lambda p: progress.update(
                    task, completed=plan.resume_at + p.lines, stored=p.writer.stats.inserted
                ),
            )
            progress.update(task, completed=plan.total_lines, stored=summary.stored)
        result = summary.as_dict() | {
            "skipped_lines": produced.skipped_lines,
            "files_already_done": produced.files_already_done,
            "exchange": exchange,
            "skipped": produced.skipped,
            "foreign_messages": produced.foreign,
            "header_markets": produced.header_markets,
            "quotes_stamped_with_replay_time": produced.untimed_quotes,
        }
        _replay_warnings(exchange, produced)
        if json_out:
            _print_json(result)
        else:
            out.print(
                f"read {summary.read:,} lines · stored {summary.stored:,} · duplicates"
                f" {summary.duplicates:,} · dead-lettered {sum(summary.dead_letters.values()):,}"
                f" · {summary.seconds:.1f} s",
                highlight=False,
            )
            if produced.skipped_lines or produced.files_already_done:
                out.print(
                    f"resumed: skipped {produced.skipped_lines:,} lines already"
                    f" published, {produced.files_already_done} file(s) already done",
                    highlight=False,
                )
            for reason, n in sorted(summary.dead_letters.items(), key=lambda kv: -kv[1]):
                out.print(f"  dead letter: {n:>8,}  {reason}", highlight=False)
            for reason, n in sorted(produced.skipped.items(), key=lambda kv: -kv[1]):
                out.print(f"  skipped:     {n:>8,}  {reason}", highlight=False)
            if not summary.drained:
                out.print(f"[yellow]not drained: backlog {summary.backlog}[/yellow]")
        return 0 if summary.drained or summary.stopped else 1

    code = _run(main())
    raise typer.Exit(code)


def _replay_warnings(exchange: str, produced: ProducerResult) -> None:
    """Warn once per run about what the user may not expect (stderr, also with --json)."""
    if produced.foreign:
        err.print(
            f"[yellow]warning:[/yellow] {produced.foreign:,} messages carry fields that"
            f" market {exchange!r} does not send (futures fields replayed as spot, or the"
            " reverse): check --exchange",
            highlight=False,
        )
    for named in produced.header_markets:
        err.print(
            f"[yellow]warning:[/yellow] the capture's header (its websocket URL) names market"
            f" {named!r}, replayed as {exchange!r}: check --exchange",
            highlight=False,
        )
    if produced.untimed_quotes:
        err.print(
            f"note: {produced.untimed_quotes:,} book tickers carry no time of their own and"
            " the file no receive time: their ts_recv is the replay time",
            highlight=False,
        )


# -- query / status ---------------------------------------------------------------------------


def _offline_store(settings: Settings) -> Store:
    from tickvault.stores import open_store

    url = settings.store_url
    path = url[len("duckdb:///") :].partition("?")[0]  # options such as ?query_timeout_s=
    if url.startswith("duckdb:///") and not Path(path).exists():
        raise ConfigError(
            f"no store at {url} yet: run `tickvault demo` or `tickvault replay` first"
        )
    return open_store(url, read_only=True)


async def _ask_owner_or_open(
    settings: Settings, payload: dict[str, Any], offline: Callable[[], Awaitable[T]]
) -> Any:
    """Ask the live owner of the data dir, or, when there is none, run ``offline``.

    While an owner starts or stops, its files are locked but its control socket is not
    answering; that window is waited out (polling both) rather than shown as an error.
    """
    deadline = time.monotonic() + 20.0
    while True:
        answer = control.request(settings.data_dir, payload)
        if answer is not None:
            return answer
        try:
            return await offline()
        except StoreUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


@app.command()
def query(
    sql: Annotated[str, typer.Argument(help="One read-only SELECT statement.")],
    json_out: JsonFlag = False,
    limit: Annotated[int, typer.Option(help="Return at most this many rows.")] = 10_000,
    data_dir: DataDir = None,
    config: ConfigFile = None,
    store: StoreUrl = None,
) -> None:
    """Run a read-only query (works while `run` or `replay` holds the data dir)."""
    settings = _settings(config, data_dir, None, store)

    async def offline() -> dict[str, Any]:
        st = _offline_store(settings)
        try:
            r = await st.query(sql, limit)
        finally:
            await st.close()
        return {"columns": r.columns, "rows": r.rows, "truncated": r.truncated}

    async def main() -> dict[str, Any]:
        payload = {"op": "query", "sql": sql, "limit": limit}
        return dict(await _ask_owner_or_open(settings, payload, offline))

    try:
        result = _run(main())
    except typer.Exit:
        raise
    columns, rows = result["columns"], result["rows"]
    if json_out:
        _print_json([dict(zip(columns, r, strict=True)) for r in rows])
        return
    table = Table(*columns)
    for r in rows:
        table.add_row(*("NULL" if v is None else str(v) for v in r))
    out.print(table)
    if result.get("truncated"):
        err.print(f"(first {limit} rows shown)")


@app.command()
def status(
    json_out: JsonFlag = False,
    data_dir: DataDir = None,
    config: ConfigFile = None,
    bus: BusUrl = None,
    store: StoreUrl = None,
) -> None:
    """Rows per table, bus backlog and pending per group, dead letters, last write time."""
    from tickvault.core.snapshot import StatusSnapshot
    from tickvault.service.status import collect_status

    settings = _settings(config, data_dir, bus, store)

    async def offline() -> StatusSnapshot:
        bus_ = open_bus(settings.bus_url)
        st = None
        try:
            try:
                st = _offline_store(settings)
                await st.ensure_schema()
            except ConfigError:
                st = None
            return await collect_status(
                bus_,
                st,
                bus_url=settings.bus_url,
                store_url=settings.store_url,
                data_dir=settings.data_dir,
            )
        finally:
            await bus_.close()
            if st is not None:
                await st.close()

    async def main() -> StatusSnapshot:
        answer = await _ask_owner_or_open(settings, {"op": "status"}, offline)
        if isinstance(answer, StatusSnapshot):
            return answer
        return StatusSnapshot.from_builtins(answer)  # the owner's answer on the socket

    data = _run(main())
    if json_out:
        _print_json(data.to_builtins())
        return
    _print_status(data)


def _print_status(data: StatusSnapshot) -> None:
    out.print(f"[bold]data dir[/bold] {data.data_dir}  running: {data.running}")
    out.print(f"[bold]store[/bold] {data.store.url}")
    for name, n in (data.store.tables or {}).items():
        out.print(f"  {name:<14} {n:>12,} rows")
    if data.store.last_write_at:
        age = time.time() - data.store.last_write_at
        out.print(f"  last write {age:,.1f} s ago")
    out.print(f"[bold]bus[/bold] {data.bus.url}")
    if data.bus.error:
        out.print(f"  unreachable: {data.bus.error}", highlight=False)
    for stream in data.bus.streams:
        out.print(f"  stream {stream.stream}: {stream.length:,} entries")
        if stream.retention:
            ms = stream.retention["retention_ms"]
            window = "forever" if ms < 0 else f"{ms / 3_600_000:,.1f} h"
            out.print(f"    retention {window} ({stream.retention['source']})")
        for g in stream.groups:
            out.print(
                f"    group {g.name}: lag {g.lag:,}, pending {g.pending:,},"
                f" consumers {g.consumers}",
                highlight=False,
            )
    for src in data.sources or []:
        seen = src.last_message_age_s
        out.print(
            f"[bold]source[/bold] {src.name} ({src.kind}): connected {src.connected},"
            f" last message {'-' if seen is None else f'{seen:,.1f} s'} ago,"
            f" {src.messages:,} messages, {src.reconnects} reconnects, gaps open"
            f" {src.gaps_open} / backfilled {src.gaps_backfilled} / unrecoverable"
            f" {src.gaps_unrecoverable}",
            highlight=False,
        )
        if src.detail:
            out.print(f"  {src.detail}", highlight=False)
    dl = data.dead_letters
    total = "unknown (bus unreachable)" if dl.total is None else f"{dl.total:,}"
    out.print(f"[bold]dead letters[/bold] {total}")
    for reason, n in dl.by_reason.items():
        out.print(f"  {n:>8,}  {reason}", highlight=False)
    _print_outage_state(data)


def _print_outage_state(data: StatusSnapshot) -> None:
    """Circuit breakers, failover and spool of a running owner (incident 002)."""
    breakers = data.breakers or []
    if breakers:
        out.print("[bold]circuit breakers[/bold]")
    for b in breakers:
        last = b.transitions[-1] if b.transitions else None
        since = f", last: {last.from_state} -> {last.to} ({last.reason})" if last else ""
        retry = f", next trial in {b.retry_in_s:.1f} s" if b.state == "open" else ""
        out.print(
            f"  {b.name:<28} {b.state:<9} opened {b.times_opened}x{retry}{since}",
            highlight=False,
        )
    failover = data.failover or None
    if failover is not None and failover.path:
        bus_error = data.bus.error
        out.print(
            f"[bold]traffic[/bold] goes to {failover.path}"
            f" (last append: {failover.last_path or '-'})"
            + (f"; primary bus: {bus_error}" if bus_error else ""),
            highlight=False,
        )
    spool = failover.spool if failover is not None else None
    if spool:
        out.print(
            f"[bold]spool[/bold] {spool.dir}: {spool.backlog:,} waiting,"
            f" {spool.size_bytes:,} / {spool.quota_bytes:,} bytes ({spool.full_policy}),"
            f" dropped {spool.dropped_records:,} records, torn {spool.torn},"
            f" corrupt {spool.corrupt}",
            highlight=False,
        )


@app.command("config-reference")
def config_reference() -> None:
    """Print the Markdown reference of every configuration setting."""
    out.print(settings_reference(), markup=False, highlight=False)


def main() -> None:
    install_log_redaction()
    try:
        app()
    except TickvaultError as exc:
        err.print(f"[red]error:[/red] {redact_text(str(exc))}", highlight=False)
        sys.exit(EXIT_FAULT if isinstance(exc, ResourceFault) else 2)
