"""ClickHouse system checks: what the *server* says about the store's user, not a session's.

The user-query door (:meth:`ClickHouseStore.query`) runs every statement in a sandbox that
sets ``readonly`` on its own requests, so ``system.settings`` read through it shows the
sandbox's value, never the server's (a healthy server then looked read-only on every start).
These checks use the store's own admin HTTP connection, which sends no sandbox settings:
``readonly`` there is what the server's profile gives the store's user, i.e. whether the
writer can write.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tickvault.guardian.findings import Finding

MakeFinding = Callable[..., Finding]

MAX_PARTS_PER_PARTITION = 300

_PARTS_SQL = (
    "SELECT max(c) AS m FROM (SELECT count() AS c FROM system.parts WHERE active"
    " GROUP BY database, table, partition)"
)
_READONLY_SQL = "SELECT value FROM system.settings WHERE name = 'readonly'"


async def _admin_rows(store: Any, sql: str) -> list[list[str]]:
    """Rows of ``sql`` over the store's admin connection, with no settings at all in the
    request (a user the server made ``readonly=1`` may not override any, not even an output
    format's), read as tab-separated text."""
    raw: bytes = await store._http.post(f"{sql} FORMAT TabSeparated")
    return [line.split("\t") for line in raw.decode().splitlines() if line]


async def clickhouse_findings(store: Any, resource: str, finding: MakeFinding) -> list[Finding]:
    """Too many active parts in a partition; the store's user read-only on the server."""
    if not hasattr(store, "_http"):
        return []
    try:
        parts = await _admin_rows(store, _PARTS_SQL)
        readonly = await _admin_rows(store, _READONLY_SQL)
    except Exception as exc:
        return [finding(resource, "clickhouse.system_unreadable", "warning", {"error": str(exc)})]
    found: list[Finding] = []
    most = int(parts[0][0] or 0) if parts and parts[0] and parts[0][0].isdigit() else 0
    if most > MAX_PARTS_PER_PARTITION:
        found.append(
            finding(
                resource,
                "clickhouse.too_many_parts",
                "warning",
                {"max_active_parts_per_partition": most, "max": MAX_PARTS_PER_PARTITION},
            )
        )
    value = str(readonly[0][0]) if readonly and readonly[0] else "0"
    if value not in ("0", "") and not getattr(store, "read_only", False):
        found.append(
            finding(
                resource,
                "clickhouse.readonly",
                "critical",
                {"readonly": value, "source": "the server's profile of the store's user"},
            )
        )
    return found
