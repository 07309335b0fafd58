"""Typed settings: a TOML file, ``TICKVAULT_*`` environment variables, command-line flags.

Precedence (highest first): command-line flags, environment, the ``--config`` file, defaults.
Environment variables are read here and in the CLI only. Unknown keys in the file are an
error (a typo must not silently fall back to a default).

Example::

    [bus]
    url = "sqlite:////var/lib/tickvault/bus.sqlite3"   # four slashes: an absolute path

    [store]
    url = "duckdb:////var/lib/tickvault/ticks.duckdb"  # (three slashes: relative)

    [writer]
    batch_records = 20000

    [[sources]]
    kind = "synthetic"
    rate = 5000
    symbols = ["BTCUSDT", "ETHUSDT"]
    seed = 7
"""

from __future__ import annotations

import os
import tomllib
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from tickvault.core.errors import ConfigError
from tickvault.core.redact import register_secret

if TYPE_CHECKING:  # the rules module loads Arrow; reading settings must not
    from tickvault.core.rules import TimeWindow

DEFAULT_DATA_DIR = "./tickvault-data"
ENV_DATA_DIR = "TICKVAULT_DATA_DIR"
ENV_BUS_URL = "TICKVAULT_BUS_URL"
ENV_STORE_URL = "TICKVAULT_STORE_URL"


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class BusSettings(_Section):
    url: str | None = None
    """Bus URL; default ``sqlite:///<data dir>/bus.sqlite3``."""
    stream: str = "ticks"
    """Stream that carries market-data frames."""
    group: str = "writers"
    """Consumer group of the store writers."""
    fallback: list[str] = msgspec.field(default_factory=list)
    """Fallback bus URLs, tried in order when the primary fails (a writer consumes each)."""
    spool_dir: str | None = None
    """Disk spool for frames no bus takes; default ``<data dir>/spool``; ``""`` disables it."""
    spool_quota: int | str = "1GiB"
    """Disk the spool may use (bytes, or e.g. ``512MiB``)."""
    spool_full_policy: str = "block"
    """At the quota: ``block`` (hold the sources back) or ``drop_newest`` (counted, alerted)."""
    spool_fsync: str = "batch"
    """``batch`` (fsync once per publisher batch) or ``never`` (leave it to the OS)."""
    health_check_s: float = 2.0
    """How often a failed bus is tried again and the spool drained."""
    retention: str = "7d"
    """Acknowledged entries are kept this long for ``tickvault rebuild`` (``0s``: trim all)."""
    retention_bytes: int | str = "1GiB"
    """...and trimmed oldest first while the stream holds more payload than this."""


class StoreSettings(_Section):
    url: str | None = None
    """Store URL; default ``duckdb:///<data dir>/ticks.duckdb``."""


class WriterSettings(_Section):
    batch_records: int = 20_000
    """Records per store write at most."""
    linger_ms: int = 10
    """How long the writer waits for more records once some arrived. Past it, it still takes
    whatever is already waiting, so batches grow with the load by themselves."""
    max_deliveries: int = 5
    """An entry delivered more often than this is dead-lettered."""
    claim_idle_ms: int = 60_000
    """Entries pending this long on another consumer are taken over."""
    consumer: str | None = None
    """Consumer name; default ``<hostname>-writer`` (stable across restarts)."""


class BreakerSettings(_Section):
    failure_threshold: int = 5
    """Consecutive store failures that open the store breaker."""
    bus_failure_threshold: int = 1
    """Consecutive failed appends that open a bus breaker (an append already retries)."""
    success_threshold: int = 2
    """Consecutive half-open successes that close a breaker."""
    open_base_s: float = 0.5
    """Open timeout of a first opening; doubles per consecutive opening (jittered)."""
    open_max_s: float = 15.0
    """Cap of the open timeout (a bus breaker is capped at ``[bus] health_check_s``)."""
    jitter: float = 0.2
    """The open timeout is scaled by a random factor in ``[1 - jitter, 1]``."""


