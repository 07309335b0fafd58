"""The one place that builds sources from the settings (``[[sources]]`` tables).

``tickvault run`` builds all configured sources with :func:`build_sources`, ``tickvault
backfill`` one collector with :func:`build_collector`; the pipeline receives what they
built. API keys come from ``env`` (the command line passes ``os.environ``): only the
process that reads its environment knows them, and they never reach the settings, a log or
the status.

Every source module is imported inside the function that needs it, so importing this
module stays light and ``tickvault run`` loads only the sources it is configured with.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from pathlib import Path

from tickvault.core.config import (
    BinanceSettings,
    PolygonSettings,
    ReplaySettings,
    Settings,
    SyntheticSettings,
)
from tickvault.core.errors import ConfigError
from tickvault.sources.base import Source


def build_sources(settings: Settings, env: Mapping[str, str]) -> list[Source]:
    """The sources of every ``[[sources]]`` table, in the order of the config file."""
    from tickvault.delivery.checkpoints import CheckpointStore
    from tickvault.sources.replay import ReplaySource
    from tickvault.sources.synthetic import SyntheticSource

    sources: list[Source] = []
    for opts in settings.sources:
        if isinstance(opts, SyntheticSettings):
            sources.append(
                SyntheticSource(
                    symbols=opts.symbols,
                    rate=opts.rate,
                    seed=opts.seed,
                    exchange=opts.exchange,
                    name=opts.name,
                    limit=opts.limit,
                    first_id=opts.first_id,
                    start_us=opts.start_us,
                )
            )
        elif isinstance(opts, ReplaySettings):
            sources.append(
                ReplaySource([Path(p) for p in opts.paths], CheckpointStore(settings.state_path))
            )
        elif isinstance(opts, BinanceSettings | PolygonSettings):
            sources.append(build_collector(opts, settings, env))
    return sources


def _secret(env: Mapping[str, str], name: str | None, what: str, required: bool) -> str | None:
    if not name:
        return None
    value = env.get(name, "").strip()
    if not value and required:
        raise ConfigError(f"{what}: set the environment variable {name} to your API key")
    return value or None


def build_collector(
    opts: BinanceSettings | PolygonSettings,
    settings: Settings,
    env: Mapping[str, str],
    *,
    refresh: bool = False,
) -> Source:
    """The live source for a ``[[sources]]`` table of kind ``binance`` or ``polygon``
    (``refresh``: download the Polygon range again, covered days included)."""
    if isinstance(opts, BinanceSettings):
        from tickvault.sources.binance.collector import BinanceOptions, BinanceSource

        record_dir = opts.record_dir
        if record_dir is not None and not Path(record_dir).is_absolute():
            record_dir = str(settings.data_dir / record_dir)
        options = BinanceOptions(
            symbols=[s.upper() for s in opts.symbols],
            channels=list(opts.channels),
            ws_url=opts.ws_url,
            rest_url=opts.rest_url,
            market=opts.market,
            api_key=_secret(env, opts.api_key_env, "binance", required=False),
            max_streams_per_connection=opts.max_streams_per_connection,
            stall_timeout_s=opts.stall_timeout_s,
            rollover_after_s=opts.rollover_after_s,
            overlap_s=opts.overlap_s,
            backoff_initial_s=opts.backoff_initial_s,
            backoff_max_s=opts.backoff_max_s,
            gap_settle_s=opts.gap_settle_s,
            rest_attempts=opts.rest_attempts,
            depth_snapshot_limit=opts.depth_snapshot_limit,
            book_snapshot_every_s=opts.book_snapshot_every_s,
            record_dir=record_dir,
            record_rotate_s=opts.record_rotate_s,
            record_rotate_bytes=int(opts.record_rotate_mb * (1 << 20)),
        )
        return BinanceSource(options, name=opts.name)
    from tickvault.sources.polygon.collector import (
        CoverageStore,
        PolygonOptions,
        PolygonSource,
        parse_day,
    )

    start = parse_day(opts.start, "from")
    end = parse_day(opts.end, "to") if opts.end else dt.datetime.now(dt.UTC).date()
    options_p = PolygonOptions(
        tickers=list(opts.tickers),
        start=start,
        end=end,
        timeframe=opts.timeframe,
        rest_url=opts.rest_url,
        api_key=_secret(env, opts.api_key_env, "polygon", required=True),
        chunk_days=opts.chunk_days,
        rest_attempts=opts.rest_attempts,
        backoff_max_s=opts.backoff_max_s,
        adjusted=opts.adjusted,
        refresh=refresh,
    )
    coverage = CoverageStore(settings.state_path)
    try:
        return PolygonSource(options_p, coverage, name=opts.name)
    except BaseException:
        coverage.close()
        raise
