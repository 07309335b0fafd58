"""The position-state contract, run over every backend: the embedded SQLite file and
ClickHouse (the real 18.16 server the suite starts, one database per test).

Legacy rows are put in place the way another system would leave them: ``import_jsonl`` for
SQLite, plain SQL ``INSERT ... VALUES`` for ClickHouse.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers import ClickHouseServer, free_port
from tickvault.core.errors import PositionStateError, SafeModeError
from tickvault.positions import (
    CrashLoopPolicy,
    JsonFileSource,
    PositionBook,
    StateStoreSource,
    import_jsonl,
    reconcile,
    restore,
    start_positions,
)
from tickvault.positions.backend import PositionBackend
from tickvault.positions.open import open_backend
from tickvault.positions.store import PositionStore

BACKENDS = ["sqlite", "clickhouse"]


def _row(trade_id: str, **kw: Any) -> dict[str, Any]:
    row = {
        "trade_id": trade_id,
        "symbol": "BTCUSDT",
        "side": "LONG",
        "status": "OPEN",
        "quantity": 1.0,
        "notional": 100.0,
        "entry_price": 100.0,
        "bars_held": 0,
        "ts": 1_781_000_000_000_000,
        "seq": 1,
    }
    return row | kw


def _literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return repr(value)


class State:
    """One isolated position state of one backend, and a way to put raw rows in it."""

    def __init__(self, kind: str, url: str, tmp_path: Path) -> None:
        self.kind, self.url, self.tmp_path = kind, url, tmp_path
        self.opened: list[PositionBackend] = []

    def open(self, *, read_only: bool = False) -> PositionBackend:
        backend = open_backend(self.url, read_only=read_only)
        self.opened.append(backend)
        return backend

    def put_rows(self, rows: list[dict[str, Any]]) -> None:
        """Rows as a legacy writer left them (invalid ones included)."""
        if self.kind == "sqlite":
            path = self.tmp_path / f"rows-{uuid.uuid4().hex[:6]}.jsonl"
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
            with PositionStore(self.url) as store:
                assert import_jsonl(store, path).imported == len(rows)
            return
        self.open()  # creates the database and tables
        columns = list(_row("x"))
        values = ", ".join(
            "(" + ", ".join(_literal(r.get(c)) for c in columns) + ", 'import', '')" for r in rows
        )
        self.sql(
            f"INSERT INTO {self.database}.tickvault_position_state"
            f" ({', '.join(columns)}, origin, writer) VALUES {values}"
        )

    @property
    def database(self) -> str:
        return self.url.rsplit("/", 1)[1]

    def sql(self, statement: str) -> str:
        base = self.url.replace("clickhouse://", "http://").rsplit("/", 1)[0]
        response = httpx.post(base + "/", content=statement.encode(), timeout=30)
        assert response.status_code == 200, response.text
        return response.text


@pytest.fixture(params=BACKENDS)
def state(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[State]:
    if request.param == "sqlite":
        url = str(tmp_path / "state.sqlite3")
    else:
        server: ClickHouseServer = request.getfixturevalue("clickhouse_server")
        url = server.url(f"tv_pos_{uuid.uuid4().hex[:10]}")
    made = State(request.param, url, tmp_path)
    yield made
    for backend in made.opened:
        backend.close()


def test_book_changes_restore_exactly(state: State) -> None:
    store = state.open()
    book = PositionBook(store, clock=lambda: 1_781_000_000.0)
    book.open("a", "BTCUSDT", "LONG", 1.5, 100.0)
    book.open("b", "ETHUSDT", "SHORT", 2.0, 50.0)
    book.open("c", "SOLUSDT", "LONG", 3.0, 10.0)
    book.retract("a", fraction=0.5)
    book.mark("b", bars_held=7)
    book.close("c", 11.0, "take profit")
    report = restore([StateStoreSource(state.open(read_only=True))])
    assert report.restored == book.positions()
    assert [p.trade_id for p in report.restored] == ["a", "b"]
    assert report.quarantined == [] and report.warnings == []
    assert report.source_used == store.source_name
    assert store.row_count() == 6


def test_dust_remainder_is_written_as_closed(state: State) -> None:
    store = state.open()
    book = PositionBook(store)
    book.open("leg", "ATOMUSDT", "SHORT", 0.3, 8.41)
    for _ in range(2):
        book.retract("leg", quantity=0.1)
    assert book.retract("leg", quantity=0.1) is None  # 5.6e-17 left: a full close
    rows = list(store.iter_rows())
    assert [r["status"] for r in sorted(rows, key=lambda r: r["seq"])] == [
        "OPEN",
        "OPEN",
        "OPEN",
        "CLOSED",
    ]
    report = restore([StateStoreSource(store)], quarantine_store=store)
    assert report.restored == [] and report.quarantined == []


def test_trade_ids_are_not_reused_and_a_second_writer_is_refused(state: State) -> None:
    store = state.open()
    book = PositionBook(store)
    book.open("a", "BTCUSDT", "LONG", 1.0, 100.0)
    other = PositionBook(state.open(), restore([StateStoreSource(store)]).restored)
    with pytest.raises(PositionStateError, match="never reused"):
        PositionBook(store).open("a", "BTCUSDT", "LONG", 1.0, 100.0)
    book.mark("a", bars_held=1)
    with pytest.raises(PositionStateError, match="changed in the store"):
        other.mark("a", bars_held=2)
    [p] = restore([StateStoreSource(store)]).restored
    assert p.bars_held == 1 and p == book.get("a")


def test_malformed_latest_rows_are_quarantined_once_and_never_resurrected(
    state: State, tmp_path: Path
) -> None:
    state.put_rows(
        [
            _row("ok", seq=1),
            _row("zero", seq=1, quantity=5.0, notional=42.0),
            _row("zero", seq=2, quantity=0.0, notional=0.0, bars_held=34),
            _row("nan", seq=3, notional=math.nan),
            _row("neg", seq=4, quantity=-2.0),
            _row("status", seq=5, status="PARTIAL"),
            _row("side", seq=6, side="BUY"),
            _row("gone", seq=7),
            _row("gone", seq=8, status="CLOSED", quantity=0.0, notional=0.0),
        ]
    )
    store = state.open()
    snapshot = tmp_path / "snap.json"
    snapshot.write_text(json.dumps([_row("zero", seq=9, quantity=5.0, notional=42.0)]))
    chain = [StateStoreSource(store), JsonFileSource(snapshot)]
    dry = restore(chain, quarantine_store=store, dry_run=True)
    assert store.quarantined() == [] and dry.quarantine_copied == 0
    first = restore(chain, quarantine_store=store)
    second = restore(chain, quarantine_store=store)
    assert [p.trade_id for p in first.restored] == ["ok"]
    reasons = dict(sorted((q.trade_id, q.reason) for q in first.quarantined))
    # SQLite cannot hold a NaN (it would be NULL), so the import keeps it as the text 'NaN'
    assert reasons.pop("nan") == (
        "non-finite notional 'NaN'" if state.kind == "sqlite" else "non-finite notional nan"
    )
    assert sorted(reasons.items()) == [
        ("neg", "non-positive quantity -2.0"),
        ("side", "unknown side 'BUY'"),
        ("status", "unknown status 'PARTIAL'"),
        ("zero", "non-positive quantity 0.0"),
    ]
    assert [a.outcome for a in first.sources_tried] == ["used"]  # the snapshot is not asked
    assert (first.quarantine_copied, second.quarantine_copied) == (5, 0)
    copies = store.quarantined()
    assert sorted(c["trade_id"] for c in copies) == ["nan", "neg", "side", "status", "zero"]
    [zero] = [c for c in copies if c["trade_id"] == "zero"]
    assert zero["row"]["bars_held"] == 34 and zero["source"] == store.source_name


def test_reconcile_tombstones_settle_malformed_latest_rows(state: State) -> None:
    state.put_rows(
        [
            _row("z", seq=1, quantity=5.0, notional=42.0),
            _row("z", seq=2, quantity=0.0, notional=0.0),
            _row("old", seq=3, quantity=0.0),
            _row("old", seq=4),
        ]
    )
    store = state.open()
    listed = reconcile(store)
    assert [(m.trade_id, m.reason) for m in listed.latest] == [("z", "non-positive quantity 0.0")]
    assert [(m.trade_id, m.reason) for m in listed.superseded] == [
        ("old", "non-positive quantity 0.0")
    ]
    applied = reconcile(store, apply=True, clock=lambda: 1_781_000_100.0)
    [tomb] = applied.tombstones
    assert tomb.trade_id == "z" and tomb.seq is not None
    after = restore([StateStoreSource(store)], quarantine_store=store)
    assert after.quarantined == [] and [p.trade_id for p in after.restored] == ["old"]
    assert reconcile(store, apply=True).tombstones == []  # nothing left: idempotent


def test_crash_loop_guard_counts_starts_and_resets(state: State) -> None:
    now = [1_781_000_000.0]
    policy = CrashLoopPolicy(max_starts=2, window_seconds=60)
    kwargs: dict[str, Any] = {"state": state.url, "policy": policy, "clock": lambda: now[0]}
    safe = []
    for _ in range(3):
        startup = start_positions(state.tmp_path, alert=lambda e: None, **kwargs)
        safe.append(startup.safe_mode)
        startup.close()
        now[0] += 1
    assert safe == [False, False, True]
    startup = start_positions(state.tmp_path, alert=lambda e: None, **kwargs)
    with pytest.raises(SafeModeError):
        startup.book.open("a", "BTCUSDT", "LONG", 1.0, 100.0)
    assert startup.store is not None and len(startup.store.starts()) == 4
    assert startup.store.clear_starts() == 4 and startup.store.starts() == []
    startup.close()
    now[0] += 1
    startup = start_positions(state.tmp_path, alert=lambda e: None, **kwargs)
    assert not startup.safe_mode and startup.guard is not None
    assert startup.guard.starts_in_window == 1
    startup.close()
    now[0] += 120  # the window passed
    startup = start_positions(state.tmp_path, alert=lambda e: None, **kwargs)
    assert startup.guard is not None and startup.guard.starts_in_window == 1
    startup.close()


def test_unreachable_state_falls_back_to_the_secondary(state: State, tmp_path: Path) -> None:
    if state.kind == "sqlite":
        missing = str(tmp_path / "missing" / "state.sqlite3")
    else:
        missing = f"clickhouse://127.0.0.1:{free_port()}/nowhere?timeout=2"
    snapshot = tmp_path / "snap.json"
    snapshot.write_text(json.dumps([_row("a"), _row("b", quantity=0)]))
    report = restore([StateStoreSource(missing), JsonFileSource(snapshot)])
    assert [a.outcome for a in report.sources_tried] == ["unavailable", "used"]
    assert [p.trade_id for p in report.restored] == ["a"]
    assert [(q.trade_id, q.reason) for q in report.quarantined] == [
        ("b", "non-positive quantity 0")
    ]


def test_empty_state_is_empty_and_restore_goes_on(state: State, tmp_path: Path) -> None:
    store = state.open()
    assert store.read_latest() is None and store.row_count() == 0
    snapshot = tmp_path / "snap.json"
    snapshot.write_text(json.dumps([_row("a")]))
    report = restore([StateStoreSource(store), JsonFileSource(snapshot)])
    assert [a.outcome for a in report.sources_tried] == ["empty", "used"]
    assert [p.trade_id for p in report.restored] == ["a"]


def test_startup_over_the_state_url_trades_and_restores(state: State) -> None:
    clock: Callable[[], float] = lambda: 1_781_000_000.0  # noqa: E731
    first = start_positions(state.tmp_path, state=state.url, alert=lambda e: None, clock=clock)
    first.book.open("a", "BTCUSDT", "LONG", 0.25, 64_000.0)
    first.book.open("b", "ETHUSDT", "SHORT", 3.0, 3_100.0)
    first.book.retract("b", quantity=1.0)
    held = first.book.positions()
    first.close()
    again = start_positions(state.tmp_path, state=state.url, alert=lambda e: None, clock=clock)
    assert again.report.restored == held
    assert again.report.source_used == (again.store.source_name if again.store else "")
    again.book.close("a", 65_000.0, "exit")
    assert [p.trade_id for p in again.book.positions()] == ["b"]
    again.close()
