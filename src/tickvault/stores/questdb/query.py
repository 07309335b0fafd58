"""User SQL on QuestDB: QuestDB's own read-only PG-wire user, and no host files.

QuestDB's HTTP ``/exec`` has one read-only switch for the whole HTTP server
(``http.security.readonly``), which would also stop the DDL the store needs, so user SQL
does not go there. It goes over PG wire as QuestDB's **read-only user**
(``pg.readonly.user.enabled=true``, ``pg.readonly.user``, ``pg.readonly.password`` in the
server's ``server.conf``): the server itself refuses every write, DDL, ``COPY`` and
``ALTER … SUSPEND/RESUME`` from that user ("Write permission denied").

A read-only user can still read host files: on QuestDB 9.3 ``files('/etc')`` and
``glob('/etc/*')`` list any directory the server can see, and ``read_parquet``/
``parquet_scan`` read any parquet file under ``cairo.sql.copy.root`` (any path at all when
that setting is empty). So before a statement
runs, :class:`QuestDBReader` asks QuestDB for its plan (``EXPLAIN``) and refuses one with a
file-system node (``File Scan``, ``glob``, a parquet file scan, ``import_files()``,
``export_files()``). The plan is the engine's own parse, so spelling, nesting, CTEs and joins
cannot hide a file function the way they can hide it from a keyword scan.

The driver is ``asyncpg`` (the PG driver QuestDB documents for Python). Rows come back typed
by the driver (``timestamp`` as naive UTC datetimes, like the other stores); the statement is
read through a cursor, so at most ``limit + 1`` rows cross the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import re
from typing import Any

from tickvault.core.errors import (
    BackendNotAvailable,
    QueryLimitExceeded,
    QueryRejected,
    QueryTimeout,
    StoreError,
    StoreUnavailable,
)

# Plan nodes through which QuestDB 9.x reads the host's file system; a node's name starts
# its line (``File Scan: /etc``, ``glob/etc/*``, ``parquet page frame scan``), so a string
# literal or a column name further along the line does not count.
_FILE_NODES = re.compile(
    r"^\s*(file scan\b|glob\b|parquet\b|import_files\(|export_files\()", re.IGNORECASE
)
# QuestDB's answers when a query breaches a per-query memory limit (cairo.sql.map.max.resizes,
# cairo.sql.*.max.pages, the global RSS limit) or its own query.timeout.
_LIMITS = re.compile(r"resizes exceeded|max(imum)? (number of )?pages|breached|memory limit", re.I)
_SERVER_TIMEOUT = re.compile(r"timeout, query aborted", re.I)
DEFAULT_READER = ("user", "quest")  # QuestDB's documented defaults for the read-only user


def _asyncpg() -> Any:
    try:
        return importlib.import_module("asyncpg")
    except ImportError:
        raise BackendNotAvailable(
            "QuestDB queries need the asyncpg driver: install tickvault[questdb]"
        ) from None


def file_nodes(plan: list[str]) -> list[str]:
    """The lines of an ``EXPLAIN`` plan that read the host's file system."""
    return [line.strip() for line in plan if _FILE_NODES.match(line)]


class QuestDBReader:
    """Runs one read-only statement at a time as QuestDB's read-only PG-wire user."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        user: str,
        password: str,
        timeout: float,
        query_timeout: float = 30.0,
    ) -> None:
        self.where = f"{host}:{port}"
        self._host, self._port = host, port
        self._user, self._password = user, password
        self._timeout = timeout
        self.query_timeout = query_timeout
        self._conn: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None

    async def _connection(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._conn is not None and (self._loop is not loop or self._conn.is_closed()):
            self._conn = None
        if self._conn is None:
            pg = _asyncpg()
            try:
                self._conn = await pg.connect(
                    host=self._host,
                    port=self._port,
                    user=self._user,
                    password=self._password,
                    database="qdb",
                    timeout=self._timeout,
                    command_timeout=self._timeout,
                    statement_cache_size=0,  # tables are re-created; never reuse a plan
                )
            except (TimeoutError, OSError) as exc:
                raise StoreUnavailable(
                    f"QuestDB PG wire at {self.where} unreachable: {exc!r}"
                ) from None
            except pg.PostgresError as exc:
                raise StoreError(
                    f"QuestDB PG wire at {self.where} refused the read-only user: {exc}"
                    " (server.conf needs pg.readonly.user.enabled=true and the same user"
                    " and password as the store URL's reader_user/reader_password)"
                ) from None
            self._loop = loop
            self._lock = asyncio.Lock()
        return self._conn

    async def query(
        self, statement: str, limit: int
    ) -> tuple[list[str], list[str], list[tuple[Any, ...]]]:
        """Column names, PG type names and up to ``limit + 1`` rows of ``statement``;
        :class:`QueryRejected` when it runs longer than ``query_timeout`` seconds."""
        conn = await self._connection()
        assert self._lock is not None
        async with self._lock:
            task = asyncio.ensure_future(self._run(conn, statement, limit))
            done, _ = await asyncio.wait({task}, timeout=self.query_timeout)
            if task in done:
                return task.result()
            # Closing the connection is what stops the statement (QuestDB's circuit breaker
            # ends a query whose client has gone); asyncpg's own cancel would wait for a
            # server that does not answer it.
            conn.terminate()
            self._conn = None
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            raise QueryTimeout(
                f"query stopped: it ran past the time limit of {self.query_timeout:g} s"
            )

    async def _run(
        self, conn: Any, statement: str, limit: int
    ) -> tuple[list[str], list[str], list[tuple[Any, ...]]]:
        pg = _asyncpg()
        try:
            plan = [str(r[0]) for r in await conn.fetch("EXPLAIN " + statement)]
            reads = file_nodes(plan)
            if reads:
                raise QueryRejected(
                    "refused: the query reads the server's file system"
                    f" ({'; '.join(reads)}); only tables can be queried"
                )
            async with conn.transaction():
                prepared = await conn.prepare(statement)
                cursor = await prepared.cursor()
                records = await cursor.fetch(limit + 1)
                attributes = prepared.get_attributes()
        except pg.PostgresError as exc:
            text = " ".join(str(exc).split())
            if _LIMITS.search(text):
                raise QueryLimitExceeded(
                    f"query stopped: it needs more memory than the server allows one query ({text})"
                ) from None
            if _SERVER_TIMEOUT.search(text):
                raise QueryTimeout(f"query stopped at the server's time limit ({text})") from None
            raise StoreError(f"query failed: {text}") from None
        except (OSError, pg.InterfaceError) as exc:
            self._conn = None
            raise StoreUnavailable(f"QuestDB PG wire at {self.where}: {exc!r}") from None
        names = [a.name for a in attributes]
        types = [a.type.name for a in attributes]
        return names, types, [tuple(r.values()) for r in records]

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and self._loop is asyncio.get_running_loop():
            await conn.close(timeout=5)
