"""The ClickHouse store: ``clickhouse://[user[:password]@]host[:8123]/database[?secure=1]``.

Tables and timestamp types are described in :mod:`tickvault.stores.clickhouse.schema`;
the wire in :mod:`tickvault.stores.clickhouse.http` (HTTP interface, every server from the
18.16 that Debian ships to current releases).

A write of one batch:

1. drops rows whose natural key repeats inside the batch (the first one wins);
2. asks the server which keys already exist: the batch's keys travel as an external table
   in ``Native`` format, and ``(key) IN`` uses the table's primary index;
3. inserts only the new rows in one ``INSERT ... FORMAT Native`` request (with
   ``insert_deduplication_token`` = SHA-256 of the block on servers that have it, and
   ``async_insert=0`` where that setting exists), and returns how many that was.

ClickHouse answers an insert after the part is written, so a returned ``write`` is a
committed one. Two writers racing on the same new key can both insert it; the table is a
``ReplacingMergeTree`` ordered by the key, so the copies collapse in merges, and every read
tickvault itself makes for counting uses ``FINAL``. Plain ``SELECT`` without ``FINAL`` may
show such a race's duplicate until the next merge; add ``FINAL`` when it must be exact.
"""

from __future__ import annotations

import array
import hashlib
import math
import urllib.parse
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from tickvault.core.errors import ConfigError, StoreError, StoreUnavailable
from tickvault.core.records import KINDS, KindSpec, spec_for
from tickvault.delivery.spool import parse_size
from tickvault.stores.base import QueryResult, Store, StoreHealth
from tickvault.stores.clickhouse.http import (
    ClickHouseHTTP,
    ClickHouseServerError,
    ServerFeatures,
    for_insert,
    for_query,
)
from tickvault.stores.clickhouse.native import encode_block
from tickvault.stores.clickhouse.replace import replace_rows
from tickvault.stores.clickhouse.schema import (
    GUARD_CONSTRAINT,
    bars_migration_sql,
    create_table_sql,
    decode_rows,
    quote_ident,
    quote_str,
)
from tickvault.stores.keys import first_per_key, order_column
from tickvault.stores.sql_guard import check_single_select

_ROW_COLUMN = "_tv_row"
_FORBIDDEN_IN_QUERIES = frozenset({"FORMAT", "OUTFILE"})


