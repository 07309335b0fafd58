"""QuestDB's REST endpoint ``/exec``: queries, DDL, and the server's own view of its tables.

Answers have the shapes documented for QuestDB's REST API::

    200 {"query": "...", "columns": [{"name": "x", "type": "LONG"}], "timestamp": -1,
         "dataset": [[1]], "count": 1}
    200 {"ddl": "OK"}
    400 {"query": "...", "error": "table does not exist [table=x]", "position": 14}

Values come back as JSON: ``TIMESTAMP`` as ``"2023-11-14T22:13:20.000007Z"`` (turned into
naive UTC datetimes here, like the other stores return), ``LONG``/``INT`` as numbers,
NULL as ``null``. Tables are always found by asking the server (``tables()``,
``wal_tables()``), never by looking at directories: a table's directory carries a ``~<id>``
suffix that changes whenever the table is re-created.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec
import orjson

from tickvault.core.errors import StoreError, StoreUnavailable


class QuestDBQueryError(StoreError):
    """``/exec`` refused a statement; ``position`` is QuestDB's character offset of the error."""

    def __init__(self, message: str, position: int | None) -> None:
        super().__init__(message)
        self.position = position


class WalTableStatus(msgspec.Struct, frozen=True):
    """One row of ``wal_tables()``: is the table applying its write-ahead log?

    ``lag_txns`` is ``sequencer_txn - writer_txn``: committed transactions not yet visible.
    ``buffered_txns`` is the server's own lag column (``bufferedTxnSize`` on newer servers,
    ``writerLagTxnCount`` on older ones), None when the server has neither.
    """

    table: str
    suspended: bool
    sequencer_txn: int
    writer_txn: int
    lag_txns: int
    buffered_txns: int | None = None
    error_tag: str = ""
    error_message: str = ""

    state: str = "applied"
    """What a reader sees (:func:`wal_state`); set by :meth:`QuestDBREST.wal_tables`."""


def wal_state(suspended: bool, lag_txns: int) -> str:
    """``applied``; ``applying (N txns behind)``; or, for a suspended table (QuestDB keeps
    accepting writes into its WAL and hides them until ``RESUME WAL``), ``committed, not
    applied (N txns behind)`` or ``suspended``."""
    if suspended:
        return f"committed, not applied ({lag_txns} txns behind)" if lag_txns else "suspended"
    return f"applying ({lag_txns} txns behind)" if lag_txns else "applied"


@dataclass(frozen=True)
class TableInfo:
    """What ``tables()`` says about one table (``directory`` is informational only)."""

    name: str
    designated_timestamp: str | None
    partition_by: str
    wal: bool
    dedup: bool | None
    directory: str | None


def _timestamp(value: str) -> dt.datetime:
    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed.astimezone(dt.UTC).replace(tzinfo=None)


_DECODERS: dict[str, Callable[[Any], Any]] = {
    "TIMESTAMP": _timestamp,
    "TIMESTAMP_NS": _timestamp,
    "DATE": _timestamp,
}


