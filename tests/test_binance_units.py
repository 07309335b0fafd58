"""The Binance collector's pure parts: id tracking, the book sync rules, backoff, recording."""

from __future__ import annotations

import gzip
import random
from pathlib import Path

import pytest

from tickvault.core.errors import ConfigError
from tickvault.sources.binance.book import DUPLICATE, GAP, STORED, BookSync
from tickvault.sources.binance.collector import BinanceOptions, split_streams, stream_names
from tickvault.sources.binance.gaps import IdTracker
from tickvault.sources.recorder import FrameRecorder
from tickvault.sources.replay import ReplaySource
from tickvault.sources.rest import backoff_delay

from .fakes.collect import Collected


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_id_tracker_baseline_duplicates_and_a_settled_hole() -> None:
    clock = ManualClock()
    t = IdTracker("trade", settle_s=2.0, clock=clock, wall_us=lambda: 42)
    assert t.observe("BTCUSDT", 100, 1)  # the first id is the baseline, not a gap
    assert t.observe("BTCUSDT", 101, 2)
    assert not t.observe("BTCUSDT", 101, 2)  # duplicate
    assert t.observe("BTCUSDT", 106, 9)  # hole 102..105
    assert t.pending == 1
    assert t.settled() == []  # not settled yet: late arrivals may still fill it
    assert t.observe("BTCUSDT", 103, 4)  # a late arrival fills part of the hole
    assert not t.observe("BTCUSDT", 103, 4)  # ... once
    clock.now += 2.0
    holes = t.settled()
    assert [(h.from_id, h.to_id) for h in holes] == [(102, 102), (104, 105)]
    assert all(h.detected_at_us == 42 and h.before_ts_us == 2 and h.after_ts_us == 9 for h in holes)
    assert t.pending == 0
    assert t.duplicates == 2 and t.late_fills == 1


def test_id_tracker_keeps_symbols_apart() -> None:
    t = IdTracker("aggTrade", settle_s=0.0, clock=ManualClock())
    assert t.observe("A", 1, 0) and t.observe("B", 50, 0)
    assert t.observe("A", 2, 0) and t.observe("B", 52, 0)
    assert [(h.symbol, h.from_id, h.to_id) for h in t.settled()] == [("B", 51, 51)]


def _diff(sync: BookSync, first: int, final: int, bids: dict[float, float]) -> int:
    return sync.on_diff(first, final, list(bids), list(bids.values()), [], [])


def test_book_sync_follows_the_documented_procedure() -> None:
    sync = BookSync("BTCUSDT")
    assert sync.wants_snapshot
    # Buffered while the snapshot is fetched.
    assert _diff(sync, 95, 98, {1.0: 1.0}) == STORED
    assert _diff(sync, 99, 101, {2.0: 1.0}) == STORED
    assert _diff(sync, 102, 103, {3.0: 1.0}) == STORED
    sync.snapshot_requested()
    # Snapshot at 100: the event ending at 98 is dropped; 99..101 straddles 101 = 100 + 1.
    assert sync.on_snapshot(100, [(9.0, 1.0)], [(10.0, 2.0)])
    assert sync.live and sync.book_update_id == 103
    assert sync.book.bids == {9.0: 1.0, 2.0: 1.0, 3.0: 1.0}  # 1.0 came before the snapshot
    assert sync.book.asks == {10.0: 2.0}
    # Each next event must start at previous u + 1; a zero quantity removes a level.
    assert _diff(sync, 104, 104, {9.0: 0.0}) == STORED
    assert 9.0 not in sync.book.bids
    assert _diff(sync, 104, 104, {9.0: 5.0}) == DUPLICATE  # seen (rollover overlap)
    assert 9.0 not in sync.book.bids
    # A jump breaks the book: gap reported, book dropped, a new snapshot wanted.
    assert _diff(sync, 110, 111, {4.0: 1.0}) == GAP
    assert sync.last_gap == (105, 109)
    assert not sync.live and sync.wants_snapshot and sync.book.bids == {}
    sync.snapshot_requested()
    assert sync.on_snapshot(110, [(8.0, 1.0)], [])
    assert sync.live and sync.book_update_id == 111 and sync.book.bids == {8.0: 1.0, 4.0: 1.0}


