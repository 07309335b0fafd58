"""Driving the async ClickHouse HTTP client from the synchronous position backend.

:class:`~tickvault.stores.clickhouse_http.ClickHouseHTTP` (the market-data store's client,
reused rather than duplicated) is async; the position book and restore are synchronous.
:class:`LoopThread` runs one private event loop in a daemon thread and waits for each
request on it, which works from plain code and from inside a running event loop alike
(``asyncio.run`` would refuse the latter).
"""

from __future__ import annotations

import asyncio
import threading
import urllib.parse
from collections.abc import Coroutine
from typing import Any, Final, TypeVar

from tickvault.errors import ConfigError
from tickvault.stores.clickhouse_http import ClickHouseHTTP

T = TypeVar("T")

QUOTE_DENORMALS: Final = {"output_format_json_quote_denormals": "1"}
"""JSON answers carry NaN and infinities as text instead of null, so restore can tell a
non-finite value from a missing one."""
READ_PARAMS: Final = {"readonly": "2", **QUOTE_DENORMALS}
"""Reads of a state table: the server itself refuses anything but reading."""


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
