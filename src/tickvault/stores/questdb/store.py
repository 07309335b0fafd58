"""The QuestDB store: ``questdb://[user:password@]host[:9000][?secure=1&wal_timeout=30]``.

More URL options: ``query_timeout_s`` (30: a user query running longer is stopped),
``pg_port`` (8812), ``reader_user`` and ``reader_password`` (QuestDB's
read-only PG-wire user, default ``user``/``quest``), which :meth:`QuestDBStore.query` uses
for user SQL (see :mod:`tickvault.stores.questdb.query`); ``health_port`` (QuestDB's
minimal HTTP server, usually 9003, whose ``/status`` ``health()`` then consults); ``root``
(the server's root directory, when it runs on this host) and ``backup_dir`` (where the
guardian copies a damaged table's directory; never inside ``root``), both only used by the
guardian.

Writes go through the official ``questdb`` client over ILP/HTTP (protocol version 1, text),
one table per request, so each request is one transaction and a refused request leaves
nothing behind. Queries, DDL and health go through the REST endpoint ``/exec``.

Tables (created with ``/exec``)::

    CREATE TABLE IF NOT EXISTS trades (exchange SYMBOL, symbol SYMBOL, trade_id LONG, ...,
        ts_event TIMESTAMP, ts_recv TIMESTAMP) TIMESTAMP(ts_event) PARTITION BY DAY WAL
        DEDUP UPSERT KEYS(ts_event, exchange, symbol, trade_id)

The designated timestamp is the record's event time (:func:`tickvault.stores.keys.event_time`)
and is always sent explicitly: a server-assigned timestamp would differ between deliveries and
defeat deduplication. Depth levels (lists of floats) are stored as JSON text, because ILP
protocol version 1 has no arrays; ``query`` turns them back into lists.

A write of one batch:

1. drops rows whose key repeats inside the batch (the first one wins);
2. asks ``/exec`` which of the batch's natural keys are stored already (within the batch's
   designated-timestamp range — widened by a day for kinds whose designated timestamp is
   not in the key, such as a quote's arrival time, so a venue's resend is found — and the
   batch's id range, so QuestDB scans only those partitions and returns few rows);
3. sends only the new rows in one transactional ILP/HTTP request;
4. waits until ``wal_tables()`` shows the table's writer has applied the sequencer's
   transaction (bounded by ``wal_timeout``), so the rows are visible and counted when
   ``write`` returns. A suspended table, or a writer that does not catch up in time,
   raises :class:`StoreUnavailable`: the rows are committed in the WAL and a retry is
   harmless, because QuestDB deduplicates on the upsert keys when it applies the WAL.

Errors: an answer with ``"code":"invalid"`` (HTTP 400) or a value the client itself refuses
(a designated timestamp before 1970) is :class:`BatchRejected`; anything else (connection,
HTTP 5xx such as ``"internal error"`` from a damaged WAL) is :class:`StoreUnavailable`.
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa

from tickvault.core.backoff import Backoff
from tickvault.core.errors import (
    ConfigError,
    StoreError,
    StoreUnavailable,
)
from tickvault.core.records import KINDS, KindSpec, spec_for
from tickvault.stores.base import QueryResult, Store, StoreHealth
from tickvault.stores.keys import event_time, first_per_key, order_column
from tickvault.stores.questdb.ilp import ILPWriter
from tickvault.stores.questdb.keys import (
    key_filter,
    key_tuples,
    sql_str,
)
from tickvault.stores.questdb.query import DEFAULT_READER, QuestDBReader
from tickvault.stores.questdb.rest import (
    QuestDBREST,
    TableInfo,
    WalTableStatus,
    decode_dataset,
)
from tickvault.stores.sql_guard import check_single_select

MIN_VERSION = (7, 3, 0)  # DEDUP UPSERT KEYS
VARCHAR_VERSION = (7, 4, 0)
_WAL_POLL = Backoff(initial=0.002, cap=0.02, jitter="none")
"""Polls of the server's own progress: nothing to spread out, so no jitter."""
LIST_COLUMNS = frozenset(
    f.name for s in KINDS.values() for f in s.schema if pa.types.is_list(f.type)
)


def column_type(field: pa.Field, text_type: str, key: tuple[str, ...]) -> str:
    """QuestDB type of a column: strings in the natural key are SYMBOLs (sent as ILP tags),
    other strings and depth levels (JSON) are text."""
    t = field.type
    if t == pa.string():
        return "SYMBOL" if field.name in key else text_type
    if t == pa.int64():
        return "LONG"
    if t == pa.float64():
        return "DOUBLE"
    if t == pa.bool_():
        return "BOOLEAN"
    if pa.types.is_timestamp(t):
        return "TIMESTAMP"
    if pa.types.is_list(t):
        return text_type
    raise ValueError(f"no QuestDB type for {t}")  # pragma: no cover - KINDS uses the above


