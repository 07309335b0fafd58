"""``tickvault status``: one picture of the data dir, live or offline, as a
:class:`~tickvault.core.snapshot.StatusSnapshot`."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import msgspec

from tickvault.bus.base import Bus
from tickvault.core.errors import BusError
from tickvault.core.redact import redact_value
from tickvault.core.rejects import CONFLICT_REASON
from tickvault.core.snapshot import LiveStatus, StatusSnapshot, live_builtins
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
    live: LiveStatus | None = None,
    bus_timeout_s: float = 2.0,
    store_timeout_s: float = 10.0,
) -> StatusSnapshot:
    """Rows per table, bus backlog and pending per group, dead letters by reason, last write.

    ``store`` may be None when the store is held by another process that did not answer;
    ``live`` carries the running process's own counters (writer, sources, publisher).
    A running service never fails its status for an unreachable bus or store: what is known
    is returned, and the part that did not answer (the bus within ``bus_timeout_s``, the
    store within ``store_timeout_s``) is marked (``reachable: false`` and its ``error``; the
    dead-letter total is None while the bus is unreachable, since it is unknown). Offline
    (``live`` is None), an unreachable bus raises :class:`~tickvault.core.errors.BusError`.
    """
    streams: list[dict[str, object]] = []
    by_reason: dict[str, int] = {}
    bus_error = None

    async def read_bus() -> None:
        retention = getattr(bus, "retention", None)  # buses with a retention window (Kafka)
        for name in await bus.streams():
            stream = msgspec.to_builtins(await bus.info(name))
            if callable(retention):
                stream["retention"] = await retention(name)
            streams.append(stream)
        by_reason.update(await bus.dead_letter_counts())

    try:
        # Bounded only for a running service (its status must answer during an outage);
        # offline, a slow bus (a Kafka connect) is waited for as before.
        await asyncio.wait_for(read_bus(), bus_timeout_s if live is not None else None)
    except (BusError, TimeoutError) as exc:
        # The primary bus is down (incident 002): a running service still reports, and its
        # ``failover`` section says where the traffic goes meanwhile.
        if live is None:
            raise
        bus_error = str(exc) or f"no answer within {bus_timeout_s:g}s"
    except Exception as exc:  # anything else from a half-answering bus: reported
        if live is None:
            raise
        bus_error = str(exc)
    tables: dict[str, int] | None = None
    store_error = None
    wal: dict[str, object] | None = None
    if store is not None:
        try:
            tables = await asyncio.wait_for(store.counts(), store_timeout_s)
            wal_status = getattr(store, "wal_status", None)  # stores with a WAL (QuestDB)
            if wal_status is not None:
                wal = msgspec.to_builtins(await asyncio.wait_for(wal_status(), store_timeout_s))
        except TimeoutError:
            store_error = f"no answer within {store_timeout_s:g}s"
        except Exception as exc:  # reported, never fatal for status
            store_error = str(exc)
    committed = live.writer.last_commit_at if live is not None else None
    last_write = committed or _last_modified(store_url)
    # Bus/store URLs may carry ``user:password@``, live counters may quote URLs: every
    # picture of the status (CLI, control socket, ``GET /status``) is redacted here, on
    # the builtins, before the snapshot is built from them.
    picture = redact_value(
        {
            "data_dir": str(data_dir),
            "generated_at": time.time(),
            "running": live is not None,
            "bus": {
                "url": bus_url,
                "reachable": bus_error is None,
                "streams": streams,
                "error": bus_error,
            },
            "store": {
                "url": store_url,
                "tables": tables,
                "last_write_at": last_write,
                "wal": wal,
                "reachable": store is not None and store_error is None,
                "error": store_error,
            },
            "dead_letters": {
                "total": sum(by_reason.values()) if bus_error is None else None,
                "by_reason": by_reason,
            },
            "conflicts": by_reason.get(CONFLICT_REASON, 0),
            **(live_builtins(live) if live is not None else {}),
        }
    )
    return StatusSnapshot.from_builtins(picture)
