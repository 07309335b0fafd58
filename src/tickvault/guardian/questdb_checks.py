"""The guardian's QuestDB check: QuestDB's own view of its tables, never its files.

Tables are found through ``tables()`` and judged through ``wal_tables()`` (incident 000
judged health from a ``txn_seq`` directory that a fresh table does not have yet). A table's
age is the time the guardian first saw its current identity (its directory name, which
changes when the table is re-created), so the policy's grace period covers new tables.

A suspended table whose error says its sequencer log is broken (QuestDB 9.3 after a damaged
``txn_seq/_txnlog``: "broken table transaction record in sequencer log, walId cannot be 0")
is ``questdb.wal_damaged``: ``RESUME WAL`` cannot help there, so the action is a backup of
the table's directory (:mod:`tickvault.guardian.questdb_actions`) and then a human decides.
When the store knows the server's root (``root=`` in its URL), the evidence carries the
server's own error lines about the table from ``<root>/log`` (read, never written).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

from tickvault.guardian.findings import Finding, Observation
from tickvault.stores.base import Store

if TYPE_CHECKING:
    from tickvault.stores.questdb.store import QuestDBStore

# What QuestDB says when a table's sequencer files (txn_seq/) are damaged or missing.
DAMAGE = re.compile(
    r"sequencer log|_txnlog|txn_seq|_wal_index|broken table transaction|corrupt", re.IGNORECASE
)
_ERROR_LINE = re.compile(r"^\S+\s+[CE]\s")
LOG_TAIL_BYTES = 256 << 10


def server_log_lines(root: Path | None, needles: list[str], limit: int = 10) -> list[str]:
    """The newest error (E) and critical (C) lines of the server's log naming one of
    ``needles``; empty when there is no log to read."""
    if root is None:
        return []
    try:
        logs = [p for p in (Path(root) / "log").iterdir() if p.is_file()]
        newest = max(logs, key=lambda p: p.stat().st_mtime)
        with newest.open("rb") as f:
            f.seek(max(0, newest.stat().st_size - LOG_TAIL_BYTES))
            text = f.read().decode(errors="replace")
    except (OSError, ValueError):
        return []
    hits = [
        line.strip()[:500]
        for line in text.splitlines()
        if _ERROR_LINE.match(line) and any(n in line for n in needles)
    ]
    return hits[-limit:]


class _Limits(Protocol):
    @property
    def wal_lag_max(self) -> int: ...


class CheckHost(Protocol):
    """What :func:`questdb_check` uses of :class:`tickvault.guardian.checks.Checks`."""

    @property
    def store(self) -> Store | None: ...

    @property
    def limits(self) -> _Limits: ...

    def _f(
        self,
        resource: str,
        code: str,
        severity: str,
        evidence: dict[str, Any],
        action: str | None = None,
        **params: Any,
    ) -> Finding: ...

    def _seen(self, resource: str, identity: str) -> float: ...


async def questdb_check(checks: CheckHost) -> list[Observation]:
    """Per QuestDB table (found through ``tables()``): suspended, or the writer trailing
    the sequencer, or a WAL table the server does not list in ``wal_tables()`` yet."""
    given = checks.store
    if given is None or not hasattr(given, "wal_status") or not hasattr(given, "tables"):
        return []
    store = cast("QuestDBStore", given)  # a QuestDB store, known by its methods
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
        elif status is not None and status.suspended and DAMAGE.search(status.error_message):
            found.append(
                checks._f(
                    resource,
                    "questdb.wal_damaged",
                    "critical",
                    {
                        "table": name,
                        "state": status.state,
                        "wal_tables_row": {
                            "suspended": status.suspended,
                            "writerTxn": status.writer_txn,
                            "sequencerTxn": status.sequencer_txn,
                            "errorTag": status.error_tag,
                            "errorMessage": status.error_message,
                        },
                        "directory": info.directory,
                        "server_log": server_log_lines(
                            getattr(store, "server_root", None),
                            [f"table={info.directory}", f"{info.directory}]"],
                        ),
                    },
                    "questdb_backup_table",
                    table=name,
                )
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