class ValidationSettings(_Section):
    """Plausibility windows for timestamps (see ``tickvault.core.rules``)."""

    earliest: str = "1990-01-01"
    """No timestamp of any record may be older than this day (UTC)."""
    replay_earliest: str = "2017-07-01"
    """...nor, in replayed Binance recordings, older than the venue's first day."""
    future_s: float = 3600.0
    """How far ahead of the local clock a timestamp may be."""
    live_max_age_s: float = 7 * 86_400.0
    """How far behind the local clock a live source's timestamp may be (backfills included)."""

    def __post_init__(self) -> None:
        for name in ("earliest", "replay_earliest"):
            try:
                date.fromisoformat(getattr(self, name))
            except ValueError:
                raise ConfigError(
                    f"[validation] {name} must be a day like 2017-07-01,"
                    f" got {getattr(self, name)!r}"
                ) from None
        if self.future_s < 0 or self.live_max_age_s <= 0:
            raise ConfigError("[validation] future_s must be >= 0 and live_max_age_s > 0")

    def _window(self, earliest: str, max_age_s: float | None = None) -> TimeWindow:
        from tickvault.core.rules import TimeWindow, day_us

        return TimeWindow(day_us(date.fromisoformat(earliest)), self.future_s, max_age_s)

    @property
    def history(self) -> TimeWindow:
        """Any record: from ``earliest`` to ``future_s`` ahead (the writer checks this)."""
        return self._window(self.earliest)

    @property
    def replay(self) -> TimeWindow:
        """Replayed Binance recordings: from ``replay_earliest``."""
        return self._window(max(self.earliest, self.replay_earliest))

    @property
    def live(self) -> TimeWindow:
        """Live sources: at most ``live_max_age_s`` old."""
        return self._window(self.earliest, self.live_max_age_s)


class ShutdownSettings(_Section):
    grace_s: float = 20.0
    """After SIGTERM/SIGINT: how long to publish what is buffered and write what is on the
    bus before stopping anyway (exit 0). Whatever is left stays durable for the next start:
    on the bus, in the spool, or unread in the input (its checkpoint was not advanced)."""


class PublisherSettings(_Section):
    frame_records: int = 5_000
    """Records per frame (bus entry) at most."""


class SyntheticSettings(_Section):
    kind: str = "synthetic"
    name: str = "synthetic"
    rate: float = 10_000.0
    """Records per second (0 = as fast as possible)."""
    symbols: list[str] = msgspec.field(default_factory=lambda: ["BTCUSDT", "ETHUSDT"])
    seed: int = 42
    exchange: str = "synthetic"
    limit: int | None = None
    """Stop after this many records (none: run until stopped)."""
    first_id: int | None = None
    """First trade/update id per symbol; none: derived from the start time, so a second
    run adds new rows. Set it, with ``seed`` and ``start_us``, for a repeatable run."""
    start_us: int | None = None
    """Event time of the first record (µs since the epoch); none: the wall clock. When set,
    times advance by ``1e6 / rate`` µs per record and the source counts as history (its
    times are checked against the history window, not the live one)."""


class ReplaySettings(_Section):
    kind: str = "replay"
    name: str = "replay"
    paths: list[str] = msgspec.field(default_factory=list)
    """Files of recorded Binance websocket messages (JSON lines, optionally gzip)."""


class UpkeepSettings(_Section):
    enabled: bool = True
    """Run stream upkeep in the service: one pass at start, then every ``every_s``."""
    every_s: float = 120.0
    """Seconds between upkeep passes (reclaim, dead consumers, dead letters, trim)."""
    zombie_idle_ms: int = 3_600_000
    """A consumer idle this long with nothing pending is deleted."""
    trim: bool = True
    """Remove bus entries every group has acknowledged."""


