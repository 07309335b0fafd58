"""Start a trading process's positions: guard, restore, book — never fatal over bad data.

:func:`start_positions` is what a trading process calls once at start-up::

    startup = start_positions(data_dir, secondary=[JsonFileSource(snapshot_path)])
    book = startup.book            # trade with it; read-only when startup.safe_mode
    report = startup.report        # restored / quarantined / sources_tried / warnings

Order: open the state store, record the start with the crash-loop guard, restore through
the chain (state store, then ``secondary`` sources, then flat), build the book. Stored
data cannot make it raise: an unopenable store, an unrecordable start or a tripped guard
all end in a read-only book in safe mode, plus alerts. Only programming errors propagate.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tickvault.core.errors import TickvaultError
from tickvault.positions.backend import PositionBackend
from tickvault.positions.book import PositionBook
from tickvault.positions.guard import (
    AlertEvent,
    AlertSink,
    CrashLoopGuard,
    CrashLoopPolicy,
    GuardDecision,
    Level,
    log_alert,
)
from tickvault.positions.open import open_backend
from tickvault.positions.restore import RestoreReport, restore
from tickvault.positions.sources import RestoreSource, StateStoreSource

STATE_FILE = "state.sqlite3"
log = logging.getLogger("tickvault.positions")


@dataclass
class Startup:
    """What :func:`start_positions` produced."""

    book: PositionBook
    report: RestoreReport
    guard: GuardDecision | None
    """None when the start could not be recorded (then the book is in safe mode)."""
    alerts: list[AlertEvent] = field(default_factory=list)
    store: PositionBackend | None = None

    @property
    def safe_mode(self) -> bool:
        return self.book.safe_mode is not None

    def close(self) -> None:
        """Close the state store (the book is unusable afterwards)."""
        if self.store is not None:
            self.store.close()


def start_positions(
    data_dir: str | Path,
    *,
    secondary: Sequence[RestoreSource] = (),
    policy: CrashLoopPolicy | None = None,
    clock: Callable[[], float] = time.time,
    alert: AlertSink = log_alert,
    ledger: str | Path | None = None,
    state: str | None = None,
) -> Startup:
    """Guard, restore and build the book for the state store in ``data_dir``, or for
    ``state`` when given (a URL: ``clickhouse://host:8123/db`` keeps the state in
    ClickHouse, see :mod:`tickvault.positions.clickhouse_store`).

    In safe mode the restore is a dry run (nothing is written, not even quarantine copies)
    and the book refuses every change. Alerts: ``positions.crash_loop`` (critical, guard
    tripped), ``positions.store_unavailable`` (critical), ``positions.quarantined``
    (warning, rows refused), ``positions.fallback_source`` (warning: the state store could
    not be read, or it was empty and a secondary snapshot was used). Each is passed to
    ``alert`` (default: logged) and kept in :attr:`Startup.alerts`; a sink that raises is
    logged and ignored.
    """
    alerts: list[AlertEvent] = []

    def raise_alert(kind: str, level: Level, message: str, **details: Any) -> None:
        event = AlertEvent(kind=kind, level=level, message=message, ts=clock(), details=details)
        alerts.append(event)
        try:
            alert(event)
        except Exception:  # a failing alert channel must not stop the start
            log.exception("alert sink failed for %s", kind)

    path: str | Path = state if state is not None else Path(data_dir) / STATE_FILE
    store: PositionBackend | None = None
    decision: GuardDecision | None = None
    safe_reason: str | None = None
    try:
        store = open_backend(path)
    except TickvaultError as exc:
        safe_reason = f"state store unavailable: {exc}"
        raise_alert("positions.store_unavailable", "critical", safe_reason, path=_shown(path))
    if store is not None:
        try:
            decision = CrashLoopGuard(store, policy, clock).record_start()
        except TickvaultError as exc:
            safe_reason = f"start could not be recorded: {exc}"
            raise_alert("positions.store_unavailable", "critical", safe_reason, path=_shown(path))
    if decision is not None and decision.safe_mode:
        safe_reason = (
            f"crash loop: {decision.starts_in_window} starts within"
            f" {decision.window_seconds:g} s (limit {decision.max_starts})"
        )
        raise_alert(
            "positions.crash_loop",
            "critical",
            safe_reason + "; opening nothing",
            starts_in_window=decision.starts_in_window,
            max_starts=decision.max_starts,
            window_seconds=decision.window_seconds,
        )
    chain: list[RestoreSource] = [StateStoreSource(store if store is not None else path)]
    chain.extend(secondary)
    report = restore(
        chain,
        quarantine_store=store,
        dry_run=safe_reason is not None,
        ledger=ledger,
        clock=clock,
    )
    if report.quarantined:
        raise_alert(
            "positions.quarantined",
            "warning",
            f"{len(report.quarantined)} position row(s) quarantined at restore",
            rows=[{"trade_id": q.trade_id, "reason": q.reason} for q in report.quarantined],
        )
    first = report.sources_tried[0]
    if first.outcome in ("unavailable", "error") or report.source_used not in (
        first.source,
        "flat",
    ):
        raise_alert(
            "positions.fallback_source",
            "warning",
            f"state store {first.outcome}; restored from {report.source_used}",
            sources_tried=[f"{a.source}: {a.outcome} {a.detail}" for a in report.sources_tried],
        )
    book = PositionBook(store, report.restored, clock=clock, safe_mode=safe_reason)
    return Startup(book=book, report=report, guard=decision, alerts=alerts, store=store)


def _shown(state: str | Path) -> str:
    """``state`` for an alert: a URL without its credentials."""
    text = str(state)
    scheme, sep, rest = text.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        return f"{scheme}://{rest.split('@', 1)[1]}"
    return text
