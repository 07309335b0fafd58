"""Restore: the chain of sources, quarantine, reports; real SQLite files and a real Redis."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers import RedisServer
from tickvault.core.errors import PositionSourceError
from tickvault.positions import (
    JsonFileSource,
    Position,
    PositionBook,
    PositionStore,
    RedisHashSource,
    RestoreSource,
    StateStoreSource,
    import_jsonl,
    reconcile,
    restore,
)
from tickvault.positions.sources import Candidate


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


@pytest.fixture
def state(tmp_path: Path) -> Iterator[PositionStore]:
    with PositionStore(tmp_path / "state.sqlite3") as store:
        yield store


def _import(store: PositionStore, tmp_path: Path, rows: list[dict[str, Any]]) -> None:
    path = tmp_path / f"import-{store.row_count()}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    import_jsonl(store, path)


def test_state_store_answer_is_authoritative(state: PositionStore, tmp_path: Path) -> None:
    book = PositionBook(state)
    book.open("a", "BTCUSDT", "LONG", 1.0, 100.0)
    snapshot = tmp_path / "snap.json"
    snapshot.write_text(json.dumps([_row("zzz")]))
    report = restore([StateStoreSource(state), JsonFileSource(snapshot)])
    assert [p.trade_id for p in report.restored] == ["a"]
    assert [(a.source, a.outcome) for a in report.sources_tried] == [("state-store", "used")]
    assert report.source_used == "state-store" and report.warnings == []


def test_missing_corrupt_or_empty_store_falls_back_to_json(tmp_path: Path) -> None:
    snapshot = tmp_path / "snap.json"
    snapshot.write_text(json.dumps({"positions": [_row("a"), _row("b", quantity=0.0)]}))
    corrupt = tmp_path / "corrupt.sqlite3"
    corrupt.write_bytes(b"this is not a database" * 100)
    with PositionStore(tmp_path / "empty.sqlite3") as empty:
        for first, outcome in [
            (StateStoreSource(tmp_path / "missing.sqlite3"), "unavailable"),
            (StateStoreSource(corrupt), "unavailable"),
            (StateStoreSource(empty), "empty"),
        ]:
            report = restore([first, JsonFileSource(snapshot)])
            assert [a.outcome for a in report.sources_tried] == [outcome, "used"]
            assert report.source_used == f"json:{snapshot}"
            assert [p.trade_id for p in report.restored] == ["a"]
            assert [(q.trade_id, q.reason) for q in report.quarantined] == [
                ("b", "non-positive quantity 0.0")
            ]


def test_no_source_answers_means_flat_with_a_warning(tmp_path: Path) -> None:
    report = restore(
        [StateStoreSource(tmp_path / "nope.sqlite3"), JsonFileSource(tmp_path / "nope.json")]
    )
    assert [(a.source, a.outcome) for a in report.sources_tried][-1] == ("flat", "used")
    assert [a.outcome for a in report.sources_tried] == ["unavailable", "unavailable", "used"]
    assert report.restored == [] and report.source_used == "flat"
    assert report.warnings == ["no restore source answered: starting flat"]


def test_a_source_failing_in_any_way_is_reported_and_skipped(tmp_path: Path) -> None:
    class Broken(RestoreSource):
        name = "broken"

        def read(self) -> list[Candidate] | None:
            raise RuntimeError("boom")

    snapshot = tmp_path / "snap.json"
    snapshot.write_text("[]")
    report = restore([Broken(), JsonFileSource(snapshot)])
    assert [(a.source, a.outcome, a.detail) for a in report.sources_tried] == [
        ("broken", "error", "RuntimeError: boom"),
        (f"json:{snapshot}", "used", ""),
    ]
    assert report.restored == [] and report.warnings == []


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ([_row("a"), "x"], "snapshot entry is str, not an object"),
        ({"a": _row("a"), "b": _row("c")}, "trade_id 'c' differs from its key 'b'"),
        ([_row("a"), _row("b", notional=math.nan)], "non-finite notional nan"),
        ([_row("a"), _row("b", side="BUY")], "unknown side 'BUY'"),
        ([_row("a"), _row("b", status="PARTIAL")], "unknown status 'PARTIAL'"),
        ([_row("a"), {k: v for k, v in _row("b").items() if k != "seq"}], "missing seq"),
    ],
)
def test_json_snapshot_rows_are_judged_like_store_rows(
    tmp_path: Path, content: Any, reason: str
) -> None:
    snapshot = tmp_path / "snap.json"
    snapshot.write_text(json.dumps(content))  # json writes NaN as the NaN literal
    report = restore([JsonFileSource(snapshot)])
    assert [p.trade_id for p in report.restored] == ["a"]
    assert [q.reason for q in report.quarantined] == [reason]


def test_json_snapshot_keeps_the_highest_seq_per_trade(tmp_path: Path) -> None:
    snapshot = tmp_path / "snap.json"
    snapshot.write_text(
        json.dumps([_row("a", seq=5, quantity=2.0), _row("a", seq=3), _row("a", seq=4)])
    )
    [p] = restore([JsonFileSource(snapshot)]).restored
    assert (p.seq, p.quantity) == (5, 2.0)


def test_json_snapshot_that_is_not_rows_is_unavailable(tmp_path: Path) -> None:
    snapshot = tmp_path / "snap.json"
    for text in ("not json", "42", '"x"'):
        snapshot.write_text(text)
        with pytest.raises(PositionSourceError):
            JsonFileSource(snapshot).read()
        report = restore([JsonFileSource(snapshot)])
        assert [a.outcome for a in report.sources_tried] == ["unavailable", "used"]


def test_json_snapshot_round_trip(state: PositionStore, tmp_path: Path) -> None:
    book = PositionBook(state)
    book.open("a", "BTCUSDT", "LONG", 1.5, 100.0)
    book.open("b", "ETHUSDT", "SHORT", 2.0, 50.0)
    book.mark("b", bars_held=4)
    sink = JsonFileSource(tmp_path / "snap" / "positions.json")
    sink.write(book.positions())
    assert restore([sink]).restored == book.positions()
    sink.write([])
    report = restore([sink])
    assert report.restored == [] and report.sources_tried[0].outcome == "used"
    assert [p.name for p in sink.path.parent.iterdir()] == ["positions.json"]  # no temp left


def test_redis_hash_round_trip_and_bad_values(
    redis_server: RedisServer, state: PositionStore
) -> None:
    book = PositionBook(state)
    book.open("a", "BTCUSDT", "LONG", 1.5, 100.0)
    book.open("b", "ETHUSDT", "SHORT", 2.0, 50.0)
    source = RedisHashSource(redis_server.url, "test:positions")
    assert source.read() is None  # no key: empty, try the next source
    source.write(book.positions())
    assert restore([source]).restored == book.positions()

    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.hset("test:positions", "c", b"{not json")
    client.hset("test:positions", "d", json.dumps(_row("d", quantity=0, notional=0)))
    client.close()
    report = restore([source], quarantine_store=state)
    assert [p.trade_id for p in report.restored] == ["a", "b"]
    assert sorted((q.trade_id, q.reason) for q in report.quarantined) == [
        ("c", "snapshot value is not JSON"),
        ("d", "non-positive quantity 0"),
    ]
    assert sorted(c["source"] for c in state.quarantined()) == ["redis:test:positions"] * 2
    source.write([])
    assert source.read() is None


def test_redis_down_is_unavailable_and_the_chain_goes_on(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    redis_server.stop()
    source = RedisHashSource(redis_server.url, timeout=0.5)
    with pytest.raises(PositionSourceError, match="unreachable"):
        source.read()
    snapshot = tmp_path / "snap.json"
    snapshot.write_text(json.dumps([_row("a")]))
    report = restore([source, JsonFileSource(snapshot)])
    assert [a.outcome for a in report.sources_tried] == ["unavailable", "used"]
    assert [p.trade_id for p in report.restored] == ["a"]


def test_quarantine_is_copied_once_and_dry_run_writes_nothing(
    state: PositionStore, tmp_path: Path
) -> None:
    _import(state, tmp_path, [_row("a"), _row("b", quantity=-1.0)])
    rows_before = state.row_count()
    dry = restore([StateStoreSource(state)], quarantine_store=state, dry_run=True)
    assert [q.trade_id for q in dry.quarantined] == ["b"] and dry.quarantine_copied == 0
    assert state.quarantined() == []
    first = restore([StateStoreSource(state)], quarantine_store=state)
    second = restore([StateStoreSource(state)], quarantine_store=state)
    assert (first.quarantine_copied, second.quarantine_copied) == (1, 0)
    [copy] = state.quarantined()
    assert (copy["trade_id"], copy["reason"], copy["source"]) == (
        "b",
        "non-positive quantity -1.0",
        "state-store",
    )
    assert copy["row"]["quantity"] == -1.0
    assert state.row_count() == rows_before


def test_quarantine_copy_failure_is_a_warning(state: PositionStore, tmp_path: Path) -> None:
    _import(state, tmp_path, [_row("b", quantity=0)])
    with PositionStore(state.path, read_only=True) as ro:
        report = restore([StateStoreSource(ro)], quarantine_store=ro)
    assert [q.trade_id for q in report.quarantined] == ["b"]
    assert len(report.warnings) == 1 and "quarantine copy failed" in report.warnings[0]
    report = restore([StateStoreSource(state)])
    assert report.warnings == ["1 quarantined row(s) not copied: no writable store"]


def test_quarantined_trade_is_not_taken_from_a_later_source(
    state: PositionStore, tmp_path: Path
) -> None:
    _import(state, tmp_path, [_row("a", quantity=0)])
    snapshot = tmp_path / "snap.json"
    snapshot.write_text(json.dumps([_row("a")]))
    report = restore([StateStoreSource(state), JsonFileSource(snapshot)])
    assert report.restored == [] and [q.trade_id for q in report.quarantined] == ["a"]


def test_latest_row_is_highest_seq_not_last_written(state: PositionStore, tmp_path: Path) -> None:
    _import(
        state,
        tmp_path,
        [_row("a", seq=7, quantity=3.0), _row("a", seq=2, status="CLOSED"), _row("b", seq=9)],
    )
    report = restore([StateStoreSource(state)])
    assert [(p.trade_id, p.quantity) for p in report.restored] == [("a", 3.0), ("b", 1.0)]
    # a new book write for an imported trade gets a seq above every imported one
    book = PositionBook(state, report.restored)
    book.retract("a", fraction=0.5)
    assert restore([StateStoreSource(state)]).restored == book.positions()


def test_rows_without_integer_seq_make_an_open_trade_undecidable(
    state: PositionStore, tmp_path: Path
) -> None:
    _import(
        state,
        tmp_path,
        [
            _row("a", seq=1),
            _row("a", seq=None, status="CLOSED", ts=1_781_000_000_000_001),
            _row("b", seq="x"),
            _row("c", seq=1, status="CLOSED"),
            _row("c", seq=2.5, ts=1_781_000_000_000_002),
        ],
    )
    report = restore([StateStoreSource(state)])
    assert report.restored == []
    # c: its latest ordered row is CLOSED, and trade ids are never reused: the trade ended
    assert sorted((q.trade_id, q.reason) for q in report.quarantined) == [
        ("a", "unordered history: 1 row(s) of this trade have no integer seq"),
        ("b", "unordered history: 1 row(s) of this trade have no integer seq"),
    ]
    rec = reconcile(state, apply=True)
    assert sorted(t.trade_id for t in rec.tombstones if t.seq is not None) == ["a", "b"]
    after = restore([StateStoreSource(state)])
    assert after.quarantined == [] and after.restored == []


def test_restored_positions_are_typed(state: PositionStore, tmp_path: Path) -> None:
    _import(state, tmp_path, [_row("a", quantity=2, notional=200, entry_price=100)])
    [p] = restore([StateStoreSource(state)]).restored
    assert isinstance(p, Position)
    assert (type(p.quantity), type(p.notional), type(p.entry_price)) == (float, float, float)