class BinanceSettings(_Section):
    kind: str = "binance"
    name: str = "binance"
    symbols: list[str] = msgspec.field(default_factory=lambda: ["BTCUSDT"])
    """Spot symbols, e.g. ``["BTCUSDT", "ETHUSDT"]``."""
    channels: list[str] = msgspec.field(default_factory=lambda: ["trade"])
    """Any of ``trade``, ``aggTrade``, ``bookTicker``, ``depth`` (diffs at 100 ms)."""
    ws_url: str = "wss://stream.binance.com:9443"
    """Websocket base URL (testnets, mirrors and test servers override it)."""
    rest_url: str = "https://api.binance.com"
    """REST base URL for backfills and depth snapshots; left at this default, a collector of
    another market uses that market's own (``https://fapi.binance.com`` for USD-M...)."""
    market: str | None = None
    """The Binance market (``binance``, ``binance-usdm``, ``binance-coinm``, ``binance-us``,
    ``binance-tr``): the ``exchange`` of every row and the REST paths used. Unset: from
    ``ws_url``'s host (set it for testnets and mirrors, whose hosts say nothing)."""
    api_key_env: str | None = None
    """Environment variable holding an API key; enables exact trade backfill
    (``historicalTrades``). The key itself never goes into the config file."""
    max_streams_per_connection: int = 1024
    """Streams per websocket connection (the venue's limit is 1024)."""
    stall_timeout_s: float = 60.0
    """No message for this long → reconnect (raise it for quiet symbols)."""
    rollover_after_s: float = 82_800.0
    """Replace each connection after this long, overlapping (the venue cuts at 24 h)."""
    overlap_s: float = 5.0
    """How long old and new connection are read together at a rollover."""
    backoff_initial_s: float = 0.5
    """First reconnect / REST retry delay; doubles up to ``backoff_max_s``, with jitter."""
    backoff_max_s: float = 30.0
    gap_settle_s: float = 2.0
    """A trade-id hole must stay unfilled this long before it is a gap."""
    rest_attempts: int = 8
    """REST attempts per request (429 / 5xx / network errors) before giving up."""
    depth_snapshot_limit: int = 1000
    """Levels per side in REST depth snapshots and local book snapshots."""
    book_snapshot_every_s: float = 300.0
    """How often the local book of each depth symbol is written to ``book_snapshots``."""
    record_dir: str | None = None
    """Also record every raw frame to rotating ``.jsonl.gz`` files here (for replay)."""
    record_rotate_s: float = 3600.0
    record_rotate_mb: float = 256.0

    def __post_init__(self) -> None:
        if self.market is not None:
            from tickvault.sources.binance.markets import MARKETS

            if self.market not in MARKETS:
                raise ValueError(f"market {self.market!r} not among {', '.join(MARKETS)}")
        known = ("trade", "aggTrade", "bookTicker", "depth")
        bad = [c for c in self.channels if c not in known]
        if bad or not self.channels:
            raise ValueError(f"channels {bad or self.channels} not among {', '.join(known)}")
        if not self.symbols:
            raise ValueError("symbols must not be empty")


class PolygonSettings(_Section):
    kind: str = "polygon"
    name: str = "polygon"
    tickers: list[str] = msgspec.field(default_factory=list)
    """Polygon tickers, e.g. ``["C:EURUSD", "X:BTCUSD", "AAPL"]``."""
    timeframe: str = "1m"
    """Bar size: ``1m``, ``5m``, ``1h``, ``1d``..."""
    start: str = msgspec.field(default="", name="from")
    """First day, ``YYYY-MM-DD`` (the TOML key is ``from``)."""
    end: str | None = msgspec.field(default=None, name="to")
    """Last day, inclusive (the TOML key is ``to``); default today (UTC)."""
    rest_url: str = "https://api.polygon.io"
    api_key_env: str = "POLYGON_API_KEY"
    """Environment variable holding the API key."""
    chunk_days: int | None = None
    """Days per request range and checkpoint (default by timeframe: 7 for minutes)."""
    rest_attempts: int = 8
    backoff_max_s: float = 60.0
    adjusted: bool = True
    """Split-adjusted prices (Polygon's ``adjusted``); one series keeps one basis."""

    def __post_init__(self) -> None:
        if not self.tickers:
            raise ValueError("tickers must not be empty")
        if not self.start:
            raise ValueError("from (first day, YYYY-MM-DD) is required")


class HttpSettings(_Section):
    listen: str = "127.0.0.1:8765"
    """``host:port`` of the HTTP API and dashboard (``run`` and ``demo``); loopback by
    default; ``""`` turns the server off."""
    token_env: str = "TICKVAULT_HTTP_TOKEN"
    """Environment variable holding a bearer token; when it is set and not empty, every
    endpoint but ``/health`` requires ``Authorization: Bearer <token>``."""
    query_max_rows: int = 10_000
    """Rows ``/query`` returns at most (``truncated`` says when there were more)."""
    query_timeout_s: float = 10.0
    """``/query`` answers 504 when the store takes longer than this. The store itself stops
    a user query after its own limit (``query_timeout_s`` in the store URL, default 10 s)."""
    allowed_hosts: list[str] = msgspec.field(default_factory=list)
    """Extra ``Host`` names the API answers to (the name a reverse proxy forwards); the
    listen address itself and, on loopback, ``localhost`` are always allowed."""


def http_token(settings: Settings, env: dict[str, str] | None = None) -> str | None:
    """The bearer token ``[http] token_env`` names, or None (no token: the API is open)."""
    env = dict(os.environ) if env is None else env
    name = settings.http.token_env
    token = (env.get(name) or None) if name else None
    register_secret(token)  # never shown: logs, status and errors mask it
    return token


SourceSettings = SyntheticSettings | ReplaySettings | BinanceSettings | PolygonSettings
SOURCE_KINDS: dict[str, type[_Section]] = {
    "synthetic": SyntheticSettings,
    "replay": ReplaySettings,
    "binance": BinanceSettings,
    "polygon": PolygonSettings,
}


