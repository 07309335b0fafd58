"""Position state that restores safely (see docs/positions.md).

A trading process calls :func:`start_positions` once, then changes positions through the
returned :class:`PositionBook`; every change is an append-only snapshot row in the state
store (the embedded SQLite file, or ClickHouse: :func:`open_backend`), and a restart
restores through :func:`restore` without ever failing on a bad row.
"""

from tickvault.positions.backend import PositionBackend
from tickvault.positions.book import PositionBook
from tickvault.positions.guard import AlertEvent, CrashLoopGuard, CrashLoopPolicy, GuardDecision
from tickvault.positions.importer import ImportReport, import_jsonl
from tickvault.positions.ledger import LedgerReading, parse_capital_ledger, read_capital_ledger
from tickvault.positions.model import EPSILON, Position, StateRow, assess_latest
from tickvault.positions.open import open_backend
from tickvault.positions.reconcile import ReconcileReport, reconcile
from tickvault.positions.restore import QuarantinedRow, RestoreReport, SourceAttempt, restore
from tickvault.positions.sources import (
    JsonFileSource,
    RedisHashSource,
    RestoreSource,
    StateStoreSource,
)
from tickvault.positions.startup import Startup, start_positions
from tickvault.positions.store import PositionStore

__all__ = [
    "EPSILON",
    "AlertEvent",
    "CrashLoopGuard",
    "CrashLoopPolicy",
    "GuardDecision",
    "ImportReport",
    "JsonFileSource",
    "LedgerReading",
    "Position",
    "PositionBackend",
    "PositionBook",
    "PositionStore",
    "QuarantinedRow",
    "ReconcileReport",
    "RedisHashSource",
    "RestoreReport",
    "RestoreSource",
    "SourceAttempt",
    "Startup",
    "StateRow",
    "StateStoreSource",
    "assess_latest",
    "import_jsonl",
    "open_backend",
    "parse_capital_ledger",
    "read_capital_ledger",
    "reconcile",
    "restore",
    "start_positions",
]
