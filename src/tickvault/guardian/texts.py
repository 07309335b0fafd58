"""What each finding code means to a person, and where its runbook is.

Runbook links are absolute: ``[guardian] runbook_base_url`` (e.g. the docs site's
``.../guardian.md``) followed by the code's anchor in ``docs/guardian.md``. Without a base
the link is the docs file's path in the source tree.
"""

from __future__ import annotations

DEFAULT_RUNBOOK_BASE = "docs/guardian.md"

WHAT: dict[str, str] = {
    "store.unavailable": "the store does not answer; the writer holds its batch and retries,"
    " entries wait on the bus (nothing is lost)",
    "store.not_writable": "the store answers but refuses writes; entries wait on the bus",
    "clickhouse.readonly": "the server gives the store's user readonly; writes will fail",
    "clickhouse.too_many_parts": "a partition has too many active parts; inserts may be refused",
    "clickhouse.system_unreadable": "the server's system tables cannot be read",
    "bus.unreachable": "the bus does not answer; sources spill to the disk spool, the writer waits",
    "bus.backlog": "more entries wait on the bus than the configured maximum",
    "bus.pending_stale": "entries are stuck with a consumer that is not alive",
    "bus.dead_letters_growing": "new entries were dead-lettered (bad input, kept with a reason)",
    "breaker.open": "a circuit breaker is open: calls to that part are refused for a while",
    "writer.stale": "the writer stored nothing new for these tables and symbols while entries wait",
    "source.disconnected": "a source lost its connection",
    "source.stale": "a source delivered nothing for too long",
    "source.gaps_open": "a source has sequence gaps not backfilled yet",
    "spool.large": "the disk spool is larger than the configured maximum",
    "quality.bad_prices": "too many zero or non-finite prices among the newest rows",
    "questdb.wal_suspended": "a QuestDB WAL table is suspended: writes are not applied",
    "questdb.wal_damaged": "a QuestDB table's sequencer log is damaged: RESUME WAL cannot help",
    "questdb.wal_not_initialised": "a WAL table is not listed in wal_tables() yet",
    "questdb.wal_lag": "QuestDB applies committed transactions too slowly",
    "questdb.unreachable": "QuestDB does not answer",
    "guardian.check_failed": "a guardian check failed to run",
}

ANCHORS: dict[str, str] = {
    "questdb.wal_suspended": "runbook-incident-001-a-suspended-or-damaged-wal",
    "questdb.wal_damaged": "runbook-incident-001-a-suspended-or-damaged-wal",
    "questdb.wal_not_initialised": "runbook-incident-000-a-recovery-loop",
    "bus.pending_stale": "runbook-stuck-pending-entries",
    "store.unavailable": "runbook-store-unavailable",
    "store.not_writable": "runbook-store-unavailable",
    "clickhouse.readonly": "runbook-store-unavailable",
    "bus.unreachable": "runbook-bus-unreachable",
}


HOWTO: dict[str, str] = {
    "questdb.wal_suspended": (
        "read errorTag and errorMessage in `SELECT * FROM wal_tables()`, fix the cause (disk"
        " space, a bad row), then `ALTER TABLE <t> RESUME WAL` (or `RESUME WAL FROM TXN <n>` to"
        " skip a bad transaction). If the WAL is damaged: restore the table from a backup or"
        " re-create it and replay it with `tickvault rebuild --since <time>`. Never delete"
        " txn_seq, _txnlog or any WAL file."
    ),
    "questdb.wal_damaged": (
        "the sequencer log is damaged; the table directory was copied to backup_dir. Never"
        " delete txn_seq, _txnlog or any WAL file, never REBASE WAL by reflex: rename the table"
        " away and `tickvault rebuild --since <time>` into a fresh one."
    ),
    "questdb.wal_not_initialised": (
        "a fresh WAL table appears in wal_tables() after its first commit; if it does not,"
        " check that writes reach it."
    ),
}


def what(code: str) -> str:
    return WHAT.get(code, code)


def runbook_url(code: str, base: str | None = None) -> str:
    """The absolute runbook link of ``code`` (see the module docstring), followed by the
    runbook's short form where the code has one."""
    root = (base or DEFAULT_RUNBOOK_BASE).rstrip("#")
    link = f"{root}#{ANCHORS.get(code, 'runbooks')}"
    return f"{link}: {HOWTO[code]}" if code in HOWTO else link
