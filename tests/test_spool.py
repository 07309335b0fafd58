"""The disk spool against real files: order, restarts, torn and corrupt records, quotas."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tickvault.bus.base import NewDeadLetter
from tickvault.core.events import EventLog
from tickvault.delivery.spool import FRAME, LETTERS, Spool, parse_size

from .polling import eventually


def payload(i: int, size: int = 300) -> bytes:
    return (f"frame-{i:06d}-".encode() * (size // 13 + 1))[:size]


async def drain_all(spool: Spool, batch: int = 7) -> list[bytes]:
    got: list[bytes] = []
    while True:
        records, pos = await spool.read(max_records=batch)
        if not records:
            return got
        got.extend(r.payload for r in records if r.type == FRAME)
        await spool.commit(pos, len(records))


async def test_drains_in_append_order_across_segments_and_restarts(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "sp", quota_bytes="64MiB", segment_bytes=1 << 20)
    spool.segment_bytes = 4096  # force many rotations
    for start in range(0, 200, 10):
        assert await spool.append("ticks", [payload(i) for i in range(start, start + 10)])
    assert spool.stats.backlog == 200
    assert len(list((tmp_path / "sp").glob("seg-*"))) > 5
    records, pos = await spool.read(max_records=50)
    await spool.commit(pos, len(records))
    first = [r.payload for r in records]
    await spool.close()

    again = Spool(tmp_path / "sp")  # a restart resumes at the persisted cursor
    await again.open()
    assert again.stats.backlog == 150
    rest = await drain_all(again)
    assert first + rest == [payload(i) for i in range(200)]
    assert again.stats.backlog == 0
    assert list((tmp_path / "sp").glob("seg-*")) == []  # every confirmed segment deleted
    await again.append("ticks", [payload(999)])  # usable after a full drain
    assert await drain_all(again) == [payload(999)]
    await again.close()


async def test_torn_last_frame_is_counted_and_the_rest_recovered(tmp_path: Path) -> None:
    """Incident 002 acceptance 6: a crash cut the last frame of a segment short."""
    spool = Spool(tmp_path / "sp")
    await spool.append("ticks", [payload(i) for i in range(20)])
    await spool.close()
    (segment,) = (tmp_path / "sp").glob("seg-*")
    segment.write_bytes(segment.read_bytes()[:-100])  # the last frame loses its end

    events = EventLog()
    reopened = Spool(tmp_path / "sp", events=events)
    await reopened.open()
    assert reopened.stats.backlog == 19
    assert await drain_all(reopened) == [payload(i) for i in range(19)]
    assert reopened.stats.torn == 1 and reopened.stats.corrupt == 0
    assert [e.kind for e in events.recent()] == ["spool.bad_record"]
    await reopened.append("ticks", [payload(20)])  # appends go to a fresh segment
    assert await drain_all(reopened) == [payload(20)]
    assert reopened.stats.torn == 1
    await reopened.close()


async def test_corrupt_frame_in_the_middle_is_skipped_and_counted(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "sp")
    await spool.append("ticks", [payload(i) for i in range(10)])
    await spool.close()
    (segment,) = (tmp_path / "sp").glob("seg-*")
    data = bytearray(segment.read_bytes())
    frame_len = len(data) // 10
    data[4 * frame_len + 40] ^= 0xFF  # a flipped bit in frame 4's body
    data[7 * frame_len] = ord("X")  # a damaged magic on frame 7
    segment.write_bytes(bytes(data))

    reopened = Spool(tmp_path / "sp")
    got = await drain_all(reopened, batch=3)
    assert got == [payload(i) for i in range(10) if i not in (4, 7)]
    assert reopened.stats.corrupt == 2 and reopened.stats.torn == 0
    await reopened.close()


async def test_dead_letters_round_trip(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "sp")
    letters = [NewDeadLetter("raw", "malformed JSON", b"{", "f:1", None, 0)]
    await spool.append("ticks", [payload(0)])
    await spool.append_letters("ticks", "writers", letters)
    records, _ = await spool.read()
    assert [r.type for r in records] == [FRAME, LETTERS]
    assert records[1].group == "writers" and list(records[1].letters) == letters
    await spool.close()


async def test_quota_drop_newest_counts_exactly_and_alerts(tmp_path: Path) -> None:
    events = EventLog()
    spool = Spool(tmp_path / "sp", quota_bytes=10_000, full_policy="drop_newest", events=events)
    kept = dropped = 0
    for i in range(60):
        if await spool.append("ticks", [payload(i)], records=5):
            kept += 1
        else:
            dropped += 1
    assert kept == spool.stats.backlog and dropped > 0
    assert spool.stats.dropped_frames == dropped and spool.stats.dropped_records == 5 * dropped
    assert spool.size_bytes <= 10_000
    kinds = [e.kind for e in events.recent(200)]
    assert kinds.count("spool.full") == 1 and kinds.count("spool.dropped") == dropped
    assert all(e.level == "critical" for e in events.recent(200))
    assert await drain_all(spool) == [payload(i) for i in range(kept)]
    await spool.close()


async def test_quota_block_holds_the_source_until_the_drain_frees_space(tmp_path: Path) -> None:
    events = EventLog()
    spool = Spool(tmp_path / "sp", quota_bytes=5_000, full_policy="block", events=events)
    for i in range(15):
        assert await spool.append("ticks", [payload(i)])
    blocked = asyncio.create_task(spool.append("ticks", [payload(100 + i) for i in range(3)]))
    await eventually(lambda: spool.stats.full_events == 1)
    assert not blocked.done()
    got = await drain_all(spool)  # the drain frees space; the blocked append goes through
    assert await asyncio.wait_for(blocked, 10) is True
    got += await drain_all(spool)
    assert got == [payload(i) for i in range(15)] + [payload(100 + i) for i in range(3)]
    assert spool.stats.dropped_frames == 0 and spool.stats.blocked_s > 0
    assert [e.kind for e in events.recent()] == ["spool.full"]
    await spool.close()


@pytest.mark.parametrize(
    ("text", "n"), [("512MiB", 512 << 20), ("2GB", 2 * 10**9), ("100k", 102_400), (7, 7)]
)
def test_parse_size(text: str | int, n: int) -> None:
    assert parse_size(text) == n
