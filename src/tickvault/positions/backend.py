"""The interface every position-state backend implements (opened by URL in
:mod:`tickvault.positions.open`).

Backends: the embedded SQLite file (:class:`~tickvault.positions.store.PositionStore`, the
default) and ClickHouse
(:class:`~tickvault.positions.clickhouse_store.ClickHousePositionStore`). The book, the
crash-loop guard, restore, reconcile and the CLI use only this surface, and
``tests/test_positions_contract.py`` runs one suite over both.

Contract shared by every backend:

- ``position_state`` rows are append-only: nothing updates or deletes one.
- :meth:`PositionBackend.append` returns the new row's ``seq``; the new row is the trade's
  latest (highest ``seq``). ``new_trade`` refuses a trade id with any history,
  ``expected_seq`` refuses the write when the trade's latest ``seq`` is another one.
- :meth:`PositionBackend.read_latest` returns the latest row of every trade as
  :class:`Candidate` rows (not judged), or ``None`` when the state holds no row at all.
- Quarantine copies are kept once per ``(source, source_ref)``.
- Reads never raise over stored *values*; an unreachable or unreadable backend raises
  :class:`~tickvault.core.errors.PositionSourceError` (restore then tries the next source).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any

import msgspec

from tickvault.positions.model import StateRow


class Candidate(msgspec.Struct, frozen=True):
    """The latest row of one trade as a source holds it.

    ``ref`` identifies the row within its source (stable across restores, so quarantining
    it twice keeps one copy). ``problem``, when set, makes the row malformed whatever its
    values (e.g. the row could not be decoded, or its trade's history cannot be ordered).
    """

    ref: str
    row: dict[str, Any]
    problem: str | None = None


class QuarantineEntry:
    """A refused row on its way to the quarantine table."""

    __slots__ = ("reason", "row", "source", "source_ref", "trade_id")

    def __init__(
        self, source: str, source_ref: str, trade_id: Any, reason: str, row: dict[str, Any]
    ) -> None:
        self.source = source
        self.source_ref = source_ref
        self.trade_id = trade_id
        self.reason = reason
        self.row = row


class PositionBackend(ABC):
    """Where position state lives: snapshot rows, quarantine copies, start times."""

    read_only: bool
    source_name: str
    """How restore reports name this backend (``state-store``, ``clickhouse:db.table``)."""

    @abstractmethod
    def close(self) -> None:
        """Release connections; the backend is unusable afterwards."""

    def __enter__(self) -> PositionBackend:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- snapshot rows -----------------------------------------------------------------------

    @abstractmethod
    def append(
        self,
        row: StateRow,
        *,
        origin: str = "book",
        new_trade: bool = False,
        expected_seq: int | None = None,
    ) -> int:
        """Append ``row`` as its trade's latest and return its ``seq`` (see the module doc)."""

    @abstractmethod
    def append_tombstone(
        self, trade_id: Any, latest_ref: int | str, reason: str, now_us: int
    ) -> int | None:
        """Settle the malformed latest row ``latest_ref`` of ``trade_id`` as ``CLOSED``;
        return the tombstone's seq, or None (nothing written) when that row is no longer
        the trade's latest."""

    @abstractmethod
    def read_latest(self) -> list[Candidate] | None:
        """The latest row of every trade, or None when there is no row at all."""

    @abstractmethod
    def iter_rows(self) -> Iterator[dict[str, Any]]:
        """Every row, each with ``row_id`` (the ``ref`` its candidate would carry, or the
        integer that ref is ``row:<n>`` of)."""

    @abstractmethod
    def row_count(self) -> int:
        """How many snapshot rows are stored."""

    # -- quarantine --------------------------------------------------------------------------

    @abstractmethod
    def quarantine(self, entries: Sequence[QuarantineEntry], now_us: int) -> int:
        """Copy refused rows to the quarantine; return how many were new."""

    @abstractmethod
    def quarantined(self) -> list[dict[str, Any]]:
        """Every quarantined copy, oldest first (``row`` decoded from JSON)."""

    # -- start counter (crash-loop guard) ----------------------------------------------------

    @abstractmethod
    def record_start(self, now: float, window_seconds: float) -> int:
        """Record a start at ``now``; return the starts within the window, this one
        included."""

    @abstractmethod
    def starts(self) -> list[float]:
        """Recorded start times (epoch seconds) since the last reset, oldest first."""

    @abstractmethod
    def clear_starts(self) -> int:
        """Forget every recorded start (an operator's reset); return how many."""


def row_ref(row: dict[str, Any]) -> str:
    """The ``ref`` of a row from :meth:`PositionBackend.iter_rows`."""
    row_id = row["row_id"]
    return row_id if isinstance(row_id, str) else f"row:{row_id}"
