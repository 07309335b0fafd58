"""``tickvault backfill``: download history through the same bus → writer → store path.

``tickvault backfill polygon --ticker C:EURUSD --timeframe 1m --from 2024-01-01
--to 2024-06-30`` downloads the bars, shows a progress bar (days done of days to do), and
prints what it stored, how many requests it needed and which expected days have no bars.
Progress is checkpointed per chunk of days, so an interrupted run resumes and a finished
range is not downloaded again (``--refresh`` downloads it again and names the days whose
stored bars differ). Exit 0 when everything requested is stored, 1 when the venue stopped
the download (a refusal, also one sent with HTTP 200; rerun to resume) or the writer could
not drain, 2 for errors the user must fix (no key, a bad ticker, the other price basis).

The collector itself is built by :func:`tickvault.service.wiring.build_collector`, the one
place that builds sources from the settings (``tickvault run`` builds its sources there too).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tickvault.cli.options import (
    BusUrl,
    ConfigFile,
    DataDir,
    JsonFlag,
    StoreUrl,
    Verbose,
    print_json,
    settings_from,
)
from tickvault.core.config import (
    PolygonSettings,
    Settings,
)
from tickvault.core.errors import ConfigError, TickvaultError

if TYPE_CHECKING:
    from tickvault.sources.polygon.collector import PolygonSource
    from tickvault.stores.base import Store

app = typer.Typer(help="Download history through the pipeline.", no_args_is_help=True)
out = Console()
err = Console(stderr=True)


async def _refuse_other_basis(store: Store, source: PolygonSource) -> None:
    """ConfigError when the store holds bars of a requested series on the other basis.

    The state file already refuses that for series it covered; this also catches a store
    filled from another data directory. Tickers are validated (no quotes) before this.
    """
    o = source.options
    tickers = ", ".join(f"'{t}'" for t in o.tickers)
    result = await store.query(
        f"SELECT DISTINCT symbol FROM bars WHERE source = 'polygon' AND timeframe ="
        f" '{o.timeframe}' AND symbol IN ({tickers}) AND adjusted = {str(not o.adjusted).lower()}"
    )
    if result.rows:
        have = "unadjusted" if o.adjusted else "adjusted"
        names = ", ".join(str(r[0]) for r in result.rows)
        raise ConfigError(
            f"polygon: the store holds {have} {o.timeframe} bars of {names}; bars of the other"
            " basis would share their keys and mix with them silently. Use another store"
            " (--store / --data-dir), or keep the stored basis."
        )


@app.command("polygon")
def polygon(
    ticker: Annotated[
        list[str], typer.Option("--ticker", help="Polygon ticker, e.g. C:EURUSD (repeatable).")
    ],
    from_: Annotated[str, typer.Option("--from", help="First day, YYYY-MM-DD.")],
    to: Annotated[
        str | None, typer.Option("--to", help="Last day, inclusive (default: today, UTC).")
    ] = None,
    timeframe: Annotated[str, typer.Option(help="Bar size: 1m, 5m, 1h, 1d...")] = "1m",
    rest_url: Annotated[
        str, typer.Option("--rest-url", help="API base URL.")
    ] = "https://api.polygon.io",
    api_key_env: Annotated[
        str, typer.Option("--api-key-env", help="Environment variable with the API key.")
    ] = "POLYGON_API_KEY",
    chunk_days: Annotated[
        int | None, typer.Option(help="Days per request range and checkpoint.")
    ] = None,
    adjusted: Annotated[
        bool,
        typer.Option(
            "--adjusted/--unadjusted",
            help="Split-adjusted prices (default) or as traded; one series keeps one basis.",
        ),
    ] = True,
    refresh: Annotated[
        bool,
        typer.Option(
            "--refresh",
            help="Download the range again, covered days too, and replace stored bars that"
            " differ from the venue's (previous versions kept in state.sqlite3).",
        ),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="With --refresh: report the bars that differ, replace none (new bars are"
            " still stored).",
        ),
    ] = False,
    json_out: JsonFlag = False,
    data_dir: DataDir = None,
    config: ConfigFile = None,
    bus: BusUrl = None,
    store: StoreUrl = None,
    verbose: Verbose = False,
) -> None:
    """Download Polygon aggregates (bars) into the `bars` table, resumably."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if dry_run and not refresh:
        err.print("[red]error:[/red] --dry-run goes with --refresh", highlight=False)
        raise typer.Exit(2)
    try:
        code = asyncio.run(
            _polygon(
                PolygonSettings(
                    tickers=list(ticker),
                    start=from_,
                    end=to,
                    timeframe=timeframe,
                    rest_url=rest_url,
                    api_key_env=api_key_env,
                    chunk_days=chunk_days,
                    adjusted=adjusted,
                ),
                settings_from(config, data_dir, bus, store),
                json_out,
                refresh,
                dry_run,
            )
        )
    except TickvaultError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    raise typer.Exit(code)


