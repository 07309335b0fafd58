"""The embedded store: one DuckDB file.

Writes go through Arrow (``INSERT OR IGNORE ... SELECT * FROM <arrow table>``) onto tables
whose primary key is the natural key, so a redelivered batch inserts nothing twice and the
statement's row count is exactly the number of new rows. ``executemany`` is never used: it
is three orders of magnitude slower for bulk data.

DuckDB lets one process open a file for writing. A second process that wants to read while
``tickvault run`` or ``replay`` holds the file goes through the running process's control
socket (:mod:`tickvault.service.control`) instead of opening the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import duckdb

from tickvault.core.errors import BatchRejected, ConfigError, StoreError, StoreUnavailable
from tickvault.core.records import KINDS, ColumnType, KindSpec, spec_for
from tickvault.stores.base import QueryResult, Store, StoreHealth
from tickvault.stores.duckdb.query import (
    DEFAULT_MEMORY_LIMIT,
    DEFAULT_TIMEOUT_S,
    QuerySandbox,
)

if TYPE_CHECKING:
    import pyarrow as pa  # imported where batches are checked: status and query need none

T = TypeVar("T")

_DUCK_TYPES: dict[ColumnType, str] = {
    "str": "VARCHAR",
    "i64": "BIGINT",
    "f64": "DOUBLE",
    "bool": "BOOLEAN",
    "ts": "TIMESTAMP",
    "f64_list": "DOUBLE[]",
}
"""DuckDB column type per :data:`tickvault.core.records.ColumnType`."""


def create_table_sql(spec: KindSpec) -> str:
    cols = ", ".join(
        f"{f.name} {_DUCK_TYPES[f.type]}{'' if f.nullable else ' NOT NULL'}" for f in spec.fields
    )
    return f"CREATE TABLE IF NOT EXISTS {spec.table} ({cols}, PRIMARY KEY ({', '.join(spec.key)}))"


def migrate_bars(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Bring a ``bars`` table created before nullable volume and the ``adjusted`` flag up to
    date, in place and idempotently; return the statements run (none when current).

    Stored rows keep their values: ``adjusted`` becomes ``true`` for them (every earlier
    download asked for adjusted prices) and ``volume`` merely becomes nullable.
    """
    rows = con.execute(
        "SELECT column_name, is_nullable FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND table_name = 'bars'"
    ).fetchall()
    nullable = {str(name): flag == "YES" for name, flag in rows}
    steps: list[str] = []
    if nullable.get("volume") is False:
        steps.append("ALTER TABLE bars ALTER COLUMN volume DROP NOT NULL")
    if nullable and "adjusted" not in nullable:
        steps.append("ALTER TABLE bars ADD COLUMN adjusted BOOLEAN DEFAULT true")
    if nullable and nullable.get("adjusted", True):
        steps.append("ALTER TABLE bars ALTER COLUMN adjusted SET NOT NULL")
    if steps:
        con.execute("BEGIN TRANSACTION")
        try:
            for sql in steps:
                con.execute(sql)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    return steps


def _translate(exc: Exception, path: Path) -> StoreError:
    text = str(exc)
    if isinstance(exc, duckdb.IOException | OSError) or "lock" in text.lower():
        return StoreUnavailable(f"DuckDB store {path}: {text}")
    if isinstance(
        exc, duckdb.ConstraintException | duckdb.ConversionException | duckdb.OutOfRangeException
    ):
        # The data itself was refused (a CHECK constraint, a value out of range): retrying
        # the same rows cannot succeed, the writer isolates them instead.
        return BatchRejected(text)
    return StoreError(f"DuckDB store {path}: {text}")


