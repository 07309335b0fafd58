"""The whole pipeline over Kafka.

* SIGKILL ``tickvault replay --bus kafka://...`` at random instants, rerun, and compare the
  store with the input exactly (librdkafka's mock cluster, three brokers in this process:
  it outlives every killed replay; a killed writer's partitions move on once its session
  times out).
* Rebalancing, on a real Kafka broker: a second writer joins a running group and the first
  one leaves mid-run while records keep flowing; every record ends up stored, exactly the
  input's keys (a commit past unfinished work would lose records, and the key sets would
  differ), none twice.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path

import duckdb

from tickvault.bus.kafka.bus import KafkaBus
from tickvault.delivery.publisher import FramePublisher
from tickvault.delivery.writer import Writer, WriterConfig
from tickvault.sources.binance.sample import write_recording
from tickvault.sources.replay import ReplaySource
from tickvault.stores.duckdb.store import DuckDBStore

from .cli_helpers import spawn, tv_json
from .crash_helpers import published_lines
from .kafka_mock import KafkaMockCluster
from .kafka_server import KafkaServer
from .polling import eventually
from .test_redis_pipeline import _assert_exact, _keys, _wait


def test_sigkill_at_random_points_then_rerun_gives_exact_contents(
    tmp_path: Path, kafka_mock_cluster: KafkaMockCluster
) -> None:
    rec = write_recording(
        tmp_path / "in.jsonl", 100_000, malformed_every=499, duplicate_share=0.01, seed=15
    )
    url = kafka_mock_cluster.url(session_timeout_ms=3000)
    data = tmp_path / "data"
    args: list[str | Path] = ["replay", rec.path, "--data-dir", data, "--bus", url]
    rng = random.Random(1010)
    fractions = sorted(rng.uniform(0.1, 0.9) for _ in range(2))
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
    assert kills >= 3

    summary = tv_json(*args)
    assert summary["drained"] is True
    _assert_exact(data, rec, url)
    status = tv_json("status", "--data-dir", data, "--bus", url)
    (stream,) = status["bus"]["streams"]
    assert stream["retention"]["retention_ms"] == 7 * 86_400_000


async def _publish(bus: KafkaBus, path: Path, a_left: asyncio.Event, done: asyncio.Event) -> None:
    """Publish ``path`` in small entries at a steady pace; the last third only after writer
    a left, so writer b has to take over a's partitions while new entries keep coming."""
    publisher = FramePublisher(bus, "ticks")
    batches = [b async for b in ReplaySource([path], chunk_lines=200).batches()]
    cut = 2 * len(batches) // 3
    for i, batch in enumerate(batches):
        if i == cut:
            await a_left.wait()
        for kind, rows in batch.rows.items():
            publisher.add_rows_nowait(kind, rows)
        await publisher.flush()
        # Pacing, not synchronisation: the first two thirds take ~8 s, long enough for
        # writer b to join while entries keep coming.
        await asyncio.sleep(8 / cut if i < cut else 0.001)
    done.set()


async def test_a_writer_joins_and_another_leaves_mid_run_and_contents_are_exact(
    tmp_path: Path, kafka_server: KafkaServer
) -> None:
    rec = write_recording(tmp_path / "in.jsonl", 30_000, duplicate_share=0.0, seed=9)
    # Classic (eager) rebalancing: every partition is revoked and reassigned at each change.
    url = kafka_server.url(session_timeout_ms=3000, partitions=6)
    source_bus, bus_a, bus_b = (KafkaBus.from_url(url) for _ in range(3))
    store = DuckDBStore(tmp_path / "ticks.duckdb")
    config = {"batch_entries": 4, "linger_ms": 0, "block_ms": 50}
    a = Writer(bus_a, store, WriterConfig(consumer="a", **config))  # type: ignore[arg-type]
    b = Writer(bus_b, store, WriterConfig(consumer="b", **config))  # type: ignore[arg-type]
    stop_a, stop_b, a_left, drained = (asyncio.Event() for _ in range(4))
    await source_bus.ensure_group("ticks", "writers")
    publishing = asyncio.create_task(_publish(source_bus, rec.path, a_left, drained))
    try:
        run_a = asyncio.create_task(a.run(stop_a))
        await eventually(lambda: a.stats.entries >= 10, what="writer a under way")
        run_b = asyncio.create_task(b.run(stop_b, until_drained=drained))
        await eventually(lambda: b.stats.entries >= 3, what="writer b joined and writes")
        stop_a.set()  # a leaves mid-run; its partitions move to b
        await asyncio.wait_for(run_a, 30)
        await bus_a.close()
        a_left.set()
        await asyncio.wait_for(publishing, 90)
        await asyncio.wait_for(run_b, 90)
        assert a.stats.inserted > 0 and b.stats.inserted > 0
        info = await bus_b.info("ticks")
        (group,) = info.groups
        assert group.pending == 0 and group.lag == 0
    finally:
        publishing.cancel()
        stop_a.set()
        stop_b.set()
        for bus in (source_bus, bus_a, bus_b):
            await bus.close()
        await store.close()
    keys = _keys(tmp_path / "ticks.duckdb")
    con = duckdb.connect(str(tmp_path / "ticks.duckdb"), read_only=True)
    try:
        (rows,) = con.execute("SELECT count(*) FROM trades").fetchone() or (0,)
    finally:
        con.close()
    assert rows == len(rec.trade_keys)  # none twice
    assert keys["trades"] == rec.trade_keys
    assert keys["quotes"] == rec.quote_keys
    assert keys["aggs"] == rec.agg_keys
