"""Replacing stored rows on ClickHouse (``backfill polygon --refresh``).

The tables are ``ReplacingMergeTree`` without a version column, and :meth:`write` inserts
only keys that are not stored yet, so the first stored version is the one every read sees
(``FINAL`` folds the copies two racing writers may leave). Inserting a new version beside
the old one would leave which copy survives a merge to chance, so a replacement is:

1. ``ALTER TABLE … DELETE WHERE (key) IN (…)`` — a mutation (every server from 18.x on),
   in slices of :data:`KEYS_PER_MUTATION` literal keys;
2. wait until the server reports no unfinished mutation on the table
   (``system.mutations.is_done``; 18.16 has no ``mutations_sync``);
3. the usual insert of the new rows, which are then new keys (with a deduplication token
   of its own: see :func:`replace_rows`).

Idempotent: a rerun deletes the rows it inserted and inserts them again. The caller keeps
the previous versions before calling (see :mod:`tickvault.sources.polygon.refresh`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from typing import TYPE_CHECKING, Protocol

import pyarrow as pa

from tickvault.core.backoff import Backoff
from tickvault.core.errors import StoreUnavailable
from tickvault.stores.clickhouse.http import ClickHouseHTTP, ClickHouseServerError
from tickvault.stores.clickhouse.schema import quote_str

if TYPE_CHECKING:
    from tickvault.core.records import KindSpec

KEYS_PER_MUTATION = 2_000
MUTATION_TIMEOUT_S = 300.0
_EPOCH = dt.datetime(1970, 1, 1)
_MUTATION_POLL = Backoff(initial=0.01, cap=0.5, jitter="none")
"""Polls of the server's own progress: nothing to spread out, so no jitter."""


class Insert(Protocol):
    """The store's insert (``ClickHouseStore.write``), as :func:`replace_rows` calls it."""

    async def __call__(self, kind: str, table: pa.Table, *, token_salt: bytes = b"") -> int: ...


def _literal(value: object, ch_type: str) -> str:
    if isinstance(value, str):
        return quote_str(value)
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        if ch_type == "Int64":  # microseconds since the epoch (servers before 20.1)
            return str((value - _EPOCH) // dt.timedelta(microseconds=1))
        return quote_str(f"{value:%Y-%m-%d %H:%M:%S.%f}")
    if isinstance(value, bool):
        return "1" if value else "0"
    return repr(value)


def delete_sql(
    table: str, spec: KindSpec, types: dict[str, str], rows: list[dict[str, object]]
) -> str:
    """The mutation deleting the stored rows with the keys of ``rows``."""
    keys = ", ".join(spec.key)
    tuples = ", ".join(
        "(" + ", ".join(_literal(row[k], types[k]) for k in spec.key) + ")" for row in rows
    )
    return f"ALTER TABLE {table} DELETE WHERE ({keys}) IN ({tuples})"


async def replace_rows(
    http: ClickHouseHTTP,
    database: str,
    insert: Insert,
    spec: KindSpec,
    table_name: str,
    types: dict[str, str],
    table: pa.Table,
) -> int:
    """Delete the stored rows with ``table``'s keys, wait for the mutation, then
    ``insert`` ``table`` (``http``/``database``: the store's connection and database)."""
    rows = table.select(list(spec.key)).to_pylist()
    try:
        for start in range(0, len(rows), KEYS_PER_MUTATION):
            await http.post(
                delete_sql(table_name, spec, types, rows[start : start + KEYS_PER_MUTATION])
            )
        await _wait_for_mutations(http, database, spec.table)
    except ClickHouseServerError as exc:
        raise StoreUnavailable(f"ClickHouse replace in {spec.table} failed: {exc}") from None
    # The tables keep a deduplication window (``non_replicated_deduplication_window``): a
    # block equal to one inserted before (the same refresh run twice) would be dropped as
    # a retry after its rows were deleted. A token salted once per replacement still
    # collapses the HTTP client's own retries of this insert.
    return await insert(spec.kind, table, token_salt=uuid.uuid4().bytes)


async def _wait_for_mutations(http: ClickHouseHTTP, database: str, table: str) -> None:
    sql = (
        "SELECT count() FROM system.mutations WHERE is_done = 0"
        f" AND database = {quote_str(database)} AND table = {quote_str(table)}"
    )
    deadline = time.monotonic() + MUTATION_TIMEOUT_S
    poll = _MUTATION_POLL.restarted()
    while int((await http.post(sql)).decode().strip() or 0):
        if time.monotonic() > deadline:
            raise StoreUnavailable(
                f"ClickHouse mutation on {table} not done after {MUTATION_TIMEOUT_S:.0f} s;"
                " the previous versions are kept, rerun the refresh once the server is idle"
            )
        await asyncio.sleep(poll.next_delay())
