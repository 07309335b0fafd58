"""The whole pipeline over Redis: SIGKILL and rerun, a Redis restart mid-run, two writers.

Each test starts its own redis-server (AOF, ``appendfsync always``) and runs the real
``tickvault replay --bus redis://...`` in subprocesses. The store must end up holding every
unique key of the input exactly once, and the dead letters exactly the malformed lines.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import orjson

from tickvault.bus import open_bus
from tickvault.delivery.publisher import FramePublisher, SourcePump
from tickvault.sources.binance.sample import Recording, write_recording
from tickvault.sources.replay import ReplaySource

from .cli_helpers import cli_env, spawn, tv_json
from .crash_helpers import published_lines
from .servers import RedisServer

ROOT = Path(__file__).resolve().parents[1]


def _wait(cond: Callable[[], bool], proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while proc.poll() is None and not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)  # polling a condition with a deadline


def _keys(store: Path) -> dict[str, set[tuple[object, ...]]]:
    con = duckdb.connect(str(store), read_only=True)
    try:
        return {
            "trades": set(con.execute("SELECT symbol, trade_id FROM trades").fetchall()),
            "quotes": set(con.execute("SELECT symbol, update_id FROM quotes").fetchall()),
            "aggs": set(con.execute("SELECT symbol, agg_id FROM agg_trades").fetchall()),
        }
    finally:
        con.close()


def _assert_exact(data: Path, rec: Recording, bus_url: str) -> None:
    counts = tv_json(
        "query",
        "SELECT (SELECT count(*) FROM trades) AS trades, (SELECT count(*) FROM quotes) AS quotes,"
        " (SELECT count(*) FROM agg_trades) AS aggs,"
        " (SELECT count(*) FROM (SELECT symbol, trade_id FROM trades GROUP BY ALL"
        "  HAVING count(*) > 1)) AS dup_trades",
        "--data-dir",
        data,
    )[0]
    assert counts == {
        "trades": len(rec.trade_keys),
        "quotes": len(rec.quote_keys),
        "aggs": len(rec.agg_keys),
        "dup_trades": 0,
    }
    keys = _keys(data / "ticks.duckdb")
    assert keys["trades"] == rec.trade_keys and keys["quotes"] == rec.quote_keys
    letters = tv_json("dlq", "list", "--bus", bus_url, "--limit", "100000")
    assert len(letters) == rec.malformed_lines
    assert {x["kind"] for x in letters} == {"raw"}
    assert len({x["payload"] for x in letters}) == rec.malformed_lines
    inspect = tv_json("streams", "inspect", "--bus", bus_url)
    (group,) = inspect["streams"][0]["groups"]
    assert group["pending"] == 0 and group["lag"] == 0


def test_sigkill_at_random_points_then_rerun_gives_exact_contents(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    rec = write_recording(
        tmp_path / "in.jsonl", 150_000, malformed_every=499, duplicate_share=0.01, seed=5
    )
    data = tmp_path / "data"
    args: list[str | Path] = ["replay", rec.path, "--data-dir", data, "--bus", redis_server.url]
    rng = random.Random(3003)
    fractions = sorted(rng.uniform(0.05, 0.95) for _ in range(4))
    plans: list[Callable[[], bool]] = [lambda: True]  # during start-up
    plans += [lambda f=f: published_lines(data) >= f * rec.lines for f in fractions]
    plans.append(lambda: published_lines(data) >= rec.lines)  # while the writer drains
    kills = 0
    for ready in plans:
        proc = spawn(*args, "--json")
        _wait(ready, proc)
        time.sleep(rng.uniform(0.0, 0.3))  # the kill lands at a random instant after it
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.communicate(timeout=60)
    assert kills >= 4

    summary = tv_json(*args)
    assert summary["drained"] is True
    _assert_exact(data, rec, redis_server.url)


def test_redis_restarts_mid_run_and_the_replay_still_finishes_exactly(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    rec = write_recording(tmp_path / "in.jsonl", 150_000, malformed_every=499, seed=6)
    data = tmp_path / "data"
    proc = spawn("replay", rec.path, "--data-dir", data, "--bus", redis_server.url, "--json")
    for fraction in (0.3, 0.7):
        _wait(lambda f=fraction: published_lines(data) >= f * rec.lines, proc)
        assert proc.poll() is None, "the replay ended before the restart"
        redis_server.restart()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert orjson.loads(out)["drained"] is True
    _assert_exact(data, rec, redis_server.url)


async def _publish(bus_url: str, path: Path) -> None:
    bus = open_bus(bus_url)
    try:
        await bus.ensure_group("ticks", "writers")
        pump = SourcePump(FramePublisher(bus, "ticks"), asyncio.Event(), asyncio.Event())
        await pump.run(ReplaySource([path]))
    finally:
        await bus.close()


def _writers(bus_url: str, stores: list[Path]) -> list[dict[str, float]]:
    """Start one writer process per store, let them go together, return their results."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.writer_process", bus_url, str(store), f"w{i}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=cli_env(),
        )
        for i, store in enumerate(stores)
    ]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        results.append(orjson.loads(out.strip().splitlines()[-1]))
    return results