class DuckDBStore(Store):
    """Store on a local DuckDB file; ``DuckDBStore.from_url("duckdb:///data/ticks.duckdb")``."""

    def __init__(
        self,
        path: str | Path,
        *,
        read_only: bool = False,
        query_timeout_s: float = DEFAULT_TIMEOUT_S,
        query_memory: str = DEFAULT_MEMORY_LIMIT,
    ) -> None:
        self.path = Path(path)
        self.url = f"duckdb:///{self.path}"
        self.read_only = read_only
        self._sandbox = QuerySandbox(timeout_s=query_timeout_s, memory_limit=query_memory)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="duckdb-write")
        self._query_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="duckdb-query")
        self._con: duckdb.DuckDBPyConnection | None = None
        self._query_cursor: duckdb.DuckDBPyConnection | None = None
        self._schema_ready = False

    @classmethod
    def from_url(cls, url: str, *, read_only: bool = False) -> DuckDBStore:
        path = url[len("duckdb:///") :] if url.startswith("duckdb:///") else url.split("://", 1)[1]
        if not path:
            raise StoreError(f"duckdb store URL needs a path: {url!r}")
        path, _, query = path.partition("?")
        options = dict(urllib.parse.parse_qsl(query))
        try:
            timeout = float(options.get("query_timeout_s", DEFAULT_TIMEOUT_S))
        except ValueError:
            raise ConfigError(f"bad query_timeout_s in {url!r}") from None
        return cls(
            path,
            read_only=read_only,
            query_timeout_s=timeout,
            query_memory=options.get("query_memory", DEFAULT_MEMORY_LIMIT),
        )

    def _connect(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            try:
                if not self.read_only:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                self._con = duckdb.connect(str(self.path), read_only=self.read_only)
            except (duckdb.Error, OSError) as exc:
                raise _translate(exc, self.path) from exc
        return self._con

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    def _ensure_schema(self) -> None:
        con = self._connect()
        if self.read_only or self._schema_ready:
            return
        try:
            for spec in KINDS.values():
                con.execute(create_table_sql(spec))
            migrate_bars(con)
        except duckdb.Error as exc:
            raise _translate(exc, self.path) from exc
        self._schema_ready = True

    async def ensure_schema(self) -> None:
        await self._run(self._ensure_schema)
        await self._run(self._open_query_cursor)  # the query sandbox, locked from the start

    def _write(self, kind: str, table: pa.Table) -> int:
        spec = spec_for(kind)
        self._ensure_schema()
        con = self._connect()
        try:
            con.register("_tv_batch", table)
            try:
                row = con.execute(
                    f"INSERT OR IGNORE INTO {spec.table} SELECT * FROM _tv_batch"
                ).fetchone()
            finally:
                con.unregister("_tv_batch")
        except (duckdb.Error, OSError) as exc:
            # A failed statement is rolled back by DuckDB; a broken connection is reopened.
            self._reset_after_error()
            raise _translate(exc, self.path) from exc
        return int(row[0]) if row else 0

    def _stored_versions(self, kind: str, keys: pa.Table) -> pa.Table:
        import pyarrow as pa
        import pyarrow.compute as pc

        spec = spec_for(kind)
        self._ensure_schema()
        con = self._connect()
        key_list = ", ".join(spec.key)
        # The range on the last key column lets DuckDB skip row groups by their min/max,
        # so the look-up does not scan the whole table.
        last = spec.key[-1]
        column = keys.column(last)
        bounds = ""
        if pa.types.is_integer(column.type) and keys.num_rows:
            low, high = pc.min(column).as_py(), pc.max(column).as_py()
            bounds = f" WHERE s.{last} BETWEEN {int(low)} AND {int(high)}"
        try:
            con.register("_tv_keys", keys.select(list(spec.key)))
            try:
                return con.sql(
                    f"SELECT s.* FROM (SELECT * FROM {spec.table} s{bounds}) s"
                    f" SEMI JOIN _tv_keys k USING ({key_list})"
                ).to_arrow_table()
            finally:
                con.unregister("_tv_keys")
        except (duckdb.Error, OSError) as exc:
            self._reset_after_error()
            raise _translate(exc, self.path) from exc

    async def stored_versions(self, kind: str, table: pa.Table) -> pa.Table | None:
        """Stored rows with the keys of ``table`` (the first stored versions: this store
        never overwrites a key)."""
        if table.num_rows == 0:
            return spec_for(kind).schema.empty_table()
        return await self._run(self._stored_versions, kind, table)

    def _replace(self, kind: str, table: pa.Table) -> int:
        spec = spec_for(kind)
        self._ensure_schema()
        con = self._connect()
        keys = " AND ".join(f"s.{k} = b.{k}" for k in spec.key)
        try:
            con.register("_tv_batch", table.select(list(spec.columns)))
            con.execute("BEGIN TRANSACTION")
            try:
                con.execute(
                    f"DELETE FROM {spec.table} s WHERE EXISTS"
                    f" (SELECT 1 FROM _tv_batch b WHERE {keys})"
                )
                row = con.execute(
                    f"INSERT OR IGNORE INTO {spec.table} SELECT * FROM _tv_batch"
                ).fetchone()
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            finally:
                con.unregister("_tv_batch")
        except (duckdb.Error, OSError) as exc:
            self._reset_after_error()
            raise _translate(exc, self.path) from exc
        return int(row[0]) if row else 0

    async def replace(self, kind: str, table: pa.Table) -> int:
        """Delete the stored rows with ``table``'s keys and insert ``table``, in one
        transaction (all or nothing)."""
        if table.num_rows == 0:
            return 0
        return await self._run(self._replace, kind, table)

    def _reset_after_error(self) -> None:
        if self._con is not None:
            with contextlib.suppress(duckdb.Error):
                self._con.close()
            self._con = None
            self._query_cursor = None
            self._schema_ready = False

    def _write_many(self, tables: dict[str, pa.Table]) -> dict[str, int]:
        self._ensure_schema()
        con = self._connect()
        counts: dict[str, int] = {}
        names = {kind: f"_tv_batch_{i}" for i, kind in enumerate(tables)}
        try:
            for kind, table in tables.items():
                con.register(names[kind], table)
            con.execute("BEGIN TRANSACTION")
            try:
                for kind in tables:
                    row = con.execute(
                        f"INSERT OR IGNORE INTO {spec_for(kind).table} SELECT * FROM {names[kind]}"
                    ).fetchall()
                    counts[kind] = int(row[0][0]) if row else 0
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            finally:
                for name in names.values():
                    con.unregister(name)
        except (duckdb.Error, OSError) as exc:
            self._reset_after_error()
            raise _translate(exc, self.path) from exc
        return counts

    async def write_many(self, tables: dict[str, pa.Table]) -> dict[str, int]:
        """All kinds of a writer batch in one transaction: one commit (one fsync)."""
        tables = {k: t for k, t in tables.items() if t.num_rows}
        if not tables:
            return {}
        return await self._run(self._write_many, tables)

    async def write(self, kind: str, table: pa.Table) -> int:
        if table.num_rows == 0:
            return 0
        return await self._run(self._write, kind, table)

    def _query(self, sql: str, limit: int) -> QueryResult:
        """Runs on the query thread, on its own cursor (never the writer's connection), in
        the sandbox of :mod:`tickvault.stores.duckdb.query`."""
        cur = self._query_cursor
        if cur is None:
            raise StoreUnavailable(f"DuckDB store {self.path}: reconnecting, try again")
        return self._sandbox.run(cur, sql, limit)

    def _open_query_cursor(self) -> None:
        if self._query_cursor is None:
            self._ensure_schema()
            cursor = self._connect().cursor()
            self._sandbox.prepare(cursor)  # before any user statement reaches the instance
            self._query_cursor = cursor

    async def query(self, sql: str, limit: int = 10_000) -> QueryResult:
        loop = asyncio.get_running_loop()
        # Queries run on their own thread and cursor (a DuckDB cursor is a separate
        # connection to the same database), so a long query never delays the writer.
        await self._run(self._open_query_cursor)
        return await loop.run_in_executor(self._query_executor, self._query, sql, limit)

    async def counts(self) -> dict[str, int]:
        def op() -> dict[str, int]:
            self._ensure_schema()
            con = self._connect().cursor()
            try:
                present = {
                    r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()
                }
                return {
                    s.table: int(con.execute(f"SELECT count(*) FROM {s.table}").fetchone()[0])  # type: ignore[index]
                    for s in KINDS.values()
                    if s.table in present
                }
            finally:
                con.close()

        return await self._run(op)

    async def latest(self, kind: str, symbol: str) -> dict[str, Any] | None:
        spec = spec_for(kind)
        order = "ts_open" if kind == "bar" else "ts_recv"
        result = await self.query(
            f"SELECT * FROM {spec.table} WHERE symbol = '{symbol.replace(chr(39), '')}'"
            f" ORDER BY {order} DESC LIMIT 1"
        )
        return result.as_dicts()[0] if result.rows else None

    async def health(self) -> StoreHealth:
        def op() -> StoreHealth:
            try:
                self._ensure_schema()
                self._connect().execute("SELECT 1").fetchall()
            except StoreError as exc:
                return StoreHealth(ok=False, writable=False, detail=str(exc))
            return StoreHealth(ok=True, writable=not self.read_only, detail=str(self.path))

        return await self._run(op)

    async def close(self) -> None:
        def op() -> None:
            if self._query_cursor is not None:
                self._query_cursor.close()
                self._query_cursor = None
            if self._con is not None:
                self._con.close()
                self._con = None

        # A query still running (one the HTTP API already gave up on) is stopped first: its
        # cursor cannot be closed while it is busy.
        if self._query_cursor is not None:
            self._query_cursor.interrupt()
        await asyncio.get_running_loop().run_in_executor(
            None, functools.partial(self._query_executor.shutdown, wait=True)
        )
        await self._run(op)
        self._executor.shutdown(wait=True)
