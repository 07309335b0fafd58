"""QuestDB's query surface on a real server: user SQL as the read-only PG-wire user, plans
that read host files refused, what that user could still do refused by the store, and the
time limit. The hostile-statement suite (``test_query_security.py``) covers the doors."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tickvault.core.errors import QueryRejected, QueryTimeout, StoreError
from tickvault.stores.questdb.store import QuestDBStore

from .conftest import questdb_fresh_tables
from .questdb_server import READER_PASSWORD, READER_USER, QuestDBServer
from .test_store_contract import table_of, trade


@pytest.fixture
async def store(questdb_server: QuestDBServer) -> AsyncIterator[QuestDBStore]:
    await asyncio.to_thread(questdb_fresh_tables, questdb_server)
    s = QuestDBStore.from_url(questdb_server.url)
    yield s
    await s.close()


@pytest.fixture
def canary(questdb_server: QuestDBServer) -> Iterator[Path]:
    """A secret file beside the server's data, and the same secret as a parquet file in the
    server's copy root (``<root>/import``), the one place ``read_parquet`` may read."""
    path = questdb_server.root / "canary-secret.txt"
    path.write_text("CANARY-7f3a\n")
    parquet = questdb_server.root / "import" / "canary.parquet"
    parquet.parent.mkdir(exist_ok=True)
    pq.write_table(pa.table({"secret": ["CANARY-7f3a"]}), parquet)
    yield path
    path.unlink()
    parquet.unlink()


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM files('{dir}')",
        "SELECT path FROM glob('{dir}/*') WHERE path LIKE '%canary%'",
        "WITH f AS (SELECT * FROM files('{dir}')) SELECT * FROM f",
        "SELECT * FROM trades t JOIN (SELECT * FROM glob('{dir}/*')) g ON t.symbol = g.path",
        "SELECT * FROM read_parquet('{file}')",
        "SELECT * FROM parquet_scan('{file}')",
        "SELECT * FROM read_parquet('canary.parquet')",
        "SELECT secret FROM parquet_scan('canary.parquet') WHERE secret LIKE 'C%'",
    ],
)
async def test_queries_that_read_host_files_are_refused(
    store: QuestDBStore, canary: Path, sql: str
) -> None:
    await store.ensure_schema()
    statement = sql.format(dir=canary.parent, file=canary)
    with pytest.raises(StoreError) as refused:
        await store.query(statement)
    assert "CANARY" not in str(refused.value)
    if "files(" in sql or "glob(" in sql or "canary.parquet" in sql:
        assert isinstance(refused.value, QueryRejected)
        assert "file system" in str(refused.value)


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO trades VALUES ('x', 'y', 1, 1.0, 1.0, true, now(), now())",
        "ALTER TABLE trades RESUME WAL",
        "ALTER TABLE trades ADD COLUMN x INT",
        "DROP TABLE trades",
    ],
)
async def test_the_query_user_cannot_write_even_past_the_statement_check(
    store: QuestDBStore, questdb_server: QuestDBServer, sql: str
) -> None:
    """The server itself refuses the read-only user: sent as-is over PG wire."""
    await store.ensure_schema()
    conn = await asyncpg.connect(
        host="127.0.0.1",
        port=questdb_server.pg_port,
        user=READER_USER,
        password=READER_PASSWORD,
        database="qdb",
    )
    try:
        with pytest.raises(asyncpg.PostgresError, match="Write permission denied"):
            await conn.execute(sql)
    finally:
        await conn.close()
    assert "trades" in await store.tables()
    assert not (await store.wal_status())["trades"].suspended


@pytest.mark.parametrize(
    "sql",
    [
        # QuestDB 9.3's read-only user may export (COPY … TO) and, in dev mode, SUSPEND WAL:
        # the store refuses both before the server sees them.
        "COPY trades TO 'tv_export' WITH FORMAT PARQUET",
        "ALTER TABLE trades SUSPEND WAL",
        "EXPLAIN SELECT * FROM files('/')",
    ],
)
async def test_what_the_read_only_user_could_still_do_is_refused_by_the_store(
    store: QuestDBStore, questdb_server: QuestDBServer, sql: str
) -> None:
    await store.ensure_schema()
    with pytest.raises(StoreError):
        await store.query(sql)
    assert not _names_under(questdb_server.root, "tv_export")
    assert not (await store.wal_status())["trades"].suspended


def _names_under(root: Path, prefix: str) -> list[str]:
    """Files and directories under ``root`` whose name starts with ``prefix``. The server
    renames table directories while it runs (``trades~111``): a directory that vanishes
    during the walk is skipped instead of failing the scan (``Path.rglob`` raises)."""
    return [
        name
        for _, dirs, files in os.walk(root)  # os.walk ignores such errors by default
        for name in (*dirs, *files)
        if name.startswith(prefix)
    ]


async def test_ordinary_queries_mentioning_files_in_literals_still_run(
    store: QuestDBStore,
) -> None:
    await store.write("trade", table_of("trade", [trade(1)]))
    result = await store.query(
        "SELECT 'parquet' AS a, 'glob' AS b, symbol FROM trades WHERE symbol != 'File Scan'"
    )
    assert result.rows == [("parquet", "glob", "BTCUSDT")]


async def test_a_query_running_too_long_is_stopped_and_the_next_one_runs(
    store: QuestDBStore, questdb_server: QuestDBServer
) -> None:
    await store.write("trade", table_of("trade", [trade(1)]))
    slow = QuestDBStore.from_url(questdb_server.url + "&query_timeout_s=1.5")
    try:
        started = time.monotonic()
        with pytest.raises(QueryTimeout, match=r"time limit of 1.5 s"):
            await slow.query("SELECT count() FROM long_sequence(1000000000000) WHERE x % 7 = 3")
        assert time.monotonic() - started < 15
        assert (await slow.query("SELECT count() FROM trades")).rows == [(1,)]
    finally:
        await slow.close()
