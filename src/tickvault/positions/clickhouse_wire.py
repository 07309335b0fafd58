"""Driving the async ClickHouse HTTP client from the synchronous position backend.

:class:`~tickvault.stores.clickhouse.http.ClickHouseHTTP` (the market-data store's client,
reused rather than duplicated) is async; the position book and restore are synchronous.
:class:`LoopThread` runs one private event loop in a daemon thread and waits for each
request on it, which works from plain code and from inside a running event loop alike
(``asyncio.run`` would refuse the latter).
"""

from __future__ import annotations

import asyncio
import threading
import urllib.parse
from collections.abc import Coroutine, Sequence
from typing import Any, Final, TypeVar

import orjson

from tickvault.core.errors import ConfigError, StoreError
from tickvault.positions.clickhouse_sql import decode, insert_sql
from tickvault.stores.clickhouse.http import (
    ClickHouseHTTP,
    ClickHouseServerError,
    ServerFeatures,
)
from tickvault.stores.clickhouse.schema import quote_ident

T = TypeVar("T")

QUOTE_DENORMALS: Final = {"output_format_json_quote_denormals": "1"}
"""JSON answers carry NaN and infinities as text instead of null, so restore can tell a
non-finite value from a missing one."""
READ_PARAMS: Final = {"readonly": "2", **QUOTE_DENORMALS}
"""Reads of a state table: the server itself refuses anything but reading."""
READ_ONLY_CODES: Final = frozenset({164, 497})  # READONLY, ACCESS_DENIED


class LoopThread:
    """An event loop in a daemon thread; :meth:`run` waits for a coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="tickvault-positions-clickhouse", daemon=True
        )
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


async def post(http: Any, sql: str, params: dict[str, str] | None, body: bytes | None) -> bytes:
    result: bytes = await http.post(sql, params=params, body=body)
    return result


async def json_doc(http: Any, sql: str, params: dict[str, str]) -> dict[str, Any]:
    doc: dict[str, Any] = await http.json(sql, params)
    return doc


class ClickHouseConnection:
    """Synchronous requests to one database, for the position backend.

    ``http`` is anything with :class:`ClickHouseHTTP`'s ``post``, ``json`` and ``aclose``
    coroutines. Every method raises only :mod:`tickvault.core.errors` classes.
    """

    def __init__(self, http: Any, database: str, source_name: str, read_only: bool) -> None:
        self._http = http
        self.database = database
        self.source_name = source_name
        self.read_only = read_only
        self._plain_reads = False
        self._loop = LoopThread()
        self.features = ServerFeatures.for_version("0")
        """Replaced by the server's once :meth:`connect` asked for its version."""

    def connect(self) -> None:
        """Ask the server's version (the first request: it fails when unreachable)."""
        version = self._post("SELECT version()").decode().strip()
        self.features = ServerFeatures.for_version(version)

    def close(self) -> None:
        if self._loop.loop.is_closed():
            return
        try:
            self._loop.run(self._http.aclose())
        finally:
            self._loop.stop()

    def _post(
        self, sql: str, params: dict[str, str] | None = None, body: bytes | None = None
    ) -> bytes:
        return self._loop.run(post(self._http, sql, params, body))

    def _rows(self, sql: str, *, read_table: bool = True) -> list[dict[str, Any]]:
        """Rows of a read; ``read_table`` (reads of the state table, perhaps a user's)
        asks the server to refuse anything but reading (``readonly=2``).

        A user the server keeps at ``readonly=1`` may not send settings at all: then reads
        go without them (the server is read-only for it anyway), and a NaN arrives as
        null, which restore reports as a missing value (the row is quarantined either way).
        """
        if not self._plain_reads:
            params = dict(READ_PARAMS) if read_table else dict(QUOTE_DENORMALS)
            try:
                return decode(self._loop.run(json_doc(self._http, sql, params)))
            except ClickHouseServerError as exc:
                if exc.code not in READ_ONLY_CODES:
                    raise
                self._plain_reads = True
        raw = self._post(f"{sql} FORMAT JSONCompact")
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise StoreError(
                f"ClickHouse answered with something that is not JSON: {exc}"
            ) from None
        return decode(doc)

    def _insert(self, table: str, rows: Sequence[dict[str, Any]]) -> None:
        if self.read_only:
            raise StoreError(f"{self.source_name} is open read-only; not writing")
        if not rows:
            return
        body = b"".join(orjson.dumps(r) + b"\n" for r in rows)
        params = {"async_insert": "0"} if self.features.async_insert else {}
        qualified = f"{quote_ident(self.database)}.{quote_ident(table)}"
        self._post(insert_sql(qualified, rows[0].keys()), params=params, body=body)

    def _own(self, table: str) -> str:
        return f"{quote_ident(self.database)}.{quote_ident(table)}"


def http_from_url(url: str) -> tuple[ClickHouseHTTP, str]:
    """The client and database of ``clickhouse://[user[:password]@]host[:8123]/db
    [?secure=1&timeout=30]``; credentials go to headers, never into messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "clickhouse" or not parts.hostname:
        raise ConfigError("expected clickhouse://host:8123/database")
    options = dict(urllib.parse.parse_qsl(parts.query))
    try:
        port = parts.port or 8123
        timeout = float(options.get("timeout", "30"))
    except ValueError as exc:
        raise ConfigError(f"bad ClickHouse URL: {exc}") from None
    scheme = "https" if options.get("secure", "").lower() in ("1", "true", "yes") else "http"
    http = ClickHouseHTTP(
        f"{scheme}://{parts.hostname}:{port}",
        user=urllib.parse.unquote(parts.username) if parts.username else None,
        password=urllib.parse.unquote(parts.password) if parts.password else None,
        timeout=timeout,
    )
    return http, parts.path.strip("/") or "default"
