"""Opening position state by URL (:func:`open_backend`) and naming it (:func:`state_name`).

Kept apart from :mod:`tickvault.positions.backend` (the interface) because it imports the
engines, which import the interface.
"""

from __future__ import annotations

from pathlib import Path

from tickvault.positions.backend import PositionBackend


def state_name(state: str | Path, table: str | None = None) -> str:
    """How restore names a state it could not open: ``clickhouse:<db>.<table>`` (never the
    URL's credentials) or ``state-store``."""
    text = str(state)
    if not text.startswith("clickhouse://"):
        return "state-store"
    from urllib.parse import urlsplit

    from tickvault.positions.clickhouse_sql import STATE_TABLE

    database = urlsplit(text).path.strip("/") or "default"
    return f"clickhouse:{database}.{table or STATE_TABLE}"


def open_backend(
    state: str | Path,
    *,
    read_only: bool = False,
    table: str | None = None,
    columns: dict[str, str] | None = None,
) -> PositionBackend:
    """Open position state by URL: ``clickhouse://[user[:password]@]host[:8123]/db``,
    ``sqlite:///path/state.sqlite3``, or a plain path to a SQLite file.

    ``table`` and ``columns`` (tickvault column -> the table's column) select a ClickHouse
    table tickvault did not create; they are refused for SQLite.
    """
    text = str(state)
    if text.startswith("clickhouse://"):
        from tickvault.positions.clickhouse_store import ClickHousePositionStore

        return ClickHousePositionStore.from_url(
            text, read_only=read_only, table=table, columns=columns
        )
    from tickvault.core.errors import ConfigError
    from tickvault.positions.store import PositionStore

    if table is not None or columns:
        raise ConfigError("--table and --columns apply to a clickhouse:// state only")
    if "://" in text and not text.startswith("sqlite://"):
        raise ConfigError(
            f"unknown position state {text!r}: expected clickhouse://host:8123/db,"
            " sqlite:///path or a file path"
        )
    path = text.removeprefix("sqlite://") if text.startswith("sqlite://") else text
    return PositionStore(path, read_only=read_only)