def test_two_writer_processes_share_a_backlog_and_store_each_record_once(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    # No duplicate lines: each writer has its own store, so "stored once" means no bus entry
    # was handled by both writers (a shared store would also absorb duplicates).
    rec = write_recording(tmp_path / "in.jsonl", 120_000, duplicate_share=0.0, seed=7)
    asyncio.run(_publish(redis_server.url, rec.path))
    stores = [tmp_path / "a.duckdb", tmp_path / "b.duckdb"]

    results = _writers(redis_server.url, stores)

    assert all(r["entries"] > 0 and r["inserted"] > 0 for r in results), results
    a, b = (_keys(s) for s in stores)
    for table, expected in (
        ("trades", rec.trade_keys),
        ("quotes", rec.quote_keys),
        ("aggs", rec.agg_keys),
    ):
        assert a[table].isdisjoint(b[table]), f"{table}: a record was stored twice"
        assert a[table] | b[table] == expected
    assert sum(r["inserted"] for r in results) == rec.unique_records


async def _crashed_writer(bus_url: str, path: Path, name: str, idle_ms: int) -> int:
    """Publish ``path``, have writer ``name`` read every entry and die; wait until stale."""
    await _publish(bus_url, path)
    bus = open_bus(bus_url)
    try:
        taken = 0
        while batch := await bus.read("ticks", "writers", name, 100, 100):
            taken += len(batch)
        deadline = time.monotonic() + 30
        while not all(
            c.idle_ms >= idle_ms for c in await bus.consumers("ticks", "writers") if c.name == name
        ) or any(p.idle_ms < idle_ms for p in await bus.pending("ticks", "writers")):
            assert time.monotonic() < deadline, "entries did not become stale"
            await asyncio.sleep(0.01)  # polling a condition with a deadline
        return taken
    finally:
        await bus.close()


def test_the_service_reclaims_a_crashed_writers_entries_before_consuming(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    old = write_recording(tmp_path / "old.jsonl", 30_000, duplicate_share=0.0, seed=21)
    new = write_recording(
        tmp_path / "new.jsonl", 20_000, duplicate_share=0.0, seed=22, first_id=5_000_000
    )
    taken = asyncio.run(_crashed_writer(redis_server.url, old.path, "old-host-writer", 300))
    assert taken > 0
    config = tmp_path / "tickvault.toml"
    config.write_text("[writer]\nclaim_idle_ms = 300\n\n[upkeep]\nzombie_idle_ms = 300\n")
    data = tmp_path / "data"

    summary = tv_json(
        "replay", new.path, "--data-dir", data, "--bus", redis_server.url, "--config", config
    )

    assert summary["drained"] is True
    keys = _keys(data / "ticks.duckdb")
    assert keys["trades"] == old.trade_keys | new.trade_keys
    assert keys["quotes"] == old.quote_keys | new.quote_keys
    inspect = tv_json("streams", "inspect", "--bus", redis_server.url)
    (group,) = inspect["streams"][0]["groups"]
    assert group["pending"] == 0 and group["lag"] == 0
    assert "old-host-writer" not in {c["name"] for c in group["consumers"]}
