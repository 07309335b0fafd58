"""Restore: walk a chain of sources, trust only valid rows, never raise over stored data.

Contract of :func:`restore`:

1. Sources are tried in order. A source that raises (missing, unreachable, corrupt) or
   holds nothing at all is recorded in ``sources_tried`` and the next one is tried. The
   first source that answers is authoritative for every trade; when none answers the
   result is flat (the ``flat`` attempt).
2. Of that source's latest row per trade: ``CLOSED`` is flat; a valid ``OPEN`` row is a
   restored :class:`~tickvault.positions.model.Position`; anything else is *quarantined*:
   reported with its reason, skipped, and (unless ``dry_run``) copied to
   ``position_quarantine``. A quarantined trade is not looked up in later sources: a stale
   secondary snapshot could resurrect a position that was closed, so the trade stays out
   of the book until someone reconciles it.
3. Nothing about the stored data makes it raise: failures to copy the quarantine or to
   read the capital ledger become ``warnings``. It returns a :class:`RestoreReport`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import msgspec

from tickvault.core.errors import PositionSourceError, TickvaultError
from tickvault.positions.backend import Candidate, PositionBackend, QuarantineEntry
from tickvault.positions.ledger import LedgerReading, read_capital_ledger
from tickvault.positions.model import Malformed, Position, assess_latest
from tickvault.positions.sources import RestoreSource

log = logging.getLogger("tickvault.positions")

_LOG_ROWS = 20
"""Quarantined rows logged one by one; the rest are summarised (the report has them all)."""

Outcome = Literal["used", "empty", "unavailable", "error"]


class SourceAttempt(msgspec.Struct, kw_only=True):
    """What happened when restore asked one source."""

    source: str
    outcome: Outcome
    detail: str = ""
    rows: int = 0
    restored: int = 0
    quarantined: int = 0
    seconds: float = 0.0


class QuarantinedRow(msgspec.Struct, kw_only=True):
    """A latest row restore refused to trust."""

    trade_id: Any
    reason: str
    source: str
    source_ref: str
    row: dict[str, Any]


class RestoreReport(msgspec.Struct, kw_only=True):
    """The result of a restore; ``to_dict()`` is its JSON form."""

    restored: list[Position]
    quarantined: list[QuarantinedRow]
    sources_tried: list[SourceAttempt]
    source_used: str
    warnings: list[str]
    dry_run: bool
    quarantine_copied: int = 0
    """Quarantine rows newly copied to ``position_quarantine`` by this restore."""
    capital: LedgerReading | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = msgspec.to_builtins(self)
        return data


def judge(
    candidates: Sequence[Candidate], source: str
) -> tuple[list[Position], list[QuarantinedRow]]:
    """Split a source's latest rows into restored positions and quarantined rows."""
    restored: list[Position] = []
    quarantined: list[QuarantinedRow] = []
    for c in candidates:
        verdict: Position | Malformed | None
        try:
            verdict = Malformed(c.problem) if c.problem else assess_latest(c.row)
        except Exception as exc:  # a judge that fails must not take the process down
            verdict = Malformed(f"row could not be judged: {type(exc).__name__}: {exc}")
        if isinstance(verdict, Position):
            restored.append(verdict)
        elif isinstance(verdict, Malformed):
            quarantined.append(
                QuarantinedRow(
                    trade_id=c.row.get("trade_id"),
                    reason=verdict.reason,
                    source=source,
                    source_ref=c.ref,
                    row=c.row,
                )
            )
    restored.sort(key=lambda p: p.trade_id)
    return restored, quarantined


def restore(
    sources: Sequence[RestoreSource],
    *,
    quarantine_store: PositionBackend | None = None,
    dry_run: bool = False,
    ledger: str | Path | None = None,
    clock: Callable[[], float] = time.time,
) -> RestoreReport:
    """Restore open positions from the first source that answers (see the module docstring).

    ``quarantine_store`` receives the quarantine copies (skipped when ``dry_run``).
    ``ledger``, when given, is read with :func:`read_capital_ledger` into ``capital``.
    """
    started = time.perf_counter()
    attempts: list[SourceAttempt] = []
    warnings: list[str] = []
    restored: list[Position] = []
    quarantined: list[QuarantinedRow] = []
    used = "flat"
    for source in sources:
        t0 = time.perf_counter()
        try:
            candidates = source.read()
        except PositionSourceError as exc:
            attempts.append(_attempt(source.name, "unavailable", str(exc), t0))
            continue
        except Exception as exc:  # any failure of one source: try the next one
            attempts.append(_attempt(source.name, "error", f"{type(exc).__name__}: {exc}", t0))
            continue
        if candidates is None:
            attempts.append(_attempt(source.name, "empty", "holds no position rows", t0))
            continue
        restored, quarantined = judge(candidates, source.name)
        attempt = _attempt(source.name, "used", "", t0)
        attempt.rows, attempt.restored = len(candidates), len(restored)
        attempt.quarantined = len(quarantined)
        attempts.append(attempt)
        used = source.name
        break
    else:
        attempts.append(SourceAttempt(source="flat", outcome="used", detail="no source answered"))
        if sources:
            warnings.append("no restore source answered: starting flat")
    for q in quarantined[:_LOG_ROWS]:
        log.warning(
            "quarantined position row from %s: trade %r: %s", q.source, q.trade_id, q.reason
        )
    if len(quarantined) > _LOG_ROWS:
        log.warning(
            "... and %d more quarantined rows (in the report)", len(quarantined) - _LOG_ROWS
        )
    copied = 0
    if quarantined and not dry_run:
        copied = _copy_quarantine(quarantined, quarantine_store, clock, warnings)
    capital = None
    if ledger is not None:
        try:
            capital = read_capital_ledger(ledger)
        except TickvaultError as exc:
            warnings.append(f"capital ledger not used: {exc}")
    for w in warnings:
        log.warning("restore: %s", w)
    return RestoreReport(
        restored=restored,
        quarantined=quarantined,
        sources_tried=attempts,
        source_used=used,
        warnings=warnings,
        dry_run=dry_run,
        quarantine_copied=copied,
        capital=capital,
        seconds=time.perf_counter() - started,
    )


def _attempt(name: str, outcome: Outcome, detail: str, t0: float) -> SourceAttempt:
    return SourceAttempt(
        source=name, outcome=outcome, detail=detail, seconds=time.perf_counter() - t0
    )


def _copy_quarantine(
    quarantined: list[QuarantinedRow],
    store: PositionBackend | None,
    clock: Callable[[], float],
    warnings: list[str],
) -> int:
    if store is None:
        warnings.append(f"{len(quarantined)} quarantined row(s) not copied: no writable store")
        return 0
    entries = [
        QuarantineEntry(q.source, q.source_ref, q.trade_id, q.reason, q.row) for q in quarantined
    ]
    try:
        return store.quarantine(entries, round(clock() * 1_000_000))
    except Exception as exc:  # the copy is a convenience; failing it must not stop restore
        warnings.append(f"quarantine copy failed: {type(exc).__name__}: {exc}")
        return 0
