"""The typed status of a data dir: :class:`StatusSnapshot` and the protocols that serve it.

Contract
--------
* :func:`tickvault.service.status.collect_status` produces a :class:`StatusSnapshot`; the
  CLI (``status``, ``status --json``), the control socket, ``GET /status``, the dashboard
  and the metrics read it (or the running process's :class:`LiveStatus`) through
  :class:`StatusProvider` / :class:`LiveProvider`, never through the pipeline itself.
* :meth:`StatusSnapshot.to_builtins` is the JSON every one of them prints or serves: the
  keys in the order of the fields below, nulls kept, and the running process's parts
  (``pid`` ... ``http``) present only when a process runs (``msgspec.UNSET`` otherwise), so
  an offline status has the same keys as before these types existed.
* Numbers that a component may report as an int or a float are typed ``int | float``:
  converting a status read back from the control socket keeps ``5`` as ``5``.
* The snapshot is redacted before it is built (:func:`tickvault.core.redact.redact_value`
  on the builtins); nothing here redacts again.

Parts stay a ``dict`` where their content is open-ended, each with a comment saying why.
"""

from __future__ import annotations

from typing import Any, Protocol

import msgspec
from msgspec import UNSET, UnsetType

Number = int | float
"""A count or a time a component reports as it computes it (kept as is on a round trip)."""


class GroupStatus(msgspec.Struct, frozen=True):
    name: str
    consumers: int
    pending: int
    lag: int
    oldest_pending_age_ms: int | None
    last_delivered_id: str | None


class StreamStatus(msgspec.Struct, frozen=True):
    stream: str
    length: int
    first_id: str | None
    last_id: str | None
    groups: list[GroupStatus]
    # A bus with a retention window (Kafka) reports the topic's retention as the broker
    # gives it (``retention_ms``, ``source``, broker-specific extras): a driver's payload.
    retention: dict[str, Any] | UnsetType = UNSET


class BusStatus(msgspec.Struct, frozen=True):
    url: str
    reachable: bool
    streams: list[StreamStatus]
    error: str | None


class StoreStatus(msgspec.Struct, frozen=True):
    url: str
    tables: dict[str, int] | None
    last_write_at: Number | None
    # Stores with a write-ahead log (QuestDB): per table the server's own WAL columns.
    wal: dict[str, dict[str, Any]] | None
    reachable: bool
    error: str | None


class DeadLetterStatus(msgspec.Struct, frozen=True):
    total: int | None
    """None while the bus is unreachable (unknown)."""
    by_reason: dict[str, int]


class LatencySummary(msgspec.Struct, frozen=True):
    """:meth:`tickvault.core.latency.LatencyHistogram.snapshot`."""

    count: int
    mean_ms: Number | None
    max_ms: Number | None
    p50_ms: Number | None
    p99_ms: Number | None


class WriterStatus(msgspec.Struct, frozen=True):
    consumer: str
    records: int
    inserted: int
    duplicates: int
    conflicts: int
    batches: int
    retrying: bool
    store_errors: int
    last_error: str | None
    last_commit_at: Number | None
    dead_letters: dict[str, int]
    tick_to_stored: LatencySummary


class PublisherStatus(msgspec.Struct, frozen=True):
    records: int
    frames: int
    buffered: int
    rejected: int


class SourceStatus(msgspec.Struct, frozen=True):
    """:class:`tickvault.sources.base.SourceHealth`, as status shows it."""

    name: str
    kind: str
    connected: bool
    last_message_age_s: Number | None = None
    messages: int = 0
    reconnects: int = 0
    gaps_open: int = 0
    gaps_backfilled: int = 0
    detail: str = ""
    gaps_unrecoverable: int = 0


class BreakerTransition(msgspec.Struct, frozen=True):
    at: Number
    from_state: str = msgspec.field(name="from")
    to: str
    reason: str