def create_table_sql(spec: KindSpec, text_type: str) -> str:
    ts = event_time(spec)
    cols = ", ".join(f"{f.name} {column_type(f, text_type, spec.key)}" for f in spec.schema)
    upsert = [ts, *(k for k in spec.key if k != ts)]
    return (
        f"CREATE TABLE IF NOT EXISTS {spec.table} ({cols}) TIMESTAMP({ts})"
        f" PARTITION BY DAY WAL DEDUP UPSERT KEYS({', '.join(upsert)})"
    )


class QuestDBStore(Store):
    """Store on a QuestDB server; ``QuestDBStore.from_url("questdb://host:9000")``."""

    def __init__(
        self,
        host: str,
        port: int = 9000,
        *,
        user: str | None = None,
        password: str | None = None,
        secure: bool = False,
        timeout: float = 60.0,
        wal_timeout: float = 30.0,
        read_only: bool = False,
        pg_port: int = 8812,
        reader: tuple[str, str] = DEFAULT_READER,
        server_root: Path | None = None,
        backup_dir: Path | None = None,
        health_port: int | None = None,
        query_timeout: float = 30.0,
    ) -> None:
        self.host, self.port = host, port
        self.url = f"questdb://{host}:{port}"
        self.read_only = read_only
        # Where the server keeps its files, when it runs on this host: the guardian reads
        # its log and copies a damaged table's directory to ``backup_dir``, nothing more.
        self.server_root = server_root
        self.backup_dir = backup_dir
        self.health_port = health_port
        self.wal_timeout = wal_timeout
        self._secure = secure
        self._auth = (user, password or "") if user else None
        self._timeout = timeout
        self._rest = QuestDBREST(
            f"{'https' if secure else 'http'}://{host}:{port}", auth=self._auth, timeout=timeout
        )
        self._reader = QuestDBReader(
            host,
            pg_port,
            user=reader[0],
            password=reader[1],
            timeout=timeout,
            query_timeout=query_timeout,
        )
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="questdb-ilp")
        self._ilp = ILPWriter(host, port, secure=secure, auth=self._auth, timeout=timeout)
        self._version: tuple[int, int, int] | None = None
        self._present: set[str] = set()
        self._schema_ready = False

    @classmethod
    def from_url(cls, url: str, *, read_only: bool = False) -> QuestDBStore:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "questdb" or not parts.hostname:
            raise ConfigError(f"expected questdb://host:9000, got {url!r}")
        options = dict(urllib.parse.parse_qsl(parts.query))
        try:
            port = parts.port or 9000
            timeout = float(options.get("timeout", "60"))
            wal_timeout = float(options.get("wal_timeout", "30"))
            pg_port = int(options.get("pg_port", "8812"))
            health_port = int(options["health_port"]) if options.get("health_port") else None
            query_timeout = float(options.get("query_timeout_s", "30"))
        except ValueError as exc:
            raise ConfigError(f"bad QuestDB URL {url!r}: {exc}") from None
        return cls(
            parts.hostname,
            port,
            user=urllib.parse.unquote(parts.username) if parts.username else None,
            password=urllib.parse.unquote(parts.password) if parts.password else None,
            secure=options.get("secure", "").lower() in ("1", "true", "yes"),
            timeout=timeout,
            wal_timeout=wal_timeout,
            read_only=read_only,
            pg_port=pg_port,
            reader=(
                options.get("reader_user", DEFAULT_READER[0]),
                options.get("reader_password", DEFAULT_READER[1]),
            ),
            server_root=Path(options["root"]) if options.get("root") else None,
            backup_dir=Path(options["backup_dir"]) if options.get("backup_dir") else None,
            health_port=health_port,
            query_timeout=query_timeout,
        )

    # -- schema -----------------------------------------------------------------------------

    async def version(self) -> tuple[int, int, int]:
        if self._version is None:
            self._version = await self._rest.version()
        return self._version

    async def tables(self) -> dict[str, TableInfo]:
        """The server's tables by name, from ``tables()``."""
        return await self._rest.tables()

    async def ensure_schema(self) -> None:
        if self._schema_ready:
            return
        version = await self.version()
        if version < MIN_VERSION:
            raise StoreError(
                f"QuestDB {'.'.join(map(str, version))} lacks DEDUP UPSERT KEYS; tickvault"
                " needs 7.3 or newer"
            )
        text_type = "VARCHAR" if version >= VARCHAR_VERSION else "STRING"
        if not self.read_only:
            for spec in KINDS.values():
                await self._rest.exec(create_table_sql(spec, text_type))
        tables = await self._rest.tables()
        if not self.read_only and "bars" in tables:
            await self._migrate_bars()
        for spec in KINDS.values():
            info = tables.get(spec.table)
            if info is None:
                continue
            await self._check_table(spec, info)
            self._present.add(spec.table)
        self._schema_ready = True

    async def _migrate_bars(self) -> None:
        """Add ``adjusted`` to a ``bars`` table from before it (``volume`` is a DOUBLE, which
        QuestDB keeps nullable anyway); rows stored before are marked adjusted, as every
        earlier download asked for adjusted prices."""
        names, _ = decode_dataset(await self._rest.exec("SELECT * FROM bars LIMIT 0"))
        if "adjusted" not in names:
            await self._rest.exec("ALTER TABLE bars ADD COLUMN adjusted BOOLEAN")
            await self._rest.exec("UPDATE bars SET adjusted = true")
            # On a WAL table both go through the WAL: wait until applied, or the schema
            # check that follows can still see the old columns (seen on QuestDB 9.3).
            await self._wait_applied("bars")

    async def _check_table(self, spec: KindSpec, info: TableInfo) -> None:
        ts = event_time(spec)
        problems = []
        if not info.wal:
            problems.append("is not a WAL table")
        if info.designated_timestamp != ts:
            problems.append(f"has designated timestamp {info.designated_timestamp!r}, not {ts!r}")
        if info.dedup is False:
            problems.append("has no DEDUP UPSERT KEYS")
        names, _ = decode_dataset(await self._rest.exec(f"SELECT * FROM {spec.table} LIMIT 0"))
        if names != list(spec.columns):
            problems.append(f"has columns {names}, tickvault expects {list(spec.columns)}")
        if problems:
            raise StoreError(f"QuestDB table {spec.table} " + "; ".join(problems))

    # -- writing ----------------------------------------------------------------------------

    async def write(self, kind: str, table: pa.Table) -> int:
        spec = spec_for(kind)
        if table.num_rows == 0:
            return 0
        await self.ensure_schema()
        if spec.table not in self._present:
            raise StoreUnavailable(f"QuestDB table {spec.table} is missing")
        batch = first_per_key(table.select(list(spec.columns)), spec)
        stored = await self._stored_keys(spec, batch)
        if stored:
            keys = key_tuples(spec, batch)
            batch = batch.filter(pa.array([k not in stored for k in keys], pa.bool_()))
        if batch.num_rows == 0:
            return 0
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._ilp.send, spec, batch)
        await self._wait_applied(spec.table)
        return int(batch.num_rows)

    async def replace(self, kind: str, table: pa.Table) -> int:
        """:meth:`write` without its stored-key filter: ``DEDUP UPSERT KEYS`` (the key,
        with the designated timestamp) replace each stored row; reruns upsert the same."""
        spec = spec_for(kind)
        if table.num_rows == 0:
            return 0
        await self.ensure_schema()
        if spec.table not in self._present:
            raise StoreUnavailable(f"QuestDB table {spec.table} is missing")
        if event_time(spec) not in spec.key:
            raise StoreError(f"QuestDB cannot replace {spec.table} rows by key")
        batch = first_per_key(table.select(list(spec.columns)), spec)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._ilp.send, spec, batch)
        await self._wait_applied(spec.table)
        return int(batch.num_rows)

    async def _stored_keys(self, spec: KindSpec, batch: pa.Table) -> set[tuple[Any, ...]]:
        """Natural keys of ``batch`` already stored (one ``/exec`` query, see
        :func:`_key_filter`)."""
        doc = await self._rest.exec(
            f"SELECT {', '.join(spec.key)} FROM {spec.table} WHERE {key_filter(spec, batch)}"
        )
        _, rows = decode_dataset(doc)
        return set(rows)

    async def stored_versions(self, kind: str, table: pa.Table) -> pa.Table | None:
        """Stored rows with the keys of ``table``: the first stored versions, since
        :meth:`write` sends only keys not stored yet (a later version of a key never reaches
        QuestDB's UPSERT). One query over the same range as the write's lookup."""
        spec = spec_for(kind)
        await self.ensure_schema()
        if spec.table not in self._present or table.num_rows == 0:
            return spec.schema.empty_table()
        batch = table.select(list(spec.columns))
        doc = await self._rest.exec(
            f"SELECT {', '.join(spec.columns)} FROM {spec.table} WHERE {key_filter(spec, batch)}"
        )
        columns, rows = _decode_public(doc)
        wanted = set(key_tuples(spec, batch))
        at = [columns.index(k) for k in spec.key]
        found = [
            dict(zip(columns, row, strict=True))
            for row in rows
            if tuple(row[i] for i in at) in wanted
        ]
        return pa.Table.from_pylist(found, schema=spec.schema)

    async def _wait_applied(self, table: str) -> None:
        """Wait until the table's WAL writer has applied what the sequencer committed."""
        deadline = time.monotonic() + self.wal_timeout
        target: int | None = None
        poll = _WAL_POLL.restarted()
        while True:
            status = (await self._rest.wal_tables()).get(table)
            if status is None:
                return  # not a WAL table: committed means visible
            if status.suspended:
                raise StoreUnavailable(
                    f"QuestDB table {table} is suspended: {status.state}"
                    f" ({status.error_tag or 'no tag'}: {status.error_message or 'no message'});"
                    " its WAL holds the batch, invisible until RESUME WAL"
                )
            if target is None:
                target = status.sequencer_txn
            if status.writer_txn >= target:
                return
            if time.monotonic() >= deadline:
                raise StoreUnavailable(
                    f"QuestDB table {table}: WAL not applied within {self.wal_timeout}s"
                    f" (writer {status.writer_txn}, sequencer {status.sequencer_txn})"
                )
            await asyncio.sleep(poll.next_delay())

    # -- reading ----------------------------------------------------------------------------

    async def query(self, sql: str, limit: int = 10_000) -> QueryResult:
        """One read-only statement as QuestDB's read-only PG-wire user; statements whose
        plan reads host files are refused (:mod:`tickvault.stores.questdb.query`)."""
        statement = check_single_select(sql)
        await self.ensure_schema()
        columns, types, rows = await self._reader.query(statement, limit)
        rows = _lists_back(columns, types, rows)
        return QueryResult(columns, rows[:limit], truncated=len(rows) > limit)

    async def counts(self) -> dict[str, int]:
        await self.ensure_schema()
        out: dict[str, int] = {}
        for spec in KINDS.values():
            if spec.table in self._present:
                _, rows = decode_dataset(await self._rest.exec(f"SELECT count() FROM {spec.table}"))
                out[spec.table] = int(rows[0][0]) if rows else 0
        return out

    async def latest(self, kind: str, symbol: str) -> dict[str, Any] | None:
        spec = spec_for(kind)
        await self.ensure_schema()
        order = order_column(spec)
        doc = await self._rest.exec(
            f"SELECT * FROM {spec.table} WHERE symbol = {sql_str(symbol)}"
            f" ORDER BY {order} DESC LIMIT 1"
        )
        columns, rows = _decode_public(doc)
        return dict(zip(columns, rows[0], strict=True)) if rows else None

    async def wal_status(self) -> dict[str, WalTableStatus]:
        """Per public table: suspended or not, and how far the writer trails the sequencer."""
        status = await self._rest.wal_tables()
        return {s.table: status[s.table] for s in KINDS.values() if s.table in status}

    async def health(self) -> StoreHealth:
        """Not ok when the server's health endpoint (``health_port=``, QuestDB's minimal HTTP
        server, ``/status``) does not answer 200 or ``/exec`` fails; not writable while a
        table is suspended."""
        try:
            if self.health_port is not None:
                await self._rest.server_health(f"http://{self.host}:{self.health_port}/status")
            await self.ensure_schema()
            wal = await self.wal_status()
        except StoreError as exc:
            return StoreHealth(ok=False, writable=False, detail=str(exc))
        suspended = sorted(t for t, s in wal.items() if s.suspended)
        version = ".".join(map(str, self._version or (0, 0, 0)))
        detail = f"QuestDB {version} at {self.url}"
        if suspended:
            detail += f"; suspended tables: {', '.join(suspended)}"
        behind = sorted((t, s.state) for t, s in wal.items() if s.state != "applied")
        if behind:
            detail += "; " + ", ".join(f"{t}: {state}" for t, state in behind)
        return StoreHealth(ok=True, writable=not self.read_only and not suspended, detail=detail)

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._ilp.close)
        self._executor.shutdown(wait=True)
        await self._rest.aclose()
        await self._reader.close()


def _decode_public(doc: dict[str, Any]) -> tuple[list[str], list[tuple[Any, ...]]]:
    """``decode_dataset`` plus depth levels (JSON text columns) back into lists."""
    columns, rows = decode_dataset(doc)
    types = [str(c.get("type", "")) for c in doc.get("columns", [])]
    return columns, _lists_back(columns, types, rows)


def _lists_back(
    columns: list[str], types: list[str], rows: list[tuple[Any, ...]]
) -> list[tuple[Any, ...]]:
    """Depth levels (stored as JSON text) back into lists."""
    lists = [
        i
        for i, (n, t) in enumerate(zip(columns, types, strict=True))
        if n in LIST_COLUMNS and t.upper() in ("VARCHAR", "STRING", "TEXT")
    ]
    if lists:
        rows = [
            tuple(
                orjson.loads(v) if i in lists and isinstance(v, str) else v
                for i, v in enumerate(row)
            )
            for row in rows
        ]
    return rows