def test_book_sync_refetches_a_snapshot_older_than_the_stream() -> None:
    sync = BookSync("X")
    _diff(sync, 200, 201, {1.0: 1.0})
    sync.snapshot_requested()
    assert not sync.on_snapshot(150, [], [])  # 151 < 200: the snapshot is too old
    assert sync.wants_snapshot and not sync.live
    _diff(sync, 202, 203, {2.0: 1.0})
    sync.snapshot_requested()
    assert sync.on_snapshot(201, [(5.0, 1.0)], [])
    assert sync.live and sync.book.bids == {5.0: 1.0, 2.0: 1.0}


def test_book_sync_waits_for_the_diff_that_straddles_a_fresh_snapshot() -> None:
    sync = BookSync("X")
    _diff(sync, 10, 11, {1.0: 1.0})
    sync.snapshot_requested()
    assert not sync.on_snapshot(20, [(5.0, 1.0)], [])  # newer than anything buffered
    assert sync.bridging and not sync.wants_snapshot
    _diff(sync, 12, 20, {6.0: 1.0})  # the stream catching up: not applied, not a gap
    assert sync.bridging and not sync.live
    _diff(sync, 21, 22, {7.0: 1.0})
    assert sync.live and sync.book.bids == {5.0: 1.0, 7.0: 1.0}


def test_backoff_is_capped_exponential_with_jitter() -> None:
    rng = random.Random(1)
    for attempt in range(1, 40):
        d = backoff_delay(attempt, 0.5, 30.0, rng)
        ideal = min(30.0, 0.5 * 2 ** (attempt - 1))
        assert ideal / 2 <= d <= ideal
    draws = {round(backoff_delay(5, 0.5, 30.0, rng), 6) for _ in range(20)}
    assert len(draws) > 10  # jittered, so clients that failed together do not return together


def test_streams_split_at_the_venue_limit() -> None:
    symbols = [f"S{i}USDT" for i in range(513)]
    streams = stream_names(symbols, ["trade", "depth"])
    assert streams[:2] == ["s0usdt@trade", "s0usdt@depth@100ms"]
    groups = split_streams(streams, 1024)
    assert [len(g) for g in groups] == [1024, 2]
    assert [s for g in groups for s in g] == streams


def test_options_refuse_unknown_channels() -> None:
    with pytest.raises(ConfigError, match="unknown channel"):
        BinanceOptions(symbols=["BTCUSDT"], channels=["trades"])
    with pytest.raises(ConfigError, match="symbols"):
        BinanceOptions(symbols=[], channels=["trade"])


def _listing(directory: Path) -> list[Path]:
    return sorted(directory.iterdir())


def _read_gz(path: Path) -> bytes:
    with gzip.open(path) as fh:
        return fh.read()


async def test_recorder_rotates_complete_files_that_replay_accepts(tmp_path: Path) -> None:
    now = [1_700_000_000.0]
    rec = FrameRecorder(tmp_path, rotate_s=60.0, rotate_bytes=10_000, clock=lambda: now[0])
    frames = [
        b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":%d,'
        b'"p":"1.5","q":"2","T":1,"m":true,"M":true}}' % i
        for i in range(300)
    ]
    for i in range(0, 300, 10):
        rec.write(frames[i : i + 10])
        if i == 150:
            now[0] += 61  # time-based rotation too
    assert rec.current is not None and rec.current.name.endswith(".jsonl.gz.part")
    rec.close()
    assert rec.current is None
    files = _listing(tmp_path)
    assert len(files) >= 3 and all(f.name.endswith(".jsonl.gz") for f in files)
    assert files == sorted(rec.completed)
    lines = b"".join(_read_gz(f) for f in files).splitlines()
    assert lines == frames
    async with Collected(ReplaySource(files)) as got:
        assert got.task is not None
        await got.task
    assert sorted(r[2] for r in got.rows["trade"]) == list(range(300))
