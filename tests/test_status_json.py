"""The JSON of ``tickvault status --json``, ``GET /status`` and the control socket keeps its
shape: the same keys in the same order, the same nulls, live and offline.

A real pipeline (SQLite bus, DuckDB store, synthetic source) answers a real ``status --json``
child process through its control socket, and the same process serves ``/status``.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx

from tickvault.core.config import HttpSettings, Settings
from tickvault.service import control
from tickvault.service.pipeline import Pipeline
from tickvault.sources.synthetic import SyntheticSource

from .cli_helpers import tv_json
from .polling import eventually

Shape = Any
TABLES = ("trades", "agg_trades", "quotes", "bars", "depth_updates", "gaps", "book_snapshots")

# Leaves whose type depends on timing (a value or null): only their presence is pinned.
_EITHER = {"last_error", "last_message_age_s", "last_path", "oldest_pending_age_ms", "retry_in_s"}


def shape(value: Any, key: str = "") -> Shape:
    """Keys in order (recursively), the first element of lists, the type of leaves."""
    if key == "events":  # process-wide: other tests' events may be in it (checked apart)
        return "list" if isinstance(value, list) else "missing"
    if isinstance(value, dict):
        return [[k, shape(v, k)] for k, v in value.items()]
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    if key in _EITHER:
        return "any"
    return "null" if value is None else type(value).__name__


LATENCY = [["count", "int"], ["mean_ms", "float"], ["max_ms", "float"]]
LATENCY += [["p50_ms", "float"], ["p99_ms", "float"]]
GROUP = [["name", "str"], ["consumers", "int"], ["pending", "int"], ["lag", "int"]]
GROUP += [["oldest_pending_age_ms", "any"], ["last_delivered_id", "str"]]
STREAM = [["stream", "str"], ["length", "int"], ["first_id", "str"], ["last_id", "str"]]
STREAM += [["groups", [GROUP]]]
OFFLINE = [
    ["data_dir", "str"],
    ["generated_at", "float"],
    ["running", "bool"],
    ["bus", [["url", "str"], ["reachable", "bool"], ["streams", [STREAM]], ["error", "null"]]],
    [
        "store",
        [
            ["url", "str"],
            ["tables", [[t, "int"] for t in TABLES]],
            ["last_write_at", "float"],
            ["wal", "null"],
            ["reachable", "bool"],
            ["error", "null"],
        ],
    ],
    ["dead_letters", [["total", "int"], ["by_reason", []]]],
    ["conflicts", "int"],
]
BREAKER = [
    ["name", "str"],
    ["state", "str"],
    ["since", "float"],
    ["consecutive_failures", "int"],
    ["times_opened", "int"],
    ["refused", "int"],
    ["retry_in_s", "any"],
    ["open_timeout_s", "float"],
    ["last_error", "any"],
    ["transitions", []],
]
SOURCE = [
    ["name", "str"],
    ["kind", "str"],
    ["connected", "bool"],
    ["last_message_age_s", "any"],
    ["messages", "int"],
    ["reconnects", "int"],
    ["gaps_open", "int"],
    ["gaps_backfilled", "int"],
    ["detail", "str"],
    ["gaps_unrecoverable", "int"],
]
SPOOL = [[k, "int"] for k in ("appended", "appended_bytes", "drained", "backlog", "torn")]
SPOOL += [[k, "int"] for k in ("corrupt", "skipped_bytes", "dropped_frames", "dropped_records")]
SPOOL += [["full_events", "int"], ["blocked_s", "float"], ["dir", "str"], ["size_bytes", "int"]]
SPOOL += [["quota_bytes", "int"], ["full_policy", "str"], ["segments", "int"]]
EVENT = ["seq", "at", "source", "kind", "level", "message", "data"]
LIVE = [
    ["pid", "int"],
    ["uptime_s", "float"],
    [
        "writer",
        [
            ["consumer", "str"],
            ["records", "int"],
            ["inserted", "int"],
            ["duplicates", "int"],
            ["conflicts", "int"],
            ["batches", "int"],
            ["retrying", "bool"],
            ["store_errors", "int"],
            ["last_error", "any"],
            ["last_commit_at", "float"],
            ["dead_letters", []],
            ["tick_to_stored", LATENCY],
        ],
    ],
    [
        "publisher",
        [["records", "int"], ["frames", "int"], ["buffered", "int"], ["rejected", "int"]],
    ],
    ["sources", [SOURCE]],
    ["breakers", [BREAKER]],
    [
        "failover",
        [
            ["path", "str"],
            ["last_path", "any"],
            ["buses", [[["name", "str"], ["frames", "int"], ["breaker", BREAKER]]]],
            ["frames_spooled", "int"],
            ["frames_drained", "int"],
            ["letters_spooled", "int"],
            ["failed_appends", "int"],
            ["spool", SPOOL],
        ],
    ],
    ["fallback_writers", []],
    ["events", "list"],
    ["http", [["url", "str"]]],
]


async def test_status_json_keeps_its_keys_live_and_offline(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    settings.http = HttpSettings(listen="127.0.0.1:0")
    source = SyntheticSource(rate=2000, symbols=["BTCUSDT", "ETHUSDT"], seed=3)
    async with Pipeline(settings, [source], serve_http=True) as p:
        assert p.http is not None
        task = asyncio.create_task(p.run())
        try:
            await eventually(lambda: p.writer.stats.inserted > 200, what="rows stored")
            cli = await asyncio.to_thread(tv_json, "status", "--data-dir", settings.data_dir)
            socket = await asyncio.to_thread(control.request, settings.data_dir, {"op": "status"})
            async with httpx.AsyncClient(base_url=p.http.url, timeout=30) as client:
                served = (await client.get("/status")).json()
        finally:
            p.stop_sources.set()
            source.stop()
            await task
    for picture in (cli, socket, served):
        assert shape(picture) == [*OFFLINE[:3], *OFFLINE[3:], *LIVE]
        assert picture["running"] is True
        assert picture["data_dir"] == str(settings.data_dir)
        for event in picture["events"]:
            assert list(event) == EVENT
    offline = await asyncio.to_thread(tv_json, "status", "--data-dir", settings.data_dir)
    assert shape(offline) == OFFLINE
    assert offline["running"] is False
    assert json.loads(json.dumps(offline)) == offline
