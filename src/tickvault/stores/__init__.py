"""Time-series stores; :func:`open_store` picks one by URL scheme."""

from __future__ import annotations

from tickvault.errors import BackendNotAvailable, ConfigError
from tickvault.stores.base import QueryResult, Store, StoreHealth

__all__ = ["QueryResult", "Store", "StoreHealth", "open_store"]

_PLANNED = {"clickhouse": "ClickHouse", "questdb": "QuestDB"}


def open_store(url: str, *, read_only: bool = False) -> Store:
    """Return a store for ``url``; raise ConfigError for unknown or unavailable schemes."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "duckdb":
        from tickvault.stores.duckdb import DuckDBStore

        return DuckDBStore.from_url(url, read_only=read_only)
    if scheme in _PLANNED:
        raise BackendNotAvailable(
            f"the {_PLANNED[scheme]} store ({scheme}://) is not available in this version;"
            " use duckdb:///PATH"
        )
    raise ConfigError(f"unknown store URL {url!r}: expected duckdb:///PATH")