class PositionsSettings(_Section):
    state: str = ""
    """Where position state lives: ``""`` for the data dir's ``state.sqlite3``,
    ``clickhouse://[user[:password]@]host:8123/db`` or ``sqlite:///path``. The
    ``positions`` commands' ``--state`` (env ``TICKVAULT_POSITIONS_STATE``) overrides it."""
    table: str = ""
    """A ClickHouse table holding the rows (e.g. ``position_state``), read-only when
    tickvault did not create it; ``""`` for tickvault's own."""
    columns: str = ""
    """That table's column names for tickvault's: ``trade_id=tid,quantity=qty,...``."""


class GuardianSettings(_Section):
    enabled: bool = True
    """Run the guardian inside ``tickvault run``."""
    dry_run: bool = False
    """Decide and journal, but perform no action."""
    interval_s: float = 5.0
    """Seconds between check cycles."""
    for_cycles: int = msgspec.field(default=3, name="for")
    """Consecutive cycles a finding must persist before the resource is unhealthy."""
    grace: str = "60s"
    """Resources younger than this are not judged."""
    cooldown: str = "60s"
    """After a recovery the resource's findings do not count for this long."""
    backoff_initial: str = "10s"
    backoff_max: str = "5m"
    backoff_reset: str = "10m"
    """Healthy this long → the recovery backoff starts again from ``backoff_initial``."""
    max_recoveries: int = 3
    """Recoveries per ``window``; the next finding escalates to a human."""
    window: str = "1h"
    writer_stale: str = "5m"
    """An active symbol with no new rows for this long (while the bus has a backlog)."""
    backlog_max: int = 100_000
    """Bus entries waiting (lag + pending) above which the bus is flagged."""
    pending_age_max: str = "5m"
    """Oldest pending entry older than this → stream upkeep."""
    spool_max_bytes: int | str = "512MiB"
    source_stale: str = "2m"
    wal_lag_max: int = 1000
    """QuestDB: committed transactions not yet applied above which the table is flagged."""
    zero_price_share_max: float = 0.05
    """Data quality: share of zero or non-finite prices in the newest rows."""
    quality_rows: int = 10_000
    """Rows per table the data-quality check looks at."""
    alerts: list[str] = msgspec.field(default_factory=lambda: ["log"])
    """Channels: ``log``, ``webhook``, ``telegram``."""
    webhook_url: str | None = None
    telegram_token_env: str = "TICKVAULT_TELEGRAM_TOKEN"
    """Environment variable holding the bot token (never the token itself)."""
    telegram_chat_id: str | None = None
    telegram_api_url: str = "https://api.telegram.org"
    group_wait: str = "30s"
    group_interval: str = "5m"
    repeat_interval: str = "4h"
    runbook_base_url: str | None = None
    """Absolute URL of ``docs/guardian.md`` as published; alerts link runbooks under it."""


class Settings(_Section):
    data_dir: Path = Path(DEFAULT_DATA_DIR)
    bus: BusSettings = msgspec.field(default_factory=BusSettings)
    store: StoreSettings = msgspec.field(default_factory=StoreSettings)
    writer: WriterSettings = msgspec.field(default_factory=WriterSettings)
    publisher: PublisherSettings = msgspec.field(default_factory=PublisherSettings)
    validation: ValidationSettings = msgspec.field(default_factory=ValidationSettings)
    shutdown: ShutdownSettings = msgspec.field(default_factory=ShutdownSettings)
    upkeep: UpkeepSettings = msgspec.field(default_factory=UpkeepSettings)
    breaker: BreakerSettings = msgspec.field(default_factory=BreakerSettings)
    guardian: GuardianSettings = msgspec.field(default_factory=GuardianSettings)
    http: HttpSettings = msgspec.field(default_factory=HttpSettings)
    positions: PositionsSettings = msgspec.field(default_factory=PositionsSettings)
    sources: list[Any] = msgspec.field(default_factory=list)

    @property
    def bus_url(self) -> str:
        return self.bus.url or f"sqlite:///{self.data_dir / 'bus.sqlite3'}"

    @property
    def store_url(self) -> str:
        return self.store.url or f"duckdb:///{self.data_dir / 'ticks.duckdb'}"

    @property
    def spool_path(self) -> Path | None:
        """The spool directory, or None when ``spool_dir = ""`` disables the spool."""
        if self.bus.spool_dir == "":
            return None
        return Path(self.bus.spool_dir) if self.bus.spool_dir else self.data_dir / "spool"

    @property
    def state_path(self) -> Path:
        return self.data_dir / "state.sqlite3"