def decode_dataset(doc: dict[str, Any]) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Column names and typed rows of an ``/exec`` answer."""
    meta = doc.get("columns", [])
    names = [str(c["name"]) for c in meta]
    decoders = [_DECODERS.get(str(c["type"]).upper()) for c in meta]
    rows: list[tuple[Any, ...]] = []
    for raw in doc.get("dataset", []):
        rows.append(
            tuple(
                v if (f is None or v is None) else f(v) for f, v in zip(decoders, raw, strict=True)
            )
        )
    return names, rows


def by_name(names: list[str], row: tuple[Any, ...]) -> dict[str, Any]:
    return dict(zip(names, row, strict=True))


class QuestDBREST:
    """``GET /exec`` against one server; raises only :mod:`tickvault.core.errors`."""

    def __init__(self, base_url: str, *, auth: tuple[str, str] | None, timeout: float) -> None:
        self.base_url = base_url
        self._auth = auth
        self._timeout = httpx.Timeout(timeout, connect=5.0)
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _session(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._client = httpx.AsyncClient(
                base_url=self.base_url, auth=self._auth, timeout=self._timeout
            )
            self._loop = loop
        return self._client

    async def exec(self, sql: str, *, limit: int | None = None) -> dict[str, Any]:
        params = {"query": sql}
        if limit is not None:
            params["limit"] = str(limit)
        try:
            response = await self._session().get("/exec", params=params)
        except httpx.TransportError as exc:
            raise StoreUnavailable(f"QuestDB at {self.base_url} unreachable: {exc!r}") from exc
        try:
            doc = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            doc = None
        if not isinstance(doc, dict):
            text = response.text[:500]
            if response.status_code >= 500 or response.status_code == 200:
                raise StoreUnavailable(
                    f"QuestDB /exec answered HTTP {response.status_code}: {text}"
                )
            raise StoreError(f"QuestDB /exec answered HTTP {response.status_code}: {text}")
        if "error" in doc:
            position = doc.get("position")
            where = f" at position {position}" if isinstance(position, int) else ""
            message = f"QuestDB refused the statement{where}: {doc['error']}"
            if response.status_code >= 500:
                raise StoreUnavailable(message)
            raise QuestDBQueryError(message, position if isinstance(position, int) else None)
        if response.status_code != 200:
            raise StoreUnavailable(f"QuestDB /exec answered HTTP {response.status_code}")
        return doc

    async def server_health(self, url: str) -> None:
        """Raise :class:`StoreUnavailable` unless QuestDB's health endpoint answers 200."""
        try:
            response = await self._session().get(url)
        except httpx.TransportError as exc:
            raise StoreUnavailable(f"QuestDB health endpoint {url} unreachable: {exc!r}") from exc
        if response.status_code != 200:
            raise StoreUnavailable(
                f"QuestDB health endpoint {url} answered HTTP {response.status_code}:"
                f" {response.text[:200]}"
            )

    async def rows(self, sql: str, *, limit: int | None = None) -> list[dict[str, Any]]:
        names, rows = decode_dataset(await self.exec(sql, limit=limit))
        return [by_name(names, r) for r in rows]

    async def version(self) -> tuple[int, int, int]:
        """The server's version from ``build()`` ("Build Information: QuestDB 8.2.1, ...")."""
        rows = await self.rows("SELECT build()")
        text = str(next(iter(rows[0].values()))) if rows else ""
        match = re.search(r"QuestDB\s+(\d+)\.(\d+)\.(\d+)", text)
        if match is None:
            raise StoreError(f"cannot tell the QuestDB version from build(): {text!r}")
        return int(match.group(1)), int(match.group(2)), int(match.group(3))

    async def tables(self) -> dict[str, TableInfo]:
        """Every table the server knows, by name (``table_name`` on new servers, ``name``
        on old ones)."""
        out: dict[str, TableInfo] = {}
        for row in await self.rows("SELECT * FROM tables()"):
            name = row.get("table_name", row.get("name"))
            if name is None:
                continue
            out[str(name)] = TableInfo(
                name=str(name),
                designated_timestamp=row.get("designatedTimestamp"),
                partition_by=str(row.get("partitionBy", "")),
                wal=bool(row.get("walEnabled")),
                dedup=row.get("dedup"),
                directory=row.get("directoryName"),
            )
        return out

    async def wal_tables(self) -> dict[str, WalTableStatus]:
        """``wal_tables()`` per table, columns picked by name so old and new servers work."""
        out: dict[str, WalTableStatus] = {}
        for row in await self.rows("SELECT * FROM wal_tables()"):
            sequencer = int(row.get("sequencerTxn") or 0)
            writer = int(row.get("writerTxn") or 0)
            buffered = row.get("bufferedTxnSize", row.get("writerLagTxnCount"))
            out[str(row["name"])] = WalTableStatus(
                table=str(row["name"]),
                suspended=bool(row.get("suspended")),
                sequencer_txn=sequencer,
                writer_txn=writer,
                lag_txns=max(0, sequencer - writer),
                buffered_txns=None if buffered is None else int(buffered),
                error_tag=str(row.get("errorTag") or ""),
                error_message=str(row.get("errorMessage") or ""),
                state=wal_state(bool(row.get("suspended")), max(0, sequencer - writer)),
            )
        return out

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None and self._loop is asyncio.get_running_loop():
            await client.aclose()
