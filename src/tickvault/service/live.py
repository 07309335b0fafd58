"""A running pipeline's own counters as a :class:`~tickvault.core.snapshot.LiveStatus`.

Read at the moment of the call from the components themselves (writers, publisher,
sources, circuit breakers, failover, the process-wide event log); nothing is cached.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import msgspec

from tickvault.core.events import EVENTS
from tickvault.core.snapshot import (
    BreakerStatus,
    FailoverStatus,
    FallbackWriterStatus,
    HttpStatus,
    LatencySummary,
    LiveStatus,
    PublisherStatus,
    SourceStatus,
    WriterStatus,
)
from tickvault.delivery.breaker import CircuitBreaker
from tickvault.delivery.failover import FailoverPublisher
from tickvault.delivery.publisher import FramePublisher
from tickvault.delivery.writer import Writer
from tickvault.sources.base import Source


def live_status(
    *,
    started_at: float,
    writers: Sequence[Writer],
    publisher: FramePublisher,
    sources: Sequence[Source],
    breakers: Sequence[CircuitBreaker],
    failover: FailoverPublisher,
    http_url: str | None,
) -> LiveStatus:
    """The counters of one pipeline: ``writers[0]`` is the primary bus's writer (its
    counters are shown; conflicts are summed over all), the others one per fallback bus
    (named as ``failover.names[1:]``)."""
    writer = writers[0]
    w = writer.stats
    return LiveStatus(
        pid=os.getpid(),
        uptime_s=time.time() - started_at,
        writer=WriterStatus(
            consumer=writer.config.consumer,
            records=w.records,
            inserted=w.inserted,
            duplicates=w.duplicates,
            conflicts=sum(x.stats.conflicts for x in writers),
            batches=w.batches,
            retrying=w.retrying,
            store_errors=w.store_errors,
            last_error=w.last_error,
            last_commit_at=w.last_commit_at,
            dead_letters=dict(w.dead_letters),
            tick_to_stored=msgspec.convert(w.tick_to_stored.snapshot(), LatencySummary),
        ),
        publisher=PublisherStatus(
            records=publisher.stats.records,
            frames=publisher.stats.frames,
            buffered=publisher.buffered,
            rejected=publisher.stats.rejected,
        ),
        sources=[source_status(s) for s in sources],
        breakers=[msgspec.convert(b.snapshot(), BreakerStatus) for b in breakers],
        failover=msgspec.convert(failover.snapshot(), FailoverStatus),
        fallback_writers=[
            FallbackWriterStatus(bus=name, inserted=f.stats.inserted, records=f.stats.records)
            for name, f in zip(failover.names[1:], writers[1:], strict=True)
        ],
        events=[e.as_dict() for e in EVENTS.recent(20)],
        http=HttpStatus(url=http_url) if http_url is not None else None,
    )


def source_status(source: Source) -> SourceStatus:
    """``source.health()`` as status shows it."""
    return msgspec.convert(msgspec.to_builtins(source.health()), SourceStatus)