def _source(raw: Any, index: int) -> Any:
    if not isinstance(raw, dict) or "kind" not in raw:
        raise ConfigError(f"sources[{index}]: each [[sources]] table needs a kind")
    kind = raw["kind"]
    if kind not in SOURCE_KINDS:
        raise ConfigError(
            f"sources[{index}]: unknown kind {kind!r} (known: {', '.join(SOURCE_KINDS)})"
        )
    try:
        return msgspec.convert(raw, SOURCE_KINDS[kind])
    except msgspec.ValidationError as exc:
        raise ConfigError(f"sources[{index}] ({kind}): {exc}") from None


def load_settings(
    config: Path | None = None,
    *,
    data_dir: Path | None = None,
    bus_url: str | None = None,
    store_url: str | None = None,
    env: dict[str, str] | None = None,
) -> Settings:
    """Resolve settings from file, environment and flags (see the module docstring)."""
    env = dict(os.environ) if env is None else env
    raw: dict[str, Any] = {}
    if config is not None:
        try:
            raw = tomllib.loads(Path(config).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {config}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{config}: invalid TOML: {exc}") from None
    sources = raw.pop("sources", [])
    file_data_dir = raw.pop("data_dir", None)
    try:
        settings = msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{config or 'settings'}: {exc}") from None
    if not isinstance(sources, list):
        raise ConfigError("sources must be an array of tables ([[sources]])")
    settings.sources = [_source(s, i) for i, s in enumerate(sources)]
    if file_data_dir is not None:
        settings.data_dir = Path(str(file_data_dir))
    if data_dir is not None:
        settings.data_dir = data_dir
    elif ENV_DATA_DIR in env:
        settings.data_dir = Path(env[ENV_DATA_DIR])
    if bus_url:
        settings.bus.url = bus_url
    elif ENV_BUS_URL in env:
        settings.bus.url = env[ENV_BUS_URL]
    if store_url:
        settings.store.url = store_url
    elif ENV_STORE_URL in env:
        settings.store.url = env[ENV_STORE_URL]
    return settings


def settings_to_builtins(settings: Settings) -> dict[str, Any]:
    """Plain data (JSON/pickle friendly) that :func:`settings_from_builtins` turns back."""
    raw: dict[str, Any] = msgspec.to_builtins(settings, enc_hook=str)
    raw["sources"] = [msgspec.to_builtins(s) | {"kind": s.kind} for s in settings.sources]
    return raw


def settings_from_builtins(raw: dict[str, Any]) -> Settings:
    raw = dict(raw)
    data_dir = Path(raw.pop("data_dir", DEFAULT_DATA_DIR))
    sources = raw.pop("sources", [])
    settings = msgspec.convert(raw, Settings)
    settings.data_dir = data_dir
    settings.sources = [_source(s, i) for i, s in enumerate(sources)]
    return settings


def settings_reference() -> str:
    """A Markdown reference of every setting, generated from the typed sections above."""
    lines = ["# Configuration reference", ""]
    sections: list[tuple[str, type[_Section]]] = [
        ("[bus]", BusSettings),
        ("[store]", StoreSettings),
        ("[writer]", WriterSettings),
        ("[publisher]", PublisherSettings),
        ("[validation]", ValidationSettings),
        ("[shutdown]", ShutdownSettings),
        ("[upkeep]", UpkeepSettings),
        ("[breaker]", BreakerSettings),
        ("[guardian]", GuardianSettings),
        ("[http]", HttpSettings),
        ("[positions]", PositionsSettings),
        ('[[sources]] kind = "synthetic"', SyntheticSettings),
        ('[[sources]] kind = "replay"', ReplaySettings),
        ('[[sources]] kind = "binance"', BinanceSettings),
        ('[[sources]] kind = "polygon"', PolygonSettings),
    ]
    for title, cls in sections:
        lines += [f"## `{title}`", "", "| key | type | default |", "| --- | --- | --- |"]
        for f in msgspec.structs.fields(cls):
            default = f.default if f.default is not msgspec.NODEFAULT else None
            if f.default_factory is not msgspec.NODEFAULT:
                default = f.default_factory()
            type_name = getattr(f.type, "__name__", None) or str(f.type).replace("typing.", "")
            lines.append(f"| `{f.encode_name}` | `{type_name}` | `{default!r}` |")
        lines.append("")
    return "\n".join(lines)