class BreakerStatus(msgspec.Struct, frozen=True):
    """:meth:`tickvault.delivery.breaker.CircuitBreaker.snapshot`."""

    name: str
    state: str
    since: Number
    consecutive_failures: int
    times_opened: int
    refused: int
    retry_in_s: Number
    open_timeout_s: Number
    last_error: str | None
    transitions: list[BreakerTransition]


class SpoolStatus(msgspec.Struct, frozen=True):
    """:meth:`tickvault.delivery.spool.Spool.snapshot`."""

    appended: int
    appended_bytes: int
    drained: int
    backlog: int
    torn: int
    corrupt: int
    skipped_bytes: int
    dropped_frames: int
    dropped_records: int
    full_events: int
    blocked_s: Number
    dir: str
    size_bytes: int
    quota_bytes: int
    full_policy: str
    segments: int


class FailoverBus(msgspec.Struct, frozen=True):
    name: str
    frames: int
    breaker: BreakerStatus


class FailoverStatus(msgspec.Struct, frozen=True):
    """:meth:`tickvault.delivery.failover.FailoverPublisher.snapshot`."""

    path: str
    last_path: str | None
    buses: list[FailoverBus]
    frames_spooled: int
    frames_drained: int
    letters_spooled: int
    failed_appends: int
    spool: SpoolStatus | None


class FallbackWriterStatus(msgspec.Struct, frozen=True):
    bus: str
    inserted: int
    records: int


class HttpStatus(msgspec.Struct, frozen=True):
    url: str


# An event's ``data`` is whatever its emitter passed (``EVENTS.emit(..., **data)``): the
# events stay dicts (``Event.as_dict()``).
EventDict = dict[str, Any]


class LiveStatus(msgspec.Struct, frozen=True):
    """The running process's own counters (``Pipeline.live_status()``)."""

    pid: int
    uptime_s: Number
    writer: WriterStatus
    publisher: PublisherStatus
    sources: list[SourceStatus]
    breakers: list[BreakerStatus]
    failover: FailoverStatus
    fallback_writers: list[FallbackWriterStatus]
    events: list[EventDict]
    http: HttpStatus | None


class StatusSnapshot(msgspec.Struct, frozen=True):
    """One picture of a data dir (see the module contract for its JSON)."""

    data_dir: str
    generated_at: Number
    running: bool
    bus: BusStatus
    store: StoreStatus
    dead_letters: DeadLetterStatus
    conflicts: int
    # The running process's parts (LiveStatus's fields, flattened as the JSON has them).
    pid: int | UnsetType = UNSET
    uptime_s: Number | UnsetType = UNSET
    writer: WriterStatus | UnsetType = UNSET
    publisher: PublisherStatus | UnsetType = UNSET
    sources: list[SourceStatus] | UnsetType = UNSET
    breakers: list[BreakerStatus] | UnsetType = UNSET
    failover: FailoverStatus | UnsetType = UNSET
    fallback_writers: list[FallbackWriterStatus] | UnsetType = UNSET
    events: list[EventDict] | UnsetType = UNSET
    http: HttpStatus | UnsetType | None = UNSET

    def to_builtins(self) -> dict[str, object]:
        """The JSON-able picture (what ``status --json`` prints); see the module contract."""
        out: dict[str, object] = msgspec.to_builtins(self, enc_hook=str)
        return out

    @classmethod
    def from_builtins(cls, picture: object) -> StatusSnapshot:
        """A picture read back (from the control socket) as a snapshot."""
        return msgspec.convert(picture, cls)


def live_builtins(live: LiveStatus) -> dict[str, Any]:
    """``live`` as the plain dict ``Pipeline.live()`` returns (guardian checks read it:
    their ``LiveFn`` type, :mod:`tickvault.guardian.checks`, is a ``dict[str, Any]``)."""
    out: dict[str, Any] = msgspec.to_builtins(live, enc_hook=str)
    return out


class StatusProvider(Protocol):
    """Whatever answers ``status`` for a data dir (the running pipeline)."""

    async def status(self) -> StatusSnapshot: ...


class LiveProvider(Protocol):
    """Whatever reports a running process's own counters."""

    def live_status(self) -> LiveStatus: ...
