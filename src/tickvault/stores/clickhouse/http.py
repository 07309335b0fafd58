"""A small async client for ClickHouse's HTTP interface, and what a server version can do.

Why not ``clickhouse-connect``: on connect it reads ``system.settings`` including a
``readonly`` column that ClickHouse 18.16 (the ``clickhouse-server`` Debian ships, and the
one these machines run) does not have, so it cannot talk to that server at all. tickvault
needs four requests (DDL, a Native insert, a key lookup with an external table, a JSON
query), which plain ``httpx`` covers for every server version from 18.16 on.

Errors are translated into :mod:`tickvault.core.errors`: connection problems and server-side
resource trouble are :class:`StoreUnavailable` (retry later); a server refusing the *data* of
an insert (parse/type/constraint errors) is :class:`BatchRejected` with the server's text.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from tickvault.core.errors import (
    BatchRejected,
    QueryLimitExceeded,
    QueryRejected,
    QueryTimeout,
    StoreError,
    StoreUnavailable,
)

# ClickHouse error codes (src/Common/ErrorCodes.cpp) that mean "this data is bad".
DATA_ERROR_CODES = frozenset(
    {
        6,  # CANNOT_PARSE_TEXT
        26,  # CANNOT_PARSE_QUOTED_STRING
        27,  # CANNOT_PARSE_INPUT_ASSERTION_FAILED
        38,  # CANNOT_PARSE_DATE
        41,  # CANNOT_PARSE_DATETIME
        53,  # TYPE_MISMATCH
        69,  # ARGUMENT_OUT_OF_BOUND
        70,  # CANNOT_CONVERT_TYPE
        72,  # CANNOT_PARSE_NUMBER
        117,  # INCORRECT_DATA
        321,  # VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
        395,  # FUNCTION_THROW_IF_VALUE_IS_NON_ZERO (tickvault's guard column on old servers)
        469,  # VIOLATED_CONSTRAINT (tickvault's CHECK constraint on newer servers)
    }
)
# Codes that mean "the query is not allowed" when running a user's query.
QUERY_REFUSED_CODES = frozenset({164, 62})  # READONLY, SYNTAX_ERROR (incl. multi-statements)
TIMEOUT_EXCEEDED = 159
MEMORY_LIMIT_EXCEEDED = 241
_CODE = re.compile(r"Code:\s*(\d+)")
_WIDE_INT = re.compile(r"^(Nullable\()?U?Int(64|128|256)\)?$")
# URL parameters of the HTTP interface that are not settings (a read-only profile allows them).
_REQUEST_PARAMS = frozenset({"database", "query_id", "session_id", "session_timeout"})


@dataclass(frozen=True)
class ServerFeatures:
    """What tickvault uses from a ClickHouse server, decided by its version.

    * ``datetime64``: ``DateTime64(6, 'UTC')`` timestamps (20.1+); older servers store
      timestamps as ``Int64`` microseconds since the epoch.
    * ``constraints``: ``CONSTRAINT ... CHECK`` (19.14+); older servers get a guard column.
    * ``dedup_token``: ``insert_deduplication_token`` plus the MergeTree setting
      ``non_replicated_deduplication_window`` (22.2+).
    * ``async_insert``: the ``async_insert`` setting exists (21.11+); tickvault sends
      ``async_insert=0`` so that an acknowledged insert is a committed one.
    """

    version: tuple[int, int, int]
    datetime64: bool
    constraints: bool
    dedup_token: bool
    async_insert: bool

    @classmethod
    def for_version(cls, text: str) -> ServerFeatures:
        parts = [int(p) for p in re.findall(r"\d+", text)[:3]]
        while len(parts) < 3:
            parts.append(0)
        v = (parts[0], parts[1], parts[2])
        return cls(
            version=v,
            datetime64=v >= (20, 1, 0),
            constraints=v >= (19, 14, 0),
            dedup_token=v >= (22, 2, 0),
            async_insert=v >= (21, 11, 0),
        )

    @property
    def version_text(self) -> str:
        return ".".join(str(p) for p in self.version)


class ClickHouseServerError(StoreError):
    """An error answer from the server; ``code`` is ClickHouse's numeric error code."""

    def __init__(self, message: str, code: int | None) -> None:
        super().__init__(message)
        self.code = code


def server_error(response: httpx.Response) -> ClickHouseServerError:
    text = response.text.strip()
    header = response.headers.get("X-ClickHouse-Exception-Code")
    match = _CODE.search(text)
    code = int(header) if header and header.isdigit() else int(match.group(1)) if match else None
    return ClickHouseServerError(text or f"HTTP {response.status_code}", code)


