"""Prometheus metrics of one running pipeline (``GET /metrics``).

Every metric is read at scrape time from the pipeline's own counters (``live_status()``, the
writers' stats and histograms) plus one asynchronous :meth:`PipelineMetrics.refresh` of
what needs the bus or the store (backlog, pending, dead letters, rows per table). Nothing
on the data path calls into Prometheus: the collector reads what the components already
count, so a scrape costs the data path nothing but those few bus/store calls.

Each pipeline has its own :class:`~prometheus_client.CollectorRegistry` (never the global
one), so several pipelines in one process (tests) do not collide.

Components that are not running (no guardian, no spool, no fallback bus) simply produce no
samples for their metrics; they never fail a scrape. All names start with ``tickvault_``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from tickvault.bus.base import StreamInfo
from tickvault.core.latency import LatencyHistogram
from tickvault.core.records import KINDS
from tickvault.core.snapshot import BreakerStatus, FailoverStatus, SourceStatus
from tickvault.web.ports import ServedPipeline

if TYPE_CHECKING:
    from tickvault.guardian.engine import Guardian

T = TypeVar("T")

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}
"""``tickvault_breaker_state`` values."""
REFRESH_TIMEOUT_S = 2.0


@dataclass
class BusSnapshot:
    name: str
    up: bool
    streams: list[StreamInfo] = field(default_factory=list)


@dataclass
class Snapshot:
    """What :meth:`PipelineMetrics.refresh` gathered from the bus(es) and the store."""

    buses: list[BusSnapshot] = field(default_factory=list)
    dead_letters: dict[str, int] | None = None
    tables: dict[str, int] | None = None
    store_up: bool = False
    wal: dict[str, tuple[str, int]] | None = None
    """Stores with a WAL (QuestDB): table -> (state without the count, unapplied txns)."""


def table_name(kind: str) -> str:
    """The public table of a record kind (``trade`` → ``trades``); unknown kinds as is."""
    spec = KINDS.get(kind)
    return spec.table if spec is not None else kind


async def _bounded(coro: Awaitable[T]) -> T:
    return await asyncio.wait_for(coro, timeout=REFRESH_TIMEOUT_S)


async def gather_snapshot(pipeline: ServedPipeline) -> Snapshot:
    """Bus backlog per bus, dead letters and rows per table; failures become ``up = 0``."""
    snap = Snapshot()
    names = pipeline.failover.names
    for name, bus in zip(names, pipeline.buses, strict=True):
        try:
            streams = [await _bounded(bus.info(s)) for s in await _bounded(bus.streams())]
            snap.buses.append(BusSnapshot(name, True, streams))
        except Exception as exc:  # reported as tickvault_bus_up 0, never a failed scrape
            log.debug("metrics: bus %s: %s", name, exc)
            snap.buses.append(BusSnapshot(name, False))
    try:
        snap.dead_letters = await _bounded(pipeline.bus.dead_letter_counts())
    except Exception as exc:
        log.debug("metrics: dead letters: %s", exc)
    try:
        snap.tables = await _bounded(pipeline.store.counts())
        snap.store_up = True
        wal_status = getattr(pipeline.store, "wal_status", None)
        if wal_status is not None:
            status = await _bounded(wal_status())
            snap.wal = {t: (w.state.split(" (")[0], w.lag_txns) for t, w in status.items()}
    except Exception as exc:
        log.debug("metrics: store: %s", exc)
    return snap


def merged(histograms: Iterable[LatencyHistogram]) -> tuple[list[tuple[str, float]], float]:
    """Prometheus buckets (cumulative, ``+Inf`` last) and the sum of same-bounds histograms."""
    hs = list(histograms)
    bounds = hs[0].bounds
    cumulative = [0] * len(bounds)
    count, total = 0, 0.0
    for h in hs:
        cumulative = [a + b for a, b in zip(cumulative, h.cumulative, strict=True)]
        count += h.count
        total += h.sum
    buckets = [(repr(b), float(c)) for b, c in zip(bounds, cumulative, strict=True)]
    return [*buckets, ("+Inf", float(count))], total


def alerts_sent(guardian: Guardian) -> int | Mapping[str, int] | None:
    """Alerts sent, in all or per channel, when the guardian counts them (an optional
    ``alerts_sent`` attribute), else None."""
    sent = getattr(guardian, "alerts_sent", None)
    return sent if isinstance(sent, int | Mapping) else None


def guardian_view(guardian: Guardian | None) -> dict[str, object] | None:
    """The guardian's states for the dashboard: the running guardian's ``status()``
    (resource → state), with ``alerts_sent`` when it counts them; None when no guardian
    runs."""
    if guardian is None:
        return None
    view: dict[str, object] = {"checks": guardian.status()}
    sent = alerts_sent(guardian)
    if sent is not None:
        view["alerts_sent"] = sent
    return view


class PipelineCollector(Collector):
    """Reads one pipeline's state into metric families (see the module docstring)."""

    def __init__(self, pipeline: ServedPipeline) -> None:
        self.pipeline = pipeline
        self.snapshot = Snapshot()

    def collect(self) -> Iterator[Metric]:
        p = self.pipeline
        live = p.live_status()
        yield GaugeMetricFamily("tickvault_up", "1 while the pipeline runs", value=1)
        yield GaugeMetricFamily(
            "tickvault_uptime_seconds", "Seconds since the pipeline started", value=live.uptime_s
        )
        yield from self._sources(live.sources)
        yield from self._publisher()
        yield from self._writers()
        yield from self._bus()
        yield from self._breakers(live.breakers)
        yield from self._spool(live.failover)
        yield from self._guardian(p.guardian)

    def _sources(self, sources: list[SourceStatus]) -> Iterator[Metric]:
        labels = ["source", "kind"]
        records = CounterMetricFamily(
            "tickvault_source_records", "Messages/records received per source", labels=labels
        )
        connected = GaugeMetricFamily(
            "tickvault_source_connected", "1 when the source is connected", labels=labels
        )
        age = GaugeMetricFamily(
            "tickvault_source_last_message_age_seconds",
            "Seconds since the source's last message",
            labels=labels,
        )
        gaps_open = GaugeMetricFamily(
            "tickvault_gaps_open", "Sequence gaps seen and not yet backfilled", labels=labels
        )
        gaps_backfilled = CounterMetricFamily(
            "tickvault_gaps_backfilled", "Sequence gaps backfilled", labels=labels
        )
        gaps_lost = CounterMetricFamily(
            "tickvault_gaps_unrecoverable",
            "Sequence gaps that could not be backfilled",
            labels=labels,
        )
        for s in sources:
            lv = [s.name, s.kind]
            records.add_metric(lv, s.messages)
            connected.add_metric(lv, 1 if s.connected else 0)
            if s.last_message_age_s is not None:
                age.add_metric(lv, s.last_message_age_s)
            gaps_open.add_metric(lv, s.gaps_open)
            gaps_backfilled.add_metric(lv, s.gaps_backfilled)
            gaps_lost.add_metric(lv, s.gaps_unrecoverable)
        yield from (records, connected, age, gaps_open, gaps_backfilled, gaps_lost)

    def _publisher(self) -> Iterator[Metric]:
        stats = self.pipeline.publisher.stats
        yield CounterMetricFamily(
            "tickvault_published_records",
            "Records the publisher handed to the bus (or spool)",
            value=stats.records,
        )
        yield CounterMetricFamily(
            "tickvault_published_frames", "Frames appended", value=stats.frames
        )
        yield GaugeMetricFamily(
            "tickvault_publisher_buffered_records",
            "Records in the publisher's in-memory batch",
            value=self.pipeline.publisher.buffered,
        )
        yield CounterMetricFamily(
            "tickvault_rejected_inputs", "Input that never became a record", value=stats.rejected
        )

    def _writers(self) -> Iterator[Metric]:
        writers = self.pipeline.writers
        stored = CounterMetricFamily(
            "tickvault_stored_records", "New rows committed to the store", labels=["table"]
        )
        by_table: dict[str, int] = {}
        for w in writers:
            for kind, n in w.stats.inserted_by_table.items():
                by_table[table_name(kind)] = by_table.get(table_name(kind), 0) + n
        for table, n in sorted(by_table.items()):
            stored.add_metric([table], n)
        yield stored
        yield CounterMetricFamily(
            "tickvault_duplicate_records",
            "Records whose key was already stored (redeliveries)",
            value=sum(w.stats.duplicates for w in writers),
        )
        yield CounterMetricFamily(
            "tickvault_conflicting_duplicates",
            "Records whose key was stored with other content (kept first, dead-lettered)",
            value=sum(w.stats.conflicts for w in writers),
        )
        yield CounterMetricFamily(
            "tickvault_writer_records",
            "Records the writers read from the bus",
            value=sum(w.stats.records for w in writers),
        )
        yield CounterMetricFamily(
            "tickvault_writer_store_errors",
            "Failed store calls (retried)",
            value=sum(w.stats.store_errors for w in writers),
        )
        yield GaugeMetricFamily(
            "tickvault_writer_retrying",
            "Writers holding a batch while the store or bus fails",
            value=sum(1 for w in writers if w.stats.retrying),
        )
        buckets, total = merged(w.stats.batch_seconds for w in writers)
        yield HistogramMetricFamily(
            "tickvault_writer_batch_seconds",
            "Time per writer batch: decode, validate, write, dead letters, ack",
            buckets=buckets,
            sum_value=total,
        )
        buckets, total = merged(w.stats.tick_to_stored for w in writers)
        yield HistogramMetricFamily(
            "tickvault_tick_to_stored_seconds",
            "Store commit time minus the record's receive time (ts_recv)",
            buckets=buckets,
            sum_value=total,
        )

    def _bus(self) -> Iterator[Metric]:
        snap = self.snapshot
        up = GaugeMetricFamily("tickvault_bus_up", "1 when the bus answered", labels=["bus"])
        glabels = ["bus", "stream", "group"]
        backlog = GaugeMetricFamily(
            "tickvault_bus_backlog", "Entries not yet delivered to the group", labels=glabels
        )
        pending = GaugeMetricFamily(
            "tickvault_bus_pending", "Entries delivered and not yet acknowledged", labels=glabels
        )
        length = GaugeMetricFamily(
            "tickvault_bus_stream_length", "Entries in the stream", labels=["bus", "stream"]
        )
        for b in snap.buses:
            up.add_metric([b.name], 1 if b.up else 0)
            for info in b.streams:
                length.add_metric([b.name, info.stream], info.length)
                for g in info.groups:
                    backlog.add_metric([b.name, info.stream, g.name], g.lag)
                    pending.add_metric([b.name, info.stream, g.name], g.pending)
        yield from (up, backlog, pending, length)
        dead = GaugeMetricFamily(
            "tickvault_dead_letters", "Dead letters not requeued, by reason", labels=["reason"]
        )
        for reason, n in sorted((snap.dead_letters or {}).items()):
            dead.add_metric([reason], n)
        yield dead
        yield GaugeMetricFamily(
            "tickvault_store_up", "1 when the store answered", value=1 if snap.store_up else 0
        )
        rows = GaugeMetricFamily("tickvault_table_rows", "Rows per table", labels=["table"])
        for table, n in sorted((snap.tables or {}).items()):
            rows.add_metric([table], n)
        yield rows
        unapplied = GaugeMetricFamily(
            "tickvault_store_unapplied_txns",
            "Committed WAL transactions not visible yet, with the table's state (QuestDB)",
            labels=["table", "state"],
        )
        for table, (state, n) in sorted((snap.wal or {}).items()):
            unapplied.add_metric([table, state], n)
        yield unapplied

    def _breakers(self, breakers: list[BreakerStatus]) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "tickvault_breaker_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open",
            labels=["breaker"],
        )
        opened = CounterMetricFamily(
            "tickvault_breaker_opened", "Times the breaker opened", labels=["breaker"]
        )
        seen: set[str] = set()
        for b in breakers:
            if b.name in seen:
                continue
            seen.add(b.name)
            state.add_metric([b.name], BREAKER_STATES.get(b.state, 2))
            opened.add_metric([b.name], b.times_opened)
        yield from (state, opened)

    def _spool(self, failover: FailoverStatus) -> Iterator[Metric]:
        spool = failover.spool
        yield CounterMetricFamily(
            "tickvault_spooled_frames",
            "Frames written to the spool because no bus took them",
            value=failover.frames_spooled,
        )
        path = GaugeMetricFamily(
            "tickvault_failover_path",
            "1 for the path new frames take now (a bus's name or spool), 0 for the others",
            labels=["path"],
        )
        for name in [*(b.name for b in failover.buses), "spool"]:
            path.add_metric([name], 1.0 if failover.path == name else 0.0)
        yield path
        if spool is None:
            return
        yield GaugeMetricFamily(
            "tickvault_spool_bytes", "Disk used by spool segments", value=spool.size_bytes
        )
        yield GaugeMetricFamily(
            "tickvault_spool_frames", "Frames waiting in the spool", value=spool.backlog
        )
        yield CounterMetricFamily(
            "tickvault_spool_dropped_records",
            "Records dropped at the spool quota (drop_newest)",
            value=spool.dropped_records,
        )

    def _guardian(self, guardian: Guardian | None) -> Iterator[Metric]:
        """Guardian states (one sample per check and state) and alerts, when a guardian
        runs; ``tickvault_alerts_sent`` only when it counts them (:func:`alerts_sent`)."""
        if guardian is None:
            return
        states = GaugeMetricFamily(
            "tickvault_guardian_state",
            "1 for each guardian check's current state",
            labels=["check", "state"],
        )
        for name, value in guardian.status().items():
            states.add_metric([str(name), str(value.get("state"))], 1)
        yield states
        alerts = CounterMetricFamily(
            "tickvault_alerts_sent", "Alerts sent by the guardian", labels=["channel"]
        )
        sent = alerts_sent(guardian)
        if sent is None:
            return
        if isinstance(sent, Mapping):
            for channel, n in sorted(sent.items()):
                alerts.add_metric([str(channel)], n)
        else:
            alerts.add_metric(["all"], sent)
        yield alerts


class PipelineMetrics:
    """A pipeline's own registry; ``await render()`` gives the exposition text."""

    def __init__(self, pipeline: ServedPipeline) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = PipelineCollector(pipeline)
        self.registry.register(self.collector)
        self._pipeline = pipeline
        self._lock = asyncio.Lock()

    async def refresh(self) -> Snapshot:
        async with self._lock:  # concurrent scrapes share the bus/store round trips
            self.collector.snapshot = await gather_snapshot(self._pipeline)
            return self.collector.snapshot

    async def render(self) -> bytes:
        await self.refresh()
        return generate_latest(self.registry)
