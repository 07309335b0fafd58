"""Composes sources → publisher → bus → writer → store inside one process.

Used by ``tickvault run`` (configured sources, until a signal), ``replay`` (files, until
every record is stored and acknowledged) and ``demo`` (synthetic, for N seconds).

Shutdown order (SIGTERM/SIGINT, or the sources running out): stop the sources, flush the
publisher, let the spool drain to a bus and the writer drain what is on the bus (bounded by
``drain_timeout``), ack, exit. A second signal skips the drain; whatever is unacknowledged
stays on the bus, and whatever is spooled stays in the spool (both durable).

Outages (incident 002): the publisher appends through a
:class:`~tickvault.delivery.failover.FailoverPublisher` (primary bus, ``[bus] fallback`` buses, disk
spool); one writer consumes each bus, all writing to the one store through one shared store
circuit breaker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from tickvault.bus import open_bus
from tickvault.bus.base import Bus
from tickvault.core.config import Settings
from tickvault.core.errors import BusError, ConfigError
from tickvault.core.events import EVENTS
from tickvault.core.snapshot import LiveStatus, StatusSnapshot, live_builtins
from tickvault.delivery.breaker import BreakerPolicy, CircuitBreaker
from tickvault.delivery.failover import FailoverPublisher
from tickvault.delivery.producer import ProducerProcess
from tickvault.delivery.publisher import FramePublisher, SourcePump
from tickvault.delivery.spool import Spool
from tickvault.delivery.upkeep import bus_retention, start_service_upkeep
from tickvault.delivery.writer import Writer, WriterConfig, WriterStats, default_consumer_name
from tickvault.delivery.writer_restarts import RestartableWriters
from tickvault.service import control
from tickvault.service.live import live_status
from tickvault.service.owner_lock import DataDirLock
from tickvault.service.status import collect_status
from tickvault.sources.base import Source
from tickvault.stores import open_store
from tickvault.stores.base import Store

if TYPE_CHECKING:
    from tickvault.guardian.engine import Guardian
    from tickvault.web.server import HttpServer

log = logging.getLogger(__name__)

_PRODUCER_KILL_S = 5.0
"""A producer still alive this long after the grace is over is killed (safe: it only ever
advances its checkpoints after the bus confirmed)."""


@dataclass
class RunSummary:
    read: int = 0
    published: int = 0
    stored: int = 0
    duplicates: int = 0
    conflicts: int = 0
    dead_letters: dict[str, int] = field(default_factory=dict)
    drained: bool = False
    seconds: float = 0.0
    backlog: int = 0
    spool_backlog: int = 0
    stopped: bool = False
    """Stopped by SIGTERM/SIGINT (what is left stays durable for the next start)."""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class Pipeline:
    """One process's pipeline; ``async with Pipeline(settings, sources) as p: await p.run()``."""

    with_guardian: bool = False
    """``tickvault run`` sets it: ``run()`` then also runs the guardian (``[guardian]``)."""

    def __init__(
        self,
        settings: Settings,
        sources: list[Source],
        *,
        with_writer: bool = True,
        drain_timeout: float | None = 30.0,
        on_locked: Callable[[], None] | None = None,
        serve_http: bool = False,
        http_token: str | None = None,
        lock: DataDirLock | None = None,
    ) -> None:
        """``serve_http``: also serve the HTTP API and dashboard on ``[http] listen`` (``run``
        and ``demo``); ``http_token`` is the bearer token it requires (None: open).
        ``lock``: the data dir's lock when the caller took it already (it is released
        with the pipeline either way)."""
        self.settings = settings
        self.sources = sources
        self.with_writer = with_writer
        self.drain_timeout = drain_timeout
        self._on_locked = on_locked
        self.stop_sources = asyncio.Event()
        self.stop_writer = asyncio.Event()
        self.sources_done = asyncio.Event()
        self.started_at = time.time()
        self.producers: list[ProducerProcess] = []
        self._lock = lock if lock is not None else DataDirLock(settings.data_dir)
        self.bus: Bus
        self.store: Store
        self.publisher: FramePublisher
        self.writer: Writer
        self.buses: list[Bus] = []
        self.writers: list[Writer] = []
        self.restartable: RestartableWriters | None = None
        """The writers' run, restartable by the guardian (set when :meth:`run` starts)."""
        self.spool: Spool | None = None
        self.failover: FailoverPublisher
        self.store_breaker: CircuitBreaker
        self._stop_health = asyncio.Event()
        self.stopped_by_signal = False
        self._control: control.ControlServer | None = None
        self.serve_http = serve_http
        self._http_token = http_token
        self.http: HttpServer | None = None
        """The HTTP API while it serves."""
        self.guardian: Guardian | None = None
        """The guardian ``run()`` runs (``with_guardian`` and ``[guardian] enabled``)."""

    async def __aenter__(self) -> Pipeline:
        s = self.settings
        self._lock.acquire()
        if self._on_locked is not None:
            self._on_locked()
        try:
            self.bus = open_bus(s.bus_url)
            self.buses = [self.bus, *(open_bus(url) for url in s.bus.fallback)]
            self.store = open_store(s.store_url)
            spool_dir = s.spool_path
            if spool_dir is not None:
                # The config holds plain strings: Spool checks them and names a bad value.
                self.spool = Spool(
                    spool_dir,
                    quota_bytes=s.bus.spool_quota,
                    full_policy=s.bus.spool_full_policy,  # type: ignore[arg-type]
                    fsync=s.bus.spool_fsync,  # type: ignore[arg-type]
                )
        except BaseException:
            self._lock.release()
            raise
        b = s.breaker
        policy = BreakerPolicy(
            b.failure_threshold, b.success_threshold, b.open_base_s, b.open_max_s, b.jitter
        )
        self.store_breaker = CircuitBreaker("store", policy)
        for source in self.sources:
            source.use_store(self.store)
        self.failover = FailoverPublisher(
            self.buses,
            self.spool,
            names=[_redact(u) for u in [s.bus_url, *s.bus.fallback]],
            policy=BreakerPolicy(
                b.bus_failure_threshold, b.success_threshold, b.open_base_s, b.open_max_s, b.jitter
            ),
            check_every_s=s.bus.health_check_s,
            probe_stream=s.bus.stream,
        )
        self.publisher = FramePublisher(
            self.failover,
            s.bus.stream,
            max_records=s.publisher.frame_records,
            window=s.validation.history,
            live_window=s.validation.live,
        )
        self._pump = SourcePump(self.publisher, self.stop_sources, self.stop_writer)
        self.writers = [
            Writer(
                bus,
                self.store,
                WriterConfig(
                    stream=s.bus.stream,
                    group=s.bus.group,
                    consumer=s.writer.consumer or default_consumer_name(),
                    batch_records=s.writer.batch_records,
                    linger_ms=s.writer.linger_ms,
                    max_deliveries=s.writer.max_deliveries,
                    claim_idle_ms=s.writer.claim_idle_ms,
                    window=s.validation.history,
                ),
                store_breaker=self.store_breaker,
            )
            for bus in self.buses
        ]
        self.writer = self.writers[0]
        self._control = control.ControlServer(
            s.data_dir, {"status": self._status_op, "query": self._query_op}
        )
        await self._control.start()
        if self.serve_http and s.http.listen:
            await self._start_http()
        return self

    async def _start_http(self) -> None:
        """Serve the API; a port that cannot be bound is reported (log + critical event)
        and the data path runs on without it: capture matters more than the dashboard."""
        from tickvault.web.server import HttpServer

        try:
            server = HttpServer(self, self.settings.http, self._http_token)
            await server.start()
        except (OSError, ConfigError) as exc:  # ConfigError: off loopback without a token
            log.error("HTTP API not served on %s: %s", self.settings.http.listen, exc)
            EVENTS.emit(
                "http",
                "http.bind_failed",
                f"HTTP API not served on {self.settings.http.listen}: {exc}",
                level="critical",
            )
            return
        self.http = server

    async def __aexit__(self, *exc: object) -> None:
        if self.http is not None:
            await self.http.stop()
            self.http = None
        if self._control is not None:
            await self._control.stop()
        for source in self.sources:
            with contextlib.suppress(Exception):
                await source.close()
        for bus in self.buses:
            await bus.close()
        if self.spool is not None:
            await self.spool.close()
        await self.store.close()
        self._lock.release()

    # -- control handlers -------------------------------------------------------------------

    @property
    def lines(self) -> int:
        """Input lines consumed so far, in this process and in producer processes."""
        return self._pump.lines + sum(p.lines for p in self.producers)

    def live_status(self) -> LiveStatus:
        """This process's own counters (writer, publisher, sources, breakers, failover)."""
        return live_status(
            started_at=self.started_at,
            writers=self.writers,
            publisher=self.publisher,
            sources=self.sources,
            breakers=[self.store_breaker, *self.failover.breakers],
            failover=self.failover,
            http_url=self.http.url if self.http is not None else None,
        )

    def live(self) -> dict[str, Any]:
        """:meth:`live_status` as plain data (what the guardian's checks read)."""
        return live_builtins(self.live_status())

    async def status(self) -> StatusSnapshot:
        """The data dir's status with this process's counters (CLI, socket, ``/status``)."""
        return await collect_status(
            self.bus,
            self.store,
            bus_url=self.settings.bus_url,
            store_url=self.settings.store_url,
            data_dir=self.settings.data_dir,
            live=self.live_status(),
        )

    async def _status_op(self, _: control.Request) -> dict[str, object]:
        """The control socket's ``status``: the snapshot as JSON-able builtins."""
        return (await self.status()).to_builtins()

    async def _query_op(self, request: control.Request) -> dict[str, object]:
        result = await self.store.query(
            str(request.get("sql", "")), int(request.get("limit", 10_000))
        )
        return {"columns": result.columns, "rows": result.rows, "truncated": result.truncated}

    # -- running ----------------------------------------------------------------------------

    def stop_now(self) -> None:
        """The shutdown grace is over: stop writing and publishing (what is unwritten stays
        on the bus or in the spool, what is unpublished is read again on the next start);
        producers get a second SIGTERM, and SIGKILL a few seconds later if they hang."""
        if self.stop_writer.is_set():
            return
        log.warning("shutdown grace over: stopping now; the rest stays durable for next start")
        self.stop_sources.set()
        self.stop_writer.set()
        loop = asyncio.get_running_loop()
        for producer in self.producers:
            producer.stop()
            loop.call_later(_PRODUCER_KILL_S, producer.kill)

    async def pump(self, source: Source) -> None:
        """Move ``source``'s batches onto the bus; commit each only once it is durable."""
        try:
            await self._pump.run(source)
        except BusError as exc:
            if not self.stop_writer.is_set():
                raise
            log.warning("source %s stopped with records unpublished: %s", source.name, exc)

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: stop the sources and drain for ``[shutdown] grace_s`` at most;
        then (or at a second signal) stop the writers and producers wherever they are.
        Nothing durable is lost by stopping early (see the module docstring)."""
        loop = asyncio.get_running_loop()

        def on_signal() -> None:
            if self.stop_sources.is_set():
                self.stop_now()
                return
            self.stop_sources.set()
            self.stopped_by_signal = True
            for source in self.sources:
                stop = getattr(source, "stop", None)
                if callable(stop):
                    stop()
            for producer in self.producers:
                producer.stop()
            loop.call_later(self.settings.shutdown.grace_s, self.stop_now)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)

    async def run(self) -> RunSummary:
        """Run until the sources end (or are stopped) and the writer drained."""
        started = time.perf_counter()
        writer_task = None
        upkeep_tasks: list[asyncio.Task[None] | None] = []
        health_task = asyncio.create_task(self.failover.run(self._stop_health))
        guardian_task: asyncio.Task[None] | None = None
        self.restartable = RestartableWriters(self.writers, self.stop_writer, self.sources_done)
        if self.with_guardian and self.with_writer:  # stops together with the health task
            from tickvault.service.guardian import start_guardian

            started_guardian = start_guardian(
                self.settings,
                bus=self.bus,
                store=self.store,
                live=self.live,
                writer=self.writer,
                restartable=self.restartable,
                drain_spool=self.failover.drain_once if self.spool is not None else None,
                stop=self._stop_health,
            )
            if started_guardian is not None:
                self.guardian, guardian_task = started_guardian
        retention = bus_retention(self.settings.bus.retention, self.settings.bus.retention_bytes)
        if self.with_writer:
            # Stream upkeep (incident 003): one pass before the writer consumes, then periodic.
            for bus, writer in zip(self.buses, self.writers, strict=True):
                upkeep_tasks.append(
                    await start_service_upkeep(
                        bus, writer, self.settings.upkeep, self.stop_writer, retention
                    )
                )
            writer_task = asyncio.ensure_future(self.restartable.run())
        try:
            await asyncio.gather(
                *(self.pump(s) for s in self.sources), *(p.run() for p in self.producers)
            )
        finally:
            await self._wait_spool_drained()
            self.sources_done.set()
        drained = False
        if writer_task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(writer_task), timeout=self.drain_timeout)
                drained = not self.stop_writer.is_set()
            except TimeoutError:
                log.warning(
                    "writer did not drain within %ss; the rest stays on the bus", self.drain_timeout
                )
                self.stop_writer.set()
                await writer_task
        self._stop_health.set()
        await health_task
        if guardian_task is not None:
            await guardian_task
        for upkeep_task in upkeep_tasks:
            if upkeep_task is not None:
                upkeep_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await upkeep_task
        backlog = 0
        for bus in self.buses:
            try:
                info = await bus.info(self.settings.bus.stream)
            except BusError as exc:  # an unreachable fallback: its backlog is unknown
                log.warning("backlog unknown: %s", exc)
                backlog += 1
                continue
            backlog += sum(
                g.lag + g.pending for g in info.groups if g.name == self.settings.bus.group
            )
        spool_backlog = self.spool.stats.backlog if self.spool is not None else 0
        w = _total(self.writers)
        dead = Counter(self._pump.rejects)
        dead.update(w.dead_letters)
        published = self.publisher.stats.records
        for producer in self.producers:
            dead.update(producer.result.rejects)
            published += producer.result.published
        return RunSummary(
            read=self.lines,
            published=published,
            stored=w.inserted,
            duplicates=w.duplicates,
            conflicts=w.conflicts,
            dead_letters=dict(dead),
            drained=drained and backlog == 0 and spool_backlog == 0,
            seconds=time.perf_counter() - started,
            backlog=backlog,
            spool_backlog=spool_backlog,
            stopped=self.stopped_by_signal,
        )

    async def _wait_spool_drained(self) -> None:
        """At shutdown: give the spool ``drain_timeout`` to reach a bus (it stays on disk,
        durable, if it cannot)."""
        if self.spool is None or not self.with_writer:
            return
        deadline = None if self.drain_timeout is None else time.monotonic() + self.drain_timeout
        while self.spool.has_backlog and not self.stop_writer.is_set():
            if deadline is not None and time.monotonic() > deadline:
                log.warning(
                    "spool not drained at shutdown: %d frames stay spooled on disk",
                    self.spool.stats.backlog,
                )
                return
            await asyncio.sleep(0.05)


def _total(writers: list[Writer]) -> WriterStats:
    """The writers' counters added up (one writer per bus)."""
    total = WriterStats()
    for w in writers:
        total.inserted += w.stats.inserted
        total.duplicates += w.stats.duplicates
        total.conflicts += w.stats.conflicts
        total.records += w.stats.records
        total.dead_letters.update(w.stats.dead_letters)
    return total


def _redact(url: str) -> str:
    """A bus URL without its password, for status output."""
    scheme, sep, rest = url.partition("://")
    if "@" not in rest.split("/", 1)[0]:
        return url
    creds, _, host = rest.partition("@")
    return f"{scheme}{sep}{creds.split(':', 1)[0]}:***@{host}"