class ClickHouseHTTP:
    """POSTs statements to one server; every method raises only :mod:`tickvault.core.errors`."""

    def __init__(
        self, base_url: str, *, user: str | None, password: str | None, timeout: float
    ) -> None:
        self.base_url = base_url
        self._headers: dict[str, str] = {}
        if user:
            self._headers["X-ClickHouse-User"] = user
        if password:
            self._headers["X-ClickHouse-Key"] = password
        self._timeout = httpx.Timeout(timeout, connect=5.0)
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.profile_settings_only = False
        """True for a user whose profile is read-only: the server refuses any setting in
        the request, so :meth:`json` sends none and names its format in the statement."""

    def _session(self) -> httpx.AsyncClient:
        """The connection pool of the running event loop (a new loop gets a new pool)."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._client = httpx.AsyncClient(
                base_url=self.base_url, headers=self._headers, timeout=self._timeout
            )
            self._loop = loop
        return self._client

    async def post(
        self,
        sql: str,
        *,
        params: dict[str, str] | None = None,
        body: bytes | None = None,
        files: dict[str, tuple[str, bytes]] | None = None,
    ) -> bytes:
        """Run ``sql``; with ``body`` the statement goes in the URL and ``body`` is its data."""
        query = dict(params or {})
        if body is not None or files is not None:
            query["query"] = sql
            content = body
        else:
            content = sql.encode()
        try:
            client = self._session()
            if files is not None:
                response = await client.post("/", params=query, files=files)
            else:
                response = await client.post("/", params=query, content=content)
        except httpx.TransportError as exc:
            raise StoreUnavailable(f"ClickHouse at {self.base_url} unreachable: {exc!r}") from exc
        if response.status_code != 200:
            raise server_error(response)
        return response.content

    async def json(self, sql: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        """Run a SELECT and return ClickHouse's ``JSONCompact`` document."""
        if self.profile_settings_only:
            query = {k: v for k, v in (params or {}).items() if k in _REQUEST_PARAMS}
            raw = await self.post(f"{sql}\nFORMAT JSONCompact", params=query)
        else:
            query = {
                "default_format": "JSONCompact",
                "output_format_json_quote_64bit_integers": "0",
            }
            query.update(params or {})
            raw = await self.post(sql, params=query)
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise StoreError(
                f"ClickHouse answered with something that is not JSON: {exc}"
            ) from None
        if not isinstance(doc, dict):
            raise StoreError("ClickHouse answered with an unexpected JSON document")
        if self.profile_settings_only:
            _unquote_64bit(doc)
        return doc

    async def aclose(self) -> None:
        """Close the pool; one opened in an event loop that has ended closed with it."""
        client, self._client = self._client, None
        if client is not None and self._loop is asyncio.get_running_loop():
            await client.aclose()


def _unquote_64bit(doc: dict[str, Any]) -> None:
    """Turn the 64-bit integers ClickHouse quotes by default back into numbers."""
    wide = [i for i, m in enumerate(doc.get("meta", [])) if _WIDE_INT.match(str(m.get("type", "")))]
    if not wide:
        return
    for row in doc.get("data", []):
        for i in wide:
            if isinstance(row[i], str):
                row[i] = int(row[i])


def for_insert(exc: ClickHouseServerError, table: str) -> StoreError:
    """Classify an error answer to an INSERT."""
    if exc.code in DATA_ERROR_CODES:
        hint = ""
        if exc.code == 395:
            hint = (
                " (the table's value guard refused a row: a non-finite or non-positive price,"
                " a negative size, an empty name or inconsistent levels)"
            )
        return BatchRejected(f"ClickHouse refused the batch for {table}{hint}: {exc}")
    return StoreUnavailable(f"ClickHouse could not insert into {table}: {exc}")


def for_query(exc: ClickHouseServerError, timeout_s: float | None = None) -> StoreError:
    """Classify an error answer to a user's query (one line of the server's text)."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else "no detail"
    if exc.code == TIMEOUT_EXCEEDED:
        limit = f" after {timeout_s:g} s" if timeout_s is not None else ""
        return QueryTimeout(f"query stopped{limit} (the store's query time limit): {line}")
    if exc.code == MEMORY_LIMIT_EXCEEDED:
        return QueryLimitExceeded(f"query stopped at the query memory limit: {line}")
    if exc.code in QUERY_REFUSED_CODES:
        return QueryRejected(f"ClickHouse refused the query: {line}")
    return StoreError(f"query failed: {line}")
