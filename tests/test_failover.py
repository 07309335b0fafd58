"""Incident 002 acceptance: bus outages during ingest, against real nats-server processes.

Each test runs the real :class:`~tickvault.service.pipeline.Pipeline` (synthetic source at a steady
rate → FramePublisher → FailoverPublisher → buses/spool → one writer per bus → DuckDB),
kills real servers mid-run (SIGKILL), restarts them on the same port and store dir, and
checks the store's exact contents at the end: every generated record once, no duplicate.

Outages last 5 s here instead of the incident's 30 s: nothing in the code depends on the
length (breakers re-try every ``health_check_s``; the spool is on disk).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tickvault.bus.nats.bus import NatsBus
from tickvault.core.codec import column_values, decode_frame
from tickvault.core.config import Settings, load_settings
from tickvault.delivery.breaker import BreakerState
from tickvault.service.pipeline import Pipeline, RunSummary
from tickvault.sources.synthetic import SyntheticSource

from .cli_helpers import spawn, tv
from .polling import eventually, eventually_sync
from .servers import NatsServer

OUTAGE_S = 5.0
RATE = 4000.0


def nats_url(server: NatsServer, **opts: str | int) -> str:
    query = {"retry_s": "0.5", "ack_timeout_ms": "500", "ack_wait_ms": "3000", **opts}
    return server.url + "?" + "&".join(f"{k}={v}" for k, v in query.items())


def outage_settings(tmp_path: Path, primary: str, fallback: list[str]) -> Settings:
    settings = load_settings(None, data_dir=tmp_path / "data", bus_url=primary, env={})
    settings.bus.fallback = fallback
    settings.bus.health_check_s = 0.5
    settings.breaker.open_base_s = 0.2
    settings.breaker.open_max_s = 1.0
    settings.publisher.frame_records = 1000
    settings.writer.linger_ms = 20
    settings.upkeep.enabled = False
    return settings


async def hold(seconds: float, *conditions: Callable[[], bool], what: str = "") -> None:
    """Keep an outage going for ``seconds`` and until every condition held (deadline 60 s)."""
    started = time.monotonic()
    await eventually(
        lambda: time.monotonic() - started >= seconds and all(c() for c in conditions),
        timeout=seconds + 60,
        what=what,
    )


async def finish(pipeline: Pipeline, source: SyntheticSource, run: asyncio.Task[RunSummary]):  # type: ignore[no-untyped-def]
    source.stop()
    pipeline.stop_sources.set()
    return await asyncio.wait_for(run, 120)


async def assert_exact_contents(pipeline: Pipeline, source: SyntheticSource) -> None:
    """Every generated record stored exactly once (ids are consecutive per symbol)."""
    rows = (
        await pipeline.store.query(
            "SELECT 'trade', symbol, count(*), count(DISTINCT trade_id), max(trade_id) -"
            " min(trade_id) + 1 FROM trades GROUP BY symbol UNION ALL SELECT 'quote', symbol,"
            " count(*), count(DISTINCT update_id), max(update_id) - min(update_id) + 1 FROM"
            " quotes GROUP BY symbol"
        )
    ).rows
    assert sum(r[2] for r in rows) == source.generated
    for kind, symbol, n, distinct, span in rows:
        assert n == distinct == span, f"{kind} {symbol}: {n} rows, {distinct} keys, span {span}"


async def test_primary_down_frames_go_to_the_secondary_and_arrive_after_recovery(
    tmp_path: Path,
) -> None:
    """Acceptance 1: primary bus down during ingest; 0 lost, 0 duplicated rows."""
    primary = NatsServer(tmp_path / "primary").start()
    settings = outage_settings(
        tmp_path, nats_url(primary), [f"sqlite:///{tmp_path / 'fallback.sqlite3'}"]
    )
    source = SyntheticSource(rate=RATE, symbols=["BTCUSDT", "ETHUSDT"], seed=3)
    try:
        async with Pipeline(settings, [source], drain_timeout=60) as pipeline:
            run = asyncio.create_task(pipeline.run())
            by_bus = pipeline.failover.stats.frames_by_bus
            await eventually(lambda: pipeline.writer.stats.inserted > 5000, what="first rows")
            primary.kill()
            on_secondary = by_bus[1]
            await hold(OUTAGE_S, lambda: by_bus[1] > on_secondary + 5, what="secondary used")
            assert pipeline.failover.breakers[0].state is not BreakerState.CLOSED
            primary.start()  # same port, same store dir
            on_primary = by_bus[0]
            await eventually(lambda: by_bus[0] > on_primary + 5, what="primary back in use")
            summary = await finish(pipeline, source, run)
            assert summary.drained and summary.backlog == 0 and summary.spool_backlog == 0
            assert pipeline.writers[1].stats.inserted > 0  # the secondary's writer stored some
            assert pipeline.failover.stats.failed_appends >= 1
            await assert_exact_contents(pipeline, source)
            moves = [t["to"] for t in pipeline.failover.breakers[0].transitions]
            assert moves[:1] == ["open"] and moves[-1] == "closed"
    finally:
        primary.stop()


async def test_every_bus_down_spool_holds_everything_and_drains_in_order(tmp_path: Path) -> None:
    """Acceptance 2: primary and secondary down; the spool holds every frame; after
    recovery it drains in order to the first healthy bus; 0 lost."""
    primary = NatsServer(tmp_path / "primary").start()
    secondary = NatsServer(tmp_path / "secondary").start()
    settings = outage_settings(tmp_path, nats_url(primary), [nats_url(secondary)])
    audit = NatsBus.from_url(nats_url(primary))
    await audit.ensure_group("ticks", "audit")  # a second group sees every frame in order
    source = SyntheticSource(rate=RATE, symbols=["BTCUSDT", "ETHUSDT"], seed=4)
    try:
        async with Pipeline(settings, [source], drain_timeout=60) as pipeline:
            run = asyncio.create_task(pipeline.run())
            failover = pipeline.failover
            assert pipeline.spool is not None
            spool = pipeline.spool
            await eventually(lambda: pipeline.writer.stats.inserted > 5000, what="first rows")
            primary.kill()
            secondary.kill()
            await hold(OUTAGE_S, lambda: spool.stats.backlog > 10, what="frames spooled")
            assert spool.stats.appended > 10 and list(spool.directory.glob("seg-*"))
            primary.start()
            await eventually(lambda: not spool.has_backlog, timeout=60, what="spool drained")
            secondary.start()
            summary = await finish(pipeline, source, run)
            assert summary.drained and summary.spool_backlog == 0
            assert failover.stats.frames_drained == failover.stats.frames_spooled > 10
            assert spool.stats.torn == spool.stats.corrupt == spool.stats.dropped_frames == 0
            assert list(spool.directory.glob("seg-*")) == []
            await assert_exact_contents(pipeline, source)
        await assert_frames_in_order(audit)
    finally:
        await audit.close()
        primary.stop()
        secondary.stop()


async def assert_frames_in_order(bus: NatsBus) -> None:
    """Trade frames on the primary come in generation order (a frame whose append was
    re-sent after an unacknowledged publish may repeat, never step back)."""
    seen: dict[str, int] = {}
    frames = 0
    while entries := await bus.read("ticks", "audit", "auditor", 500, 200):
        for entry in entries:
            frame = decode_frame(entry.payload)
            if frame.kind != "trade":
                continue
            frames += 1
            ids: dict[str, list[int]] = {}
            for sym, tid in zip(
                column_values(frame.cols["symbol"]),
                column_values(frame.cols["trade_id"]),
                strict=True,
            ):
                ids.setdefault(sym, []).append(tid)
            for sym, tids in ids.items():
                last = seen.get(sym, -1)
                assert min(tids) > last or max(tids) <= last, f"{sym}: frame went back"
                seen[sym] = max(last, max(tids))
    assert frames > 20


def test_status_shows_breakers_failover_and_spool_of_a_running_service(tmp_path: Path) -> None:
    """``tickvault run --fallback URL``: ``status`` shows every breaker's state and the spool;
    the fallback's writer runs too."""
    config = tmp_path / "tv.toml"
    config.write_text(
        '[bus]\nhealth_check_s = 0.5\n[[sources]]\nkind = "synthetic"\nrate = 2000\n'
        'symbols = ["BTCUSDT"]\n'
    )
    data, fallback = tmp_path / "data", f"sqlite:///{tmp_path / 'fallback.sqlite3'}"
    proc = spawn("run", "--config", config, "--data-dir", data, "--fallback", fallback)
    try:

        def status() -> dict[str, Any]:
            r = tv("status", "--data-dir", data, "--json", check=False)
            return dict(json.loads(r.stdout)) if r.returncode == 0 else {}

        eventually_sync(lambda: status().get("writer", {}).get("inserted", 0) > 100)
        live = status()
        names = [b["name"] for b in live["breakers"]]
        assert names == ["store", f"bus:sqlite:///{data / 'bus.sqlite3'}", f"bus:{fallback}"]
        assert {b["state"] for b in live["breakers"]} == {"closed"}
        assert [b["name"] for b in live["failover"]["buses"]] == [names[1][4:], fallback]
        assert live["failover"]["spool"]["dir"] == str(data / "spool")
        assert live["fallback_writers"][0]["bus"] == fallback
        text = tv("status", "--data-dir", data).stdout
        assert "circuit breakers" in text and "store" in text and "closed" in text
        assert f"spool {data / 'spool'}: 0 waiting" in text
        assert f"traffic goes to sqlite:///{data / 'bus.sqlite3'}" in text
        assert live["failover"]["path"] == live["failover"]["last_path"] == names[1][4:]
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err


