"""The Source interface: an async iterator of record batches plus its own health.

A source yields :class:`SourceBatch` objects rather than single records so that the
per-record cost of the async machinery is paid once per batch. A batch may also carry
``rejects``: input that could not become a record (malformed JSON, unknown event types),
which the pipeline dead-letters with the reason instead of dropping.

``commit(batch)`` is called after the batch's records are durable on the bus; sources that
can resume (files, REST history) advance their checkpoint there and nowhere else.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from tickvault.bus.base import NewDeadLetter
from tickvault.core.records import Record

if TYPE_CHECKING:
    from tickvault.stores.base import Store


@dataclass
class SourceBatch:
    """Records from a source. ``rows`` is the fast path: per kind, tuples in the kind's
    column order (see :data:`tickvault.core.records.KINDS`), already validated."""

    records: list[Record] = field(default_factory=list)
    rows: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)
    rejects: list[NewDeadLetter] = field(default_factory=list)
    position: Any = None
    lines: int = 0

    def __len__(self) -> int:
        return len(self.records) + sum(len(r) for r in self.rows.values())


class SourceHealth(msgspec.Struct):
    name: str
    kind: str
    connected: bool
    last_message_age_s: float | None = None
    messages: int = 0
    reconnects: int = 0
    gaps_open: int = 0
    gaps_backfilled: int = 0
    detail: str = ""
    gaps_unrecoverable: int = 0


class Source(abc.ABC):
    name: str = "source"
    kind: str = "source"
    live: bool = False
    """True for sources of live data: their timestamps must lie in the live window (near
    the local clock, see :class:`tickvault.core.rules.TimeWindow`), not just in the venue's
    history."""

    @abc.abstractmethod
    def batches(self) -> AsyncIterator[SourceBatch]: ...

    async def commit(self, batch: SourceBatch) -> None:  # noqa: B027 - optional hook
        """Called once ``batch`` is durable downstream."""

    @abc.abstractmethod
    def health(self) -> SourceHealth: ...

    def use_store(self, store: Store) -> None:  # noqa: B027 - optional hook
        """The pipeline's store, given before the first batch; a source that resumes work
        recorded there (the Binance collector's open gaps) keeps it."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and files."""
