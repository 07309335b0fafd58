"""``tickvault status``: one JSON-able picture of the data dir, live or offline."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgspec

from tickvault.bus.base import Bus
from tickvault.conflicts import CONFLICT_REASON
from tickvault.errors import BusError
from tickvault.redact import redact_value
from tickvault.stores.base import Store


def _last_modified(store_url: str) -> float | None:
    if not store_url.startswith("duckdb:///"):
        return None
    path = Path(store_url[len("duckdb:///") :].partition("?")[0])
    stamps = [p.stat().st_mtime for p in (path, path.with_name(path.name + ".wal")) if p.exists()]
    return max(stamps) if stamps else None


async def collect_status(
    bus: Bus,
    store: Store | None,
    *,
    bus_url: str,
    store_url: str,
    data_dir: Path,
    live: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Rows per table, bus backlog and pending per group, dead letters by reason, last write.

    ``store`` may be None when the store is held by another process that did not answer;
    ``live`` carries the running process's own counters (writer, sources, publisher).
    """
    streams = []
    retention = getattr(bus, "retention", None)  # buses with a retention window (Kafka)
    bus_error = None
    by_reason: dict[str, int] = {}
    try:
        for name in await bus.streams():
            stream = msgspec.to_builtins(await bus.info(name))
            if callable(retention):
                stream["retention"] = await retention(name)
            streams.append(stream)
        by_reason = await bus.dead_letter_counts()
    except BusError as exc:
        # The primary bus is down (incident 002): a running service still reports, and its
        # ``failover`` section says where the traffic goes meanwhile.
        if live is None:
            raise
        bus_error = str(exc)
    tables: dict[str, int] | None = None
    store_error = None
    wal: dict[str, Any] | None = None
    if store is not None:
        try:
            tables = await store.counts()
            wal_status = getattr(store, "wal_status", None)  # stores with a WAL (QuestDB)
            if wal_status is not None:
                wal = msgspec.to_builtins(await wal_status())
        except Exception as exc:  # reported, never fatal for status
            store_error = str(exc)
    last_write = (live or {}).get("writer", {}).get("last_commit_at") or _last_modified(store_url)
    # Bus/store URLs may carry ``user:password@``, live counters may quote URLs: every
    # picture of the status (CLI, control socket, ``GET /status``) is redacted here.
    picture: dict[str, Any] = redact_value(
        {
            "data_dir": str(data_dir),
            "generated_at": time.time(),
            "running": live is not None,
            "bus": {"url": bus_url, "streams": streams, "error": bus_error},
            "store": {
                "url": store_url,
                "tables": tables,
                "last_write_at": last_write,
                "wal": wal,
                "error": store_error,
            },
            "dead_letters": {"total": sum(by_reason.values()), "by_reason": by_reason},
            "conflicts": by_reason.get(CONFLICT_REASON, 0),
            **(live or {}),
        }
    )
    return picture