async def test_a_spool_left_by_a_previous_run_is_drained_at_start(tmp_path: Path) -> None:
    """Frames spooled before a crash reach the bus after restart, before any new frame."""
    from tickvault.bus.base import NewDeadLetter
    from tickvault.bus.sqlite.bus import SqliteBus
    from tickvault.delivery.failover import FailoverPublisher
    from tickvault.delivery.spool import Spool

    old = Spool(tmp_path / "spool")
    await old.append("ticks", [b"old-1", b"old-2"])
    letter = NewDeadLetter("raw", "malformed JSON", b"{", "in.jsonl:7")
    await old.append_letters("ticks", None, [letter])  # no bus took it either
    await old.append("ticks", [b"old-3"])
    await old.close()
    bus = SqliteBus(tmp_path / "bus.sqlite3")
    spool = Spool(tmp_path / "spool")
    failover = FailoverPublisher([bus], spool, check_every_s=0.2)
    stop = asyncio.Event()
    task = asyncio.create_task(failover.run(stop))
    await eventually(lambda: spool.opened and not spool.has_backlog, what="old spool drained")
    await failover.append("ticks", [b"new"])
    stop.set()
    await task
    await bus.ensure_group("ticks", "g")
    got = [e.payload for e in await bus.read("ticks", "g", "c", 10, 100)]
    assert got == [b"old-1", b"old-2", b"old-3", b"new"]
    (recorded,) = await bus.dead_letters("ticks")
    assert (recorded.reason, recorded.payload) == ("malformed JSON", b"{")
    await spool.close()
    await bus.close()