class ClickHouseStore(Store):
    """Store on a ClickHouse server; ``ClickHouseStore.from_url("clickhouse://h:8123/db")``."""

    def __init__(
        self,
        host: str,
        port: int = 8123,
        database: str = "default",
        *,
        user: str | None = None,
        password: str | None = None,
        secure: bool = False,
        timeout: float = 60.0,
        read_only: bool = False,
        query_timeout_s: float = 10.0,
        query_memory_bytes: int = 1 << 30,
    ) -> None:
        scheme = "https" if secure else "http"
        self.database = database
        self.read_only = read_only
        self.query_timeout_s = query_timeout_s
        self.query_memory_bytes = query_memory_bytes
        self.url = f"clickhouse://{host}:{port}/{database}"
        self._http = ClickHouseHTTP(
            f"{scheme}://{host}:{port}", user=user, password=password, timeout=timeout
        )
        self._features: ServerFeatures | None = None
        self._types: dict[str, dict[str, str]] = {}
        self._schema_ready = False

    @classmethod
    def from_url(cls, url: str, *, read_only: bool = False) -> ClickHouseStore:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "clickhouse" or not parts.hostname:
            raise ConfigError(f"expected clickhouse://host:8123/database, got {url!r}")
        database = parts.path.strip("/") or "default"
        options = dict(urllib.parse.parse_qsl(parts.query))
        try:
            port = parts.port or 8123
            timeout = float(options.get("timeout", "60"))
            query_timeout_s = float(options.get("query_timeout_s", "10"))
            query_memory_bytes = parse_size(options.get("query_memory", "1GiB"))
        except ValueError as exc:
            raise ConfigError(f"bad ClickHouse URL {url!r}: {exc}") from None
        return cls(
            parts.hostname,
            port,
            database,
            user=urllib.parse.unquote(parts.username) if parts.username else None,
            password=urllib.parse.unquote(parts.password) if parts.password else None,
            secure=options.get("secure", "").lower() in ("1", "true", "yes"),
            timeout=timeout,
            read_only=read_only,
            query_timeout_s=query_timeout_s,
            query_memory_bytes=query_memory_bytes,
        )

    # -- server and schema ------------------------------------------------------------------

    async def features(self) -> ServerFeatures:
        """The server's version and what tickvault uses of it (asked once per store)."""
        if self._features is None:
            raw = await self._http.post(
                "SELECT version(), (SELECT value FROM system.settings WHERE name = 'readonly')"
            )
            version, _, readonly = raw.decode().strip().partition("\t")
            self._features = ServerFeatures.for_version(version)
            # A user whose profile is read-only may not send any setting: its profile's
            # own limits apply (docs/stores.md, "A read-only user for queries").
            self._http.profile_settings_only = readonly.strip() not in ("", "0")
        return self._features

    def _table(self, spec: KindSpec) -> str:
        return f"{quote_ident(self.database)}.{quote_ident(spec.table)}"

    async def ensure_schema(self) -> None:
        if self._schema_ready:
            return
        features = await self.features()
        if not self.read_only:
            await self._http.post(f"CREATE DATABASE IF NOT EXISTS {quote_ident(self.database)}")
            for spec in KINDS.values():
                await self._http.post(create_table_sql(spec, self.database, features))
            await self._migrate_bars(features)
        await self._load_types()
        self._schema_ready = True

    async def _migrate_bars(self, features: ServerFeatures) -> None:
        """Nullable volume and the ``adjusted`` flag on a ``bars`` table from before them."""
        doc = await self._http.json(
            "SELECT name, type FROM system.columns"
            f" WHERE database = {quote_str(self.database)} AND table = 'bars'"
        )
        columns = {str(name): str(ch_type) for name, ch_type in doc.get("data", [])}
        constraint: bool | None = None
        if columns and features.constraints:
            ddl = await self._http.json(
                "SELECT create_table_query FROM system.tables"
                f" WHERE database = {quote_str(self.database)} AND name = 'bars'"
            )
            constraint = any(GUARD_CONSTRAINT in str(r[0]) for r in ddl.get("data", []))
        for sql in bars_migration_sql(columns, self.database, constraint):
            await self._http.post(sql)

    async def _load_types(self) -> None:
        doc = await self._http.json(
            "SELECT table, name, type, default_kind FROM system.columns"
            f" WHERE database = {quote_str(self.database)}"
        )
        found: dict[str, dict[str, str]] = {}
        for table, name, ch_type, default_kind in doc.get("data", []):
            if default_kind not in ("MATERIALIZED", "ALIAS"):  # those are not inserted
                found.setdefault(table, {})[name] = ch_type
        for spec in KINDS.values():
            types = found.get(spec.table)
            if types is None:
                continue
            if list(types) != list(spec.columns):
                if self.read_only:
                    continue  # queries read what is there; a writer migrates it first
                raise StoreError(
                    f"ClickHouse table {self.database}.{spec.table} has columns {list(types)};"
                    f" tickvault expects {list(spec.columns)}"
                )
            self._types[spec.table] = types

    @property
    def legacy_timestamps(self) -> bool:
        """True when the tables keep timestamps as Int64 microseconds (pre-20.1 servers)."""
        return any(t.get("ts_recv") == "Int64" for t in self._types.values())

    # -- writing ----------------------------------------------------------------------------

    async def _prepare(
        self, kind: str, table: pa.Table
    ) -> tuple[KindSpec, dict[str, str], pa.Table]:
        """The kind's spec, its table's column types and ``table`` in the table's column
        order with one row per key (the first), for :meth:`write` and :meth:`replace`."""
        spec = spec_for(kind)
        await self.ensure_schema()
        types = self._types.get(spec.table)
        if types is None:
            raise StoreUnavailable(f"ClickHouse table {self.database}.{spec.table} is missing")
        return spec, types, first_per_key(table.select(list(spec.columns)), spec)

    async def write(self, kind: str, table: pa.Table, *, token_salt: bytes = b"") -> int:
        """Insert the rows whose keys are not stored yet (``token_salt``: see
        :mod:`tickvault.stores.clickhouse.replace`)."""
        if table.num_rows == 0:
            return 0
        spec, types, batch = await self._prepare(kind, table)
        existing = await self._existing_rows(spec, batch, types)
        if existing:
            rows = pa.array(range(batch.num_rows), pa.uint32())
            stored = pc.is_in(rows, value_set=pa.array(existing, pa.uint32()))
            batch = batch.filter(pc.invert(stored))
        if batch.num_rows == 0:
            return 0
        body = encode_block(batch, types)
        features = await self.features()
        params: dict[str, str] = {}
        if features.dedup_token:
            params["insert_deduplication_token"] = hashlib.sha256(body + token_salt).hexdigest()
        if features.async_insert:
            params["async_insert"] = "0"
        columns = ", ".join(quote_ident(c) for c in batch.column_names)
        try:
            await self._http.post(
                f"INSERT INTO {self._table(spec)} ({columns}) FORMAT Native",
                params=params,
                body=body,
            )
        except ClickHouseServerError as exc:
            raise for_insert(exc, spec.table) from None
        return int(batch.num_rows)

    async def replace(self, kind: str, table: pa.Table) -> int:
        """See :mod:`tickvault.stores.clickhouse.replace` (delete mutation, then insert)."""
        if table.num_rows == 0:
            return 0
        spec, types, batch = await self._prepare(kind, table)
        return await replace_rows(
            self._http, self.database, self.write, spec, self._table(spec), types, batch
        )

    async def _existing_rows(
        self, spec: KindSpec, batch: pa.Table, types: dict[str, str]
    ) -> list[int]:
        """Row numbers of ``batch`` whose natural key is already stored."""
        keys = batch.select(list(spec.key)).append_column(
            _ROW_COLUMN, pa.array(range(batch.num_rows), pa.uint32())
        )
        key_types = {k: types[k] for k in spec.key} | {_ROW_COLUMN: "UInt32"}
        structure = ", ".join(f"{k} {t}" for k, t in key_types.items())
        key_list = ", ".join(quote_ident(k) for k in spec.key)
        sql = (
            f"SELECT {_ROW_COLUMN} FROM _k WHERE ({key_list}) IN"
            f" (SELECT {key_list} FROM {self._table(spec)} WHERE ({key_list}) IN"
            f" (SELECT {key_list} FROM _k)) FORMAT RowBinary"
        )
        try:
            raw = await self._http.post(
                sql,
                params={"_k_structure": structure, "_k_format": "Native"},
                files={"_k": ("_k", encode_block(keys, key_types))},
            )
        except ClickHouseServerError as exc:
            raise StoreUnavailable(f"ClickHouse key lookup in {spec.table} failed: {exc}") from None
        rows = array.array("I")
        rows.frombytes(raw)
        return rows.tolist()

    async def stored_versions(self, kind: str, table: pa.Table) -> pa.Table | None:
        """Stored rows with the keys of ``table``: the first stored versions, since
        :meth:`write` inserts only keys that are not stored yet (``FINAL`` folds the copies
        a race of two writers may leave)."""
        spec = spec_for(kind)
        await self.ensure_schema()
        types = self._types.get(spec.table)
        if types is None or table.num_rows == 0:
            return spec.schema.empty_table()
        key_types = {k: types[k] for k in spec.key}
        structure = ", ".join(f"{k} {t}" for k, t in key_types.items())
        key_list = ", ".join(quote_ident(k) for k in spec.key)
        columns = ", ".join(quote_ident(c) for c in spec.columns)
        sql = (
            f"SELECT {columns} FROM {self._table(spec)} FINAL WHERE ({key_list}) IN"
            f" (SELECT {key_list} FROM _k) FORMAT JSONCompact"
        )
        try:
            raw = await self._http.post(
                sql,
                params={
                    "_k_structure": structure,
                    "_k_format": "Native",
                    "output_format_json_quote_64bit_integers": "0",
                },
                files={"_k": ("_k", encode_block(table.select(list(spec.key)), key_types))},
            )
        except ClickHouseServerError as exc:
            raise StoreUnavailable(f"ClickHouse key lookup in {spec.table} failed: {exc}") from None
        names, rows = decode_rows(orjson.loads(raw), legacy_timestamps=self.legacy_timestamps)
        return pa.Table.from_pylist(
            [dict(zip(names, row, strict=True)) for row in rows], schema=spec.schema
        )

    # -- reading ----------------------------------------------------------------------------

    async def query(self, sql: str, limit: int = 10_000) -> QueryResult:
        statement = check_single_select(sql, forbidden=_FORBIDDEN_IN_QUERIES)
        await self.ensure_schema()
        try:
            doc = await self._http.json(statement, self.query_settings(limit))
        except ClickHouseServerError as exc:
            profile = self._http.profile_settings_only  # the user's profile sets the limit
            raise for_query(exc, None if profile else self.query_timeout_s) from None
        columns, rows = decode_rows(doc, legacy_timestamps=self.legacy_timestamps)
        return QueryResult(columns, rows[:limit], truncated=len(rows) > limit)

    def query_settings(self, limit: int) -> dict[str, str]:
        """The request settings every user query runs under (the server enforces them)."""
        return {
            "database": self.database,
            # 1, not 2: under 2 a query may change settings and call table functions such
            # as url(), file(), remote(); under 1 the server refuses all of them and any
            # write. The limits below still apply: ClickHouse applies the request's
            # settings together, before readonly takes effect.
            "readonly": "1",
            # whole seconds: 18.16 reads the setting as an integer
            "max_execution_time": str(max(1, math.ceil(self.query_timeout_s))),
            "timeout_overflow_mode": "throw",
            "max_memory_usage": str(self.query_memory_bytes),
            "max_result_rows": str(limit + 1),
            "result_overflow_mode": "break",
            "wait_end_of_query": "1",
        }

    async def counts(self) -> dict[str, int]:
        """Exact rows per public table (``FINAL``: duplicates of a key count once)."""
        await self.ensure_schema()
        present = [s for s in KINDS.values() if s.table in self._types]
        if not present:
            return {}
        sql = " UNION ALL ".join(
            f"SELECT {quote_str(s.table)} AS t, count() AS n FROM {self._table(s)} FINAL"
            for s in present
        )
        try:
            doc = await self._http.json(sql)
        except ClickHouseServerError as exc:
            raise StoreUnavailable(f"ClickHouse count failed: {exc}") from None
        got = {str(t): int(n) for t, n in doc.get("data", [])}
        return {s.table: got.get(s.table, 0) for s in present}

    async def latest(self, kind: str, symbol: str) -> dict[str, Any] | None:
        spec = spec_for(kind)
        await self.ensure_schema()
        order = order_column(spec)
        sql = (
            f"SELECT * FROM {self._table(spec)} WHERE symbol = {quote_str(symbol)}"
            f" ORDER BY {order} DESC LIMIT 1"
        )
        try:
            doc = await self._http.json(sql)
        except ClickHouseServerError as exc:
            raise StoreUnavailable(f"ClickHouse read failed: {exc}") from None
        columns, rows = decode_rows(doc, legacy_timestamps=self.legacy_timestamps)
        return dict(zip(columns, rows[0], strict=True)) if rows else None

    async def health(self) -> StoreHealth:
        try:
            await self.ensure_schema()
            features = await self.features()
            await self._http.post("SELECT 1")
        except StoreError as exc:
            return StoreHealth(ok=False, writable=False, detail=str(exc))
        layout = "Int64 µs timestamps" if self.legacy_timestamps else "DateTime64(6) timestamps"
        return StoreHealth(
            ok=True,
            writable=not self.read_only,
            detail=f"ClickHouse {features.version_text} at {self.url} ({layout})",
        )

    async def close(self) -> None:
        await self._http.aclose()
