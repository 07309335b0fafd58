"""Crash-loop guard and start-up: safe mode instead of an endless restart loop.

Time is an injected clock (a list the test advances), never a sleep.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tickvault.cli.positions import app
from tickvault.core.errors import PositionInputError, SafeModeError
from tickvault.positions import (
    AlertEvent,
    CrashLoopGuard,
    CrashLoopPolicy,
    JsonFileSource,
    PositionBook,
    PositionStore,
    import_jsonl,
    start_positions,
)


class Clock:
    def __init__(self, now: float = 1_781_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_guard_trips_past_the_threshold_within_the_window(tmp_path: Path) -> None:
    clock = Clock()
    policy = CrashLoopPolicy(max_starts=3, window_seconds=60)
    with PositionStore(tmp_path / "state.sqlite3") as store:
        guard = CrashLoopGuard(store, policy, clock)
        decisions = []
        for _ in range(4):
            decisions.append(guard.record_start())
            clock.now += 10
        assert [d.starts_in_window for d in decisions] == [1, 2, 3, 4]
        assert [d.safe_mode for d in decisions] == [False, False, False, True]
    # persisted: a new process (new connection) sees the same count
    with PositionStore(tmp_path / "state.sqlite3") as store:
        guard = CrashLoopGuard(store, policy, clock)
        assert guard.status().starts_in_window == 4
        assert guard.record_start().safe_mode
        # a quiet window later, starts are normal again
        clock.now += 61
        assert guard.record_start() == guard.status()
        assert guard.status().starts_in_window == 1 and not guard.status().safe_mode
        assert len(store.starts()) == 1  # old starts are forgotten, the table stays small


def test_guard_reset(tmp_path: Path) -> None:
    clock = Clock()
    with PositionStore(tmp_path / "state.sqlite3") as store:
        guard = CrashLoopGuard(store, CrashLoopPolicy(max_starts=1), clock)
        guard.record_start()
        assert guard.record_start().safe_mode
        assert guard.reset() == 2
        assert not guard.record_start().safe_mode


@pytest.mark.parametrize(("max_starts", "window"), [(0, 60.0), (3, 0.0), (3, -1.0)])
def test_policy_rejects_nonsense(max_starts: int, window: float) -> None:
    with pytest.raises(PositionInputError):
        CrashLoopPolicy(max_starts=max_starts, window_seconds=window)


def _seed(data_dir: Path) -> None:
    with PositionStore(data_dir / "state.sqlite3") as store:
        book = PositionBook(store)
        book.open("a", "BTCUSDT", "LONG", 1.0, 100.0)
    legacy = data_dir / "legacy.jsonl"
    legacy.write_text(
        json.dumps(
            {
                "trade_id": "bad",
                "symbol": "ATOMUSDT",
                "side": "SHORT",
                "status": "OPEN",
                "quantity": 0,
                "notional": 0,
                "entry_price": 8.0,
                "bars_held": 34,
                "ts": 1_781_000_000,
                "seq": 99,
            }
        )
        + "\n"
    )
    with PositionStore(data_dir / "state.sqlite3") as store:
        import_jsonl(store, legacy)


def test_start_positions_enters_safe_mode_instead_of_looping(tmp_path: Path) -> None:
    _seed(tmp_path)
    clock = Clock()
    policy = CrashLoopPolicy(max_starts=2, window_seconds=300)
    kinds: list[list[str]] = []
    for _ in range(3):
        alerts: list[AlertEvent] = []
        startup = start_positions(tmp_path, policy=policy, clock=clock, alert=alerts.append)
        kinds.append([a.kind for a in alerts])
        clock.now += 5
        if not startup.safe_mode:
            startup.close()
    assert kinds == [
        ["positions.quarantined"],
        ["positions.quarantined"],
        ["positions.crash_loop", "positions.quarantined"],
    ]
    assert startup.guard is not None and startup.guard.starts_in_window == 3
    crash = next(a for a in alerts if a.kind == "positions.crash_loop")
    assert crash.level == "critical" and crash.details["max_starts"] == 2
    # restore still reports, the book opens nothing
    assert [p.trade_id for p in startup.report.restored] == ["a"]
    assert startup.report.dry_run
    with pytest.raises(SafeModeError, match="crash loop"):
        startup.book.open("new", "BTCUSDT", "LONG", 1.0, 100.0)
    with pytest.raises(SafeModeError):
        startup.book.close("a", 100.0, "x")
    startup.close()
    # an operator resets the guard: the next start is normal
    result = CliRunner().invoke(app, ["guard", "--reset", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "cleared 3" in result.output
    startup = start_positions(tmp_path, policy=policy, clock=clock, alert=lambda e: None)
    assert not startup.safe_mode
    startup.book.open("new", "BTCUSDT", "LONG", 1.0, 100.0)
    startup.close()


def test_unusable_state_store_is_safe_mode_with_fallback(tmp_path: Path) -> None:
    (tmp_path / "state.sqlite3").write_bytes(b"garbage, not sqlite" * 50)
    snapshot = tmp_path / "snap.json"
    snapshot.write_text(
        json.dumps(
            [
                {
                    "trade_id": "a",
                    "symbol": "BTCUSDT",
                    "side": "LONG",
                    "status": "OPEN",
                    "quantity": 1.0,
                    "notional": 100.0,
                    "entry_price": 100.0,
                    "bars_held": 0,
                    "ts": 1,
                    "seq": 1,
                }
            ]
        )
    )
    alerts: list[AlertEvent] = []
    startup = start_positions(tmp_path, secondary=[JsonFileSource(snapshot)], alert=alerts.append)
    assert startup.safe_mode and startup.guard is None
    assert [a.kind for a in alerts] == ["positions.store_unavailable", "positions.fallback_source"]
    assert [a.outcome for a in startup.report.sources_tried] == ["unavailable", "used"]
    assert [p.trade_id for p in startup.report.restored] == ["a"]
    with pytest.raises(SafeModeError, match="state store unavailable"):
        startup.book.open("b", "BTCUSDT", "LONG", 1.0, 100.0)


def test_fresh_data_dir_starts_flat_quietly(tmp_path: Path) -> None:
    alerts: list[Any] = []
    startup = start_positions(tmp_path / "new", alert=alerts.append)
    assert alerts == [] and not startup.safe_mode
    assert startup.report.restored == [] and startup.report.source_used == "flat"
    assert [a.outcome for a in startup.report.sources_tried] == ["empty", "used"]
    startup.book.open("a", "BTCUSDT", "LONG", 1.0, 100.0)
    startup.close()


def test_corrupt_pages_in_the_state_store_are_not_fatal(tmp_path: Path) -> None:
    with PositionStore(tmp_path / "state.sqlite3") as store:
        book = PositionBook(store)
        for i in range(300):
            book.open(f"t{i}", "BTCUSDT", "LONG", 1.0, 100.0)
        store._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    path = tmp_path / "state.sqlite3"
    data = bytearray(path.read_bytes())
    for offset in range(2 * 4096, len(data), 4096):  # keep the header and schema pages
        data[offset : offset + 4096] = b"\xde\xad\xbe\xef" * 1024
    path.write_bytes(bytes(data))
    alerts: list[AlertEvent] = []
    startup = start_positions(tmp_path, alert=alerts.append)
    assert startup.safe_mode
    assert [a.kind for a in alerts] == ["positions.store_unavailable", "positions.fallback_source"]
    assert "malformed" in alerts[0].message
    [attempt, flat] = startup.report.sources_tried
    assert (attempt.outcome, flat.source) == ("error", "flat")
    startup.close()


def test_a_failing_alert_sink_does_not_stop_the_start(tmp_path: Path) -> None:
    _seed(tmp_path)

    def broken(event: AlertEvent) -> None:
        raise ConnectionError("pager down")

    startup = start_positions(tmp_path, alert=broken)
    assert [a.kind for a in startup.alerts] == ["positions.quarantined"]
    assert [p.trade_id for p in startup.report.restored] == ["a"]
    startup.close()
