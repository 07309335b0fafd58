"""Time-series stores; :func:`open_store` picks one by URL scheme."""

from __future__ import annotations

from tickvault.core.errors import BackendNotAvailable, ConfigError
from tickvault.stores.base import QueryResult, Store, StoreHealth

__all__ = ["QueryResult", "Store", "StoreHealth", "open_store"]


def _missing(extra: str, exc: ImportError) -> BackendNotAvailable:
    return BackendNotAvailable(
        f"the {extra} store needs {exc.name or 'a client library'}: install tickvault[{extra}]"
    )


def open_store(url: str, *, read_only: bool = False) -> Store:
    """Return a store for ``url``; raise ConfigError for unknown or unavailable schemes."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "duckdb":
        from tickvault.stores.duckdb.store import DuckDBStore

        return DuckDBStore.from_url(url, read_only=read_only)
    if scheme == "clickhouse":
        try:
            from tickvault.stores.clickhouse.store import ClickHouseStore
        except ImportError as exc:
            raise _missing("clickhouse", exc) from None
        return ClickHouseStore.from_url(url, read_only=read_only)
    if scheme == "questdb":
        try:
            import questdb  # noqa: F401 - the ILP client, used when writing

            from tickvault.stores.questdb.store import QuestDBStore
        except ImportError as exc:
            raise _missing("questdb", exc) from None
        return QuestDBStore.from_url(url, read_only=read_only)
    raise ConfigError(
        f"unknown store URL {url!r}: expected duckdb:///PATH, clickhouse://HOST:8123/DB"
        " or questdb://HOST:9000"
    )