async def _polygon(
    opts: PolygonSettings, settings: Settings, json_out: bool, refresh: bool, dry_run: bool = False
) -> int:
    from tickvault.service.pipeline import Pipeline
    from tickvault.service.wiring import build_collector
    from tickvault.sources.polygon.collector import PolygonSource
    from tickvault.sources.polygon.refresh import HeldBack, differing_days, replace_held

    source = build_collector(opts, settings, os.environ, refresh=refresh)
    assert isinstance(source, PolygonSource)
    planned = len(source.chunks)
    async with Pipeline(settings, [source], drain_timeout=None) as pipeline:
        await _refuse_other_basis(pipeline.store, source)
        if refresh:
            source.held_back = HeldBack(pipeline.store)
        pipeline.install_signal_handlers()
        progress = Progress(
            TextColumn(f"[bold]polygon {', '.join(opts.tickers)} {opts.timeframe}[/bold]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("days · {task.fields[bars]:,} bars · stored {task.fields[stored]:,}"),
            TimeElapsedColumn(),
            console=err,
            disable=json_out or not err.is_terminal,
        )
        with progress:
            task = progress.add_task("backfill", total=source.days_total, bars=0, stored=0)
            run_task = asyncio.create_task(pipeline.run())
            while not run_task.done():
                progress.update(
                    task,
                    completed=source.days_done,
                    bars=source.bars,
                    stored=pipeline.writer.stats.inserted,
                )
                await asyncio.wait({run_task}, timeout=0.25)
            summary = run_task.result()
            progress.update(task, completed=source.days_done, stored=summary.stored)
        differs: dict[str, list[str]] = {}
        replaced = 0
        differs_after: dict[str, list[str]] = {}
        digest, held = source.refresh_digest, source.held_back
        if digest is not None and held is not None and summary.drained and source.error is None:
            differs = await differing_days(pipeline.store, digest, "polygon", opts.timeframe)
            replaced = await replace_held(
                pipeline.store, held, settings.state_path, dry_run=dry_run
            )
            if replaced and not dry_run:
                differs_after = await differing_days(
                    pipeline.store, digest, "polygon", opts.timeframe
                )
    stats = source.rest.stats
    result = {
        "tickers": opts.tickers,
        "timeframe": opts.timeframe,
        "chunks_planned": planned,
        "chunks_done": source.chunks_done,
        "days_planned": source.days_total,
        "days_done": source.days_done,
        "bars": source.bars,
        "stored": summary.stored,
        "duplicates": summary.duplicates,
        "requests": stats.requests,
        "retries": stats.retries,
        "throttled": stats.throttled,
        "adjusted": opts.adjusted,
        "refresh": refresh,
        "delayed_pages": source.delayed_pages,
        "missing_days": source.missing_days,
        "no_data_before": source.no_data_before,
        "quiet_sessions": source.quiet_sessions,
        "calendar_notes": sorted(source.calendar_notes),
        "refresh_differs": differs,
        "refresh_replaced": 0 if dry_run else replaced,
        "refresh_would_replace": replaced if dry_run else 0,
        "refresh_differs_after": differs_after,
        "dead_letters": summary.dead_letters,
        "drained": summary.drained,
        "error": source.error,
    }
    if json_out:
        print_json(result)
    else:
        if not planned:
            out.print("nothing to download: the whole range is already stored")
        out.print(
            f"{source.bars:,} bars downloaded in {stats.requests} requests ({stats.retries}"
            f" retries, {stats.throttled} rate-limited) · stored {summary.stored:,} · duplicates"
            f" {summary.duplicates:,} · {summary.seconds:.1f} s",
            highlight=False,
        )
        for name, days in source.missing_days.items():
            shown = ", ".join(days[:10]) + (f" … (+{len(days) - 10})" if len(days) > 10 else "")
            out.print(f"missing days for {name} ({len(days)}): {shown}", highlight=False)
        for name, first in source.no_data_before.items():
            said = f"no data before {first}" if first else "no bars at all in the range"
            out.print(f"{name}: {said} (not counted as missing days)", highlight=False)
        for name, quiet in source.quiet_sessions.items():
            out.print(f"{name}: {quiet} session(s) without trades", highlight=False)
        for name, days in differs.items():
            out.print(
                f"[yellow]{name}: stored bars differ from the venue's on {len(days)} day(s)"
                f" ({', '.join(days[:5])}{' …' if len(days) > 5 else ''})[/yellow]",
                highlight=False,
            )
        if replaced:
            out.print(
                f"dry run: {replaced:,} stored bar(s) would be replaced"
                if dry_run
                else f"replaced {replaced:,} stored bar(s) with the venue's; previous versions"
                " kept in polygon_replaced of state.sqlite3",
                highlight=False,
            )
        for name, days in differs_after.items():
            out.print(
                f"[yellow]{name}: still differ after the replacement on {len(days)} day(s)"
                f" ({', '.join(days[:5])})[/yellow]",
                highlight=False,
            )
        for note in sorted(source.calendar_notes):
            out.print(f"[yellow]{note}[/yellow]", highlight=False)
        if source.error:
            out.print(
                f"[yellow]stopped early: {source.error}; rerun the same command to resume[/yellow]",
                highlight=False,
            )
        if not summary.drained:
            out.print(f"[yellow]not drained: backlog {summary.backlog}[/yellow]")
    return 0 if summary.drained and source.error is None else 1
