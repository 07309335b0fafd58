"""The DuckDB query sandbox: where user SQL (``tickvault query``, ``GET /query``) runs.

What holds it, by DuckDB's own switches rather than by reading the SQL:

* **No writes.** Every user statement runs inside ``BEGIN TRANSACTION READ ONLY`` on the
  store's query cursor, and the transaction is always rolled back. DuckDB itself refuses any
  change to the database inside it ("transaction is launched in read-only mode"), whatever
  the statement looks like (``WITH d AS (DELETE ... RETURNING *) SELECT ...`` parses as a
  ``SELECT``). A second, read-only DuckDB instance is not an option: a process that holds a
  writable connection to the file cannot also open it read-only ("different configuration").
* **No host, network or extensions.** Before the first user statement the database instance
  gets ``enable_external_access = false`` (no file readers, no path-as-table, no ``glob``,
  no URLs, no ``ATTACH``, no ``COPY``/``EXPORT``), autoinstall/autoload of extensions off,
  community and unsigned extensions off, a ``memory_limit``, and then
  ``lock_configuration = true``, so no statement can change any of them back. These are
  settings of the whole instance: the writer's own Arrow inserts are unaffected (they
  never touch files other than the database).
* **Bounded.** ``memory_limit`` caps the instance (a memory bomb gets DuckDB's out-of-memory
  error, reported as :class:`~tickvault.core.errors.QueryLimitExceeded`), and a timer calls
  ``interrupt()`` on the query cursor at ``timeout_s``, so a runaway query stops
  (:class:`~tickvault.core.errors.QueryTimeout`) and frees the query thread for the next one.
* **First line:** only one statement of DuckDB's type ``SELECT`` is executed at all (parsed
  by DuckDB, so comments and strings cannot hide a second statement).

Errors are one line and never carry the query's source text beyond DuckDB's first line.
"""

from __future__ import annotations

import contextlib
import threading

import duckdb

from tickvault.core.errors import (
    QueryLimitExceeded,
    QueryRejected,
    QueryTimeout,
    StoreError,
    StoreUnavailable,
)
from tickvault.stores.base import QueryResult

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MEMORY_LIMIT = "1GB"

_LOCKED_SETTINGS = (
    ("enable_external_access", "false"),
    ("autoinstall_known_extensions", "false"),
    ("autoload_known_extensions", "false"),
    ("allow_community_extensions", "false"),
    ("allow_unsigned_extensions", "false"),
)


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Raise QueryRejected unless ``sql`` is exactly one statement of type SELECT."""
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryRejected(f"cannot parse query: {_first_line(exc)}") from None
    if len(statements) != 1:
        raise QueryRejected(f"expected exactly one statement, got {len(statements)}")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise QueryRejected(f"only read-only SELECT queries are allowed (got {kind.name})")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _settings(cur: duckdb.DuckDBPyConnection) -> dict[str, str]:
    names = [name for name, _ in _LOCKED_SETTINGS] + ["lock_configuration"]
    rows = cur.execute(
        "SELECT name, value FROM duckdb_settings() WHERE list_contains(?, name)", [names]
    ).fetchall()
    return {str(name): str(value).lower() for name, value in rows}


def lock_down(cur: duckdb.DuckDBPyConnection, memory_limit: str) -> None:
    """Apply the sandbox settings to ``cur``'s database instance, then lock them.

    Idempotent: an instance that is already locked is checked instead (it must carry the
    sandbox settings; otherwise :class:`StoreUnavailable`, and no user SQL runs).
    """
    try:
        current = _settings(cur)
        if current.get("lock_configuration") == "true":
            wrong = [n for n, v in _LOCKED_SETTINGS if current.get(n, v) != v]
            if wrong:
                raise StoreUnavailable(
                    f"DuckDB configuration is locked without the query sandbox ({wrong})"
                )
            return
        statements = [f"SET {n} = {v}" for n, v in _LOCKED_SETTINGS if n in current]
        statements.append(f"SET memory_limit = '{_quote(memory_limit)}'")
        statements.append("SET lock_configuration = true")  # last: nothing changes after it
        cur.execute("; ".join(statements))
    except duckdb.Error as exc:
        raise StoreUnavailable(f"cannot set up the DuckDB query sandbox: {exc}") from None


def _quote(text: str) -> str:
    return text.replace("'", "''")


class QuerySandbox:
    """Runs one user statement at a time on a locked-down cursor (see the module doc)."""

    def __init__(
        self, *, timeout_s: float = DEFAULT_TIMEOUT_S, memory_limit: str = DEFAULT_MEMORY_LIMIT
    ) -> None:
        self.timeout_s = timeout_s
        self.memory_limit = memory_limit

    def prepare(self, cur: duckdb.DuckDBPyConnection) -> None:
        lock_down(cur, self.memory_limit)

    def run(self, cur: duckdb.DuckDBPyConnection, sql: str, limit: int) -> QueryResult:
        """Execute ``sql`` (read-only, rolled back, interrupted at the time limit)."""
        check_read_only(cur, sql)
        timer = threading.Timer(self.timeout_s, cur.interrupt)
        timer.daemon = True
        try:
            cur.execute("BEGIN TRANSACTION READ ONLY")
        except duckdb.Error as exc:
            raise StoreUnavailable(f"DuckDB query: {_first_line(exc)}") from None
        timer.start()
        try:
            rel = cur.execute(sql)
            columns = [d[0] for d in rel.description or []]
            rows = rel.fetchmany(limit + 1)
        except duckdb.Error as exc:
            raise self._translate(exc) from None
        finally:
            timer.cancel()
            # (a failed statement may already have ended the transaction)
            with contextlib.suppress(duckdb.Error):
                cur.execute("ROLLBACK")
        return QueryResult(columns, rows[:limit], truncated=len(rows) > limit)

    def _translate(self, exc: duckdb.Error) -> StoreError:
        line = _first_line(exc)
        if isinstance(exc, duckdb.InterruptException):
            return QueryTimeout(
                f"query stopped after {self.timeout_s:g} s (the store's query time limit)"
            )
        if isinstance(exc, duckdb.OutOfMemoryException):
            return QueryLimitExceeded(
                f"query stopped: it needs more memory than the query limit"
                f" ({self.memory_limit}): {line}"
            )
        if "read-only mode" in line:  # a read-only transaction, or a read-only file
            return QueryRejected("query refused: queries are read-only and this one would write")
        if isinstance(exc, duckdb.PermissionException):
            return QueryRejected(
                "query refused: external access is disabled (no files, URLs or extensions"
                f" from queries): {line}"
            )
        if "configuration has been locked" in line:
            return QueryRejected("query refused: settings cannot be changed from queries")
        return StoreError(f"query failed: {line}")
