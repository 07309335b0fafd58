"""The guardian's QuestDB check: QuestDB's own view of its tables, never its files.

Tables are found through ``tables()`` and judged through ``wal_tables()`` (incident 000
judged health from a ``txn_seq`` directory that a fresh table does not have yet). A table's
age is the time the guardian first saw its current identity (its directory name, which
changes when the table is re-created), so the policy's grace period covers new tables.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tickvault.guardian.findings import Finding, Observation

if TYPE_CHECKING:
    from tickvault.guardian.checks import Checks


async def questdb_check(checks: Checks) -> list[Observation]:
    """Per QuestDB table (found through ``tables()``): suspended, or the writer trailing
    the sequencer, or a WAL table the server does not list in ``wal_tables()`` yet."""
    store: Any = checks.store
    if store is None or not hasattr(store, "wal_status") or not hasattr(store, "tables"):
        return []
    try:
        tables = await store.tables()
        wal = await store._rest.wal_tables()
    except Exception as exc:
        resource = "questdb"
        return [
            Observation(
                resource,
                (checks._f(resource, "questdb.unreachable", "critical", {"error": str(exc)}),),
            )
        ]
    out: list[Observation] = []
    for name in sorted(tables):
        info = tables[name]
        resource = f"questdb/{name}"
        identity = str(info.directory or name)  # changes when the table is re-created
        created = checks._seen(resource, identity)
        found: list[Finding] = []
        status = wal.get(name)
        if info.wal and status is None:
            found.append(
                checks._f(resource, "questdb.wal_not_initialised", "warning", {"table": name})
            )
        elif status is not None and status.suspended:
            found.append(
                checks._f(
                    resource,
                    "questdb.wal_suspended",
                    "critical",
                    {
                        "table": name,
                        "state": status.state,
                        "unapplied_txns": status.lag_txns,
                        "error_tag": status.error_tag,
                        "error_message": status.error_message,
                        "writer_txn": status.writer_txn,
                        "sequencer_txn": status.sequencer_txn,
                    },
                    "questdb_resume_wal",
                    table=name,
                )
            )
        elif status is not None and status.lag_txns > checks.limits.wal_lag_max:
            found.append(
                checks._f(
                    resource,
                    "questdb.wal_lag",
                    "warning",
                    {
                        "table": name,
                        "lag_txns": status.lag_txns,
                        "max": checks.limits.wal_lag_max,
                    },
                )
            )
        out.append(Observation(resource, tuple(found), created))
    return out
