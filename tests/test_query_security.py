"""Hostile statements against the query surface, on every store and through every door.

Doors: ``tickvault query`` opening the store itself (``offline``), ``tickvault query`` asking
a running ``tickvault run`` over its control socket (``owner``), and ``GET /query`` of that
same process (``http``). One owner runs per store for the whole module.

Before anything runs, a canary file holding a random secret is planted next to the data, and
two secrets are put in the environment (the HTTP bearer token and an unrelated variable, as
a Telegram token would be). Every hostile statement must then be refused (or, for the few
marked harmless, answer without effect); no answer, error or log line may contain any of the
secrets; row counts, a checksum of ``trades``, the store's settings and the file tree must be
unchanged afterwards.

Adding a store (QuestDB): write a module-scoped fixture that seeds the store with
:func:`seed_rows`, starts an owner with :func:`start_owner` and returns a :class:`Target`,
then add one line to ``STORE_TARGETS`` naming it. Statements in the store's own dialect go
into ``HOSTILE`` (every statement runs on every store: another dialect's statement must be
refused too), the store's catalog queries into ``ORDINARY``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest
from typer.testing import CliRunner

from tickvault.cli.root import app
from tickvault.core.errors import StoreError
from tickvault.service import control
from tickvault.stores import open_store
from tickvault.stores.clickhouse.http import ClickHouseServerError
from tickvault.stores.clickhouse.store import ClickHouseStore
from tickvault.stores.duckdb.query import lock_down

from .cli_helpers import cli_env
from .conftest import questdb_fresh_tables
from .polling import eventually_sync
from .questdb_server import QuestDBServer
from .servers import ClickHouseServer
from .test_store_contract import table_of, trade

TRADES = 600
QUERY_OPTIONS = "query_timeout_s=1.5&query_memory=128MB"


@dataclass(frozen=True)
class Canary:
    dir: Path
    file: Path
    out: Path  # COPY/EXPORT targets: must stay empty
    file_secret: str
    token: str  # the HTTP bearer token, in the environment of every process
    env_secret: str  # another secret in the environment

    def secrets(self) -> tuple[str, ...]:
        return (self.file_secret, self.token, self.env_secret)


@dataclass
class Target:
    """A seeded store with a running owner, and a data dir where no owner runs."""

    name: str
    owner_dir: Path
    offline_dir: Path
    store_url: str
    http_url: str
    log: Path
    proc: subprocess.Popen[bytes]
    state_sql: list[str]  # queries whose answers must never change
    baseline: list[Any] = field(default_factory=list)
    client: httpx.Client | None = None  # one pool for all requests (a client is costly)


@pytest.fixture(scope="module")
def canary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Canary]:
    root = tmp_path_factory.mktemp("canary")
    c = Canary(
        dir=root,
        file=root / "canary.txt",
        out=root / "out",
        file_secret=f"CANARY-{secrets.token_hex(16)}",
        token=f"tok-{secrets.token_hex(16)}",
        env_secret=f"ENV-{secrets.token_hex(16)}",
    )
    c.file.write_text(f"{c.file_secret}\n")
    c.out.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TICKVAULT_HTTP_TOKEN", c.token)
        mp.setenv("TV_TELEGRAM_TOKEN", c.env_secret)
        yield c


def seed_rows(url: str) -> None:
    """Write ``TRADES`` trades over two symbols through the store's own writer."""

    async def write() -> None:
        store = open_store(url)
        try:
            await store.ensure_schema()
            rows = [trade(i, "BTCUSDT" if i % 2 else "ETHUSDT") for i in range(TRADES)]
            assert await store.write("trade", table_of("trade", list(rows))) == TRADES
        finally:
            await store.close()

    asyncio.run(write())


def start_owner(data_dir: Path, store_url: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``tickvault run`` (no sources: only the writer) serving HTTP; returns it and its URL."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tickvault",
                "run",
                "--data-dir",
                str(data_dir),
                "--store",
                store_url,
                "--http-listen",
                "127.0.0.1:0",
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=cli_env(),
        )
    http: dict[str, str] = {}

    def answering() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            status = control.request(data_dir, {"op": "status"}, timeout=10)
        except StoreError:
            return False
        if status and status.get("http"):
            http.update(status["http"])
            return True
        return False

    eventually_sync(answering, timeout=90, what="tickvault run answering")
    return proc, http["url"]


def stop_owner(target: Target) -> None:
    target.proc.send_signal(signal.SIGTERM)
    target.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def duckdb_target(canary: Canary, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    root = tmp_path_factory.mktemp("duckdb-target")
    owner_dir, offline_dir = root / "owner", root / "offline"
    for d in (owner_dir, offline_dir):
        d.mkdir()
        seed_rows(f"duckdb:///{d / 'ticks.duckdb'}")
    url = f"duckdb:///{owner_dir / 'ticks.duckdb'}?{QUERY_OPTIONS}"
    proc, http_url = start_owner(owner_dir, url, root / "owner.log")
    target = Target(
        name="duckdb",
        owner_dir=owner_dir,
        offline_dir=offline_dir,
        store_url=f"duckdb:///{offline_dir / 'ticks.duckdb'}?{QUERY_OPTIONS}",
        http_url=http_url,
        log=root / "owner.log",
        proc=proc,
        state_sql=[
            "SELECT (SELECT count(*) FROM trades) AS n, (SELECT sum(price) FROM trades) AS s,"
            " (SELECT min(exchange) FROM trades) AS e,"
            " (SELECT string_agg(table_name, ',' ORDER BY table_name) FROM duckdb_tables()) AS t,"
            " (SELECT string_agg(name || '=' || value, ',' ORDER BY name) FROM duckdb_settings()"
            "  WHERE name IN ('enable_external_access', 'lock_configuration', 'memory_limit',"
            "  'autoload_known_extensions', 'autoinstall_known_extensions')) AS settings"
        ],
    )
    yield target
    stop_owner(target)


@pytest.fixture(scope="module")
def clickhouse_target(
    canary: Canary, clickhouse_server: ClickHouseServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    root = tmp_path_factory.mktemp("clickhouse-target")
    url = f"{clickhouse_server.url('tv_hostile')}?{QUERY_OPTIONS}"
    seed_rows(url)
    (root / "offline").mkdir()
    proc, http_url = start_owner(root / "owner", url, root / "owner.log")
    target = Target(
        name="clickhouse",
        owner_dir=root / "owner",
        offline_dir=root / "offline",
        store_url=url,
        http_url=http_url,
        log=root / "owner.log",
        proc=proc,
        state_sql=[
            "SELECT (SELECT count() FROM trades) AS n, (SELECT sum(price) FROM trades) AS s,"
            " (SELECT min(exchange) FROM trades) AS e,"
            " (SELECT groupArray(name) FROM (SELECT name FROM system.tables"
            "  WHERE database = currentDatabase() ORDER BY name)) AS t,"
            " (SELECT groupArray(name) FROM (SELECT name FROM system.databases ORDER BY name))"
            " AS d"
        ],
    )
    yield target
    stop_owner(target)


@pytest.fixture(scope="module")
def questdb_target(
    canary: Canary, questdb_server: QuestDBServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    """The session's real QuestDB: user SQL goes through its read-only PG-wire user."""
    root = tmp_path_factory.mktemp("questdb-target")
    questdb_fresh_tables(questdb_server)
    url = f"{questdb_server.url}&{QUERY_OPTIONS}"
    seed_rows(url)
    (root / "offline").mkdir()
    proc, http_url = start_owner(root / "owner", url, root / "owner.log")
    target = Target(
        name="questdb",
        owner_dir=root / "owner",
        offline_dir=root / "offline",
        store_url=url,
        http_url=http_url,
        log=root / "owner.log",
        proc=proc,
        state_sql=[
            "SELECT count() AS n, sum(price) AS s, count_distinct(exchange) AS e FROM trades",
            "SELECT table_name FROM tables() ORDER BY table_name",
            "SELECT name, suspended, writerTxn FROM wal_tables() ORDER BY name",
        ],
    )
    yield target
    stop_owner(target)


# The hook for more stores: store name -> the module fixture that returns its Target.
STORE_TARGETS = {
    "duckdb": "duckdb_target",
    "clickhouse": "clickhouse_target",
    "questdb": "questdb_target",
}
DOORS = ["offline", "owner", "http"]


@pytest.fixture(scope="module")
def http_client(canary: Canary) -> Iterator[httpx.Client]:
    with httpx.Client(headers={"Authorization": f"Bearer {canary.token}"}, timeout=60) as c:
        yield c


@pytest.fixture(scope="module", params=list(STORE_TARGETS))
def target(request: pytest.FixtureRequest, canary: Canary, http_client: httpx.Client) -> Target:
    t: Target = request.getfixturevalue(STORE_TARGETS[request.param])
    t.client = http_client
    if not t.baseline:
        t.baseline = [ask("http", t, canary, sql).rows for sql in t.state_sql]
    return t


@dataclass
class Answer:
    ok: bool
    text: str  # everything the caller saw: body, stdout, stderr
    error: str
    rows: list[Any]


def ask(door: str, target: Target, canary: Canary, sql: str) -> Answer:
    if door == "http":
        assert target.client is not None
        r = target.client.get(f"{target.http_url}/query", params={"sql": sql, "limit": 50})
        body = r.json()
        ok = r.status_code == 200
        return Answer(ok, r.text, "" if ok else body["error"], body.get("rows", []))
    args = ["query", sql, "--json", "--limit", "50"]
    if door == "owner":
        args += ["--data-dir", str(target.owner_dir)]
    else:
        args += ["--data-dir", str(target.offline_dir), "--store", target.store_url]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "400"})
    text = result.stdout + result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{door} door crashed: {result.exception!r}\n{text}")
    ok = result.exit_code == 0
    rows = [list(r.values()) for r in json.loads(result.stdout)] if ok else []
    return Answer(ok, text, "" if ok else result.stderr, rows)


def assert_no_secret(canary: Canary, text: str, where: str) -> None:
    flat = "".join(text.split())  # the CLI may wrap a long line
    for secret in canary.secrets():
        assert secret not in text and secret not in flat, f"a secret leaked into {where}"


def tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# -- the statements -----------------------------------------------------------------------

HARMLESS = "harmless"  # may answer, but must change nothing and show nothing
HOSTILE: list[tuple[str, str]] = [
    # writes hidden where DuckDB's statement type still says SELECT
    ("cte-delete", "WITH d AS (DELETE FROM trades RETURNING *) SELECT count(*) FROM d"),
    ("cte-update", "WITH d AS (UPDATE trades SET price = 0 RETURNING *) SELECT count(*) FROM d"),
    (
        "cte-insert",
        "WITH d AS (INSERT INTO trades SELECT 'forged', symbol, trade_id + 1000000, price, qty,"
        " buyer_is_maker, ts_event, ts_recv FROM trades LIMIT 1 RETURNING *)"
        " SELECT count(*) FROM d",
    ),
    ("with-insert", "WITH x AS (SELECT 1) INSERT INTO trades SELECT * FROM trades"),
    ("delete", "DELETE FROM trades"),
    ("update", "UPDATE trades SET price = 0"),
    ("drop", "DROP TABLE trades"),
    ("create-temp", "CREATE TEMP TABLE t AS SELECT 1 AS x"),
    ("truncate", "TRUNCATE trades"),
    # host files, in every disguise
    ("read-text-canary", "SELECT * FROM read_text('{canary}')"),
    ("proc-environ", "SELECT * FROM read_text('/proc/self/environ')"),
    ("read-csv-passwd", "SELECT * FROM read_csv('/etc/passwd')"),
    ("read-blob-shadow", "SELECT * FROM read_blob('/etc/shadow')"),
    ("read-csv-auto", "SELECT * FROM read_csv_auto('{canary}', header = false)"),
    ("read-json", "SELECT * FROM read_json('{canary}')"),
    ("read-parquet", "SELECT * FROM read_parquet('{canary}')"),
    ("path-as-table", "SELECT * FROM '{canary}'"),
    ("cte-file", "WITH f AS (SELECT * FROM read_text('{canary}')) SELECT * FROM f"),
    ("scalar-subquery", "SELECT (SELECT content FROM read_text('{canary}')) AS c"),
    (
        "in-subquery",
        "SELECT * FROM trades WHERE symbol IN (SELECT content FROM read_text('{canary}'))",
    ),
    ("cast-echo", "SELECT CAST(content AS INTEGER) FROM read_text('{canary}')"),
    ("cast-echo-date", "SELECT content::DATE FROM read_text('{canary}')"),
    ("glob-dir", "SELECT * FROM glob('{dir}/*')"),
    ("glob-root", "SELECT * FROM glob('/root/*')"),
    ("ch-file", "SELECT * FROM file('{canary}', 'TSV', 'line String')"),
    ("ch-file-environ", "SELECT * FROM file('/proc/self/environ', 'TSV', 'line String')"),
    ("qdb-files", "SELECT * FROM files('{dir}')"),
    ("qdb-files-root", "SELECT path FROM files('/etc') WHERE path LIKE '%passwd%'"),
    (
        "qdb-glob-join",
        "SELECT * FROM trades JOIN (SELECT * FROM glob('{dir}/*')) g ON symbol = path",
    ),
    ("qdb-parquet", "SELECT * FROM read_parquet('{canary}')"),
    ("qdb-import-files", "SELECT * FROM import_files()"),
    ("qdb-suspend", "ALTER TABLE trades SUSPEND WAL"),
    ("qdb-resume-from", "ALTER TABLE trades RESUME WAL FROM TXN 1"),
    ("qdb-copy-parquet", "COPY trades TO 'tv_export' WITH FORMAT PARQUET"),
    # network
    ("url-csv", "SELECT * FROM read_csv('http://127.0.0.1:9/x.csv')"),
    ("url-as-table", "SELECT * FROM 'https://example.invalid/x.parquet'"),
    ("ch-url", "SELECT * FROM url('http://127.0.0.1:9/', 'CSV', 'a String')"),
    ("ch-remote", "SELECT * FROM remote('127.0.0.1', system.one)"),
    ("ch-merge", "SELECT * FROM merge(currentDatabase(), '.*')"),
    # other databases, copies, exports
    ("attach", "ATTACH '{out}/x.duckdb' AS x"),
    ("attach-readonly", "ATTACH '{canary}' AS y (READ_ONLY)"),
    ("copy-to", "COPY trades TO '{out}/trades.csv'"),
    ("copy-query-to", "COPY (SELECT 1) TO '{out}/one.parquet' (FORMAT parquet)"),
    ("export", "EXPORT DATABASE '{out}/export'"),
    ("into-outfile", "SELECT * FROM trades INTO OUTFILE '{out}/t.tsv'"),
    ("format", "SELECT * FROM trades FORMAT TSV"),
    # extensions and settings
    ("install", "INSTALL httpfs"),
    ("load", "LOAD httpfs"),
    ("set-external", "SET enable_external_access = true"),
    ("set-unlock", "SET lock_configuration = false"),
    ("reset", "RESET memory_limit"),
    ("pragma", "PRAGMA threads = 64"),
    ("call", "CALL pragma_database_size()"),
    ("secrets", "SELECT * FROM duckdb_secrets()"),
    ("ch-settings-readonly", "SELECT 1 SETTINGS readonly = 0"),
    ("ch-settings-limit", "SELECT count() FROM trades SETTINGS max_execution_time = 1000"),
    # several statements, and statements hidden in comments
    ("two-statements", "SELECT 1; DELETE FROM trades"),
    ("two-reads", "SELECT 1; SELECT * FROM read_text('{canary}')"),
    ("comment-before", "/* just a look */ DELETE FROM trades"),
    ("line-comment-before", "-- a read\nDELETE FROM trades"),
    ("comment-hides", "SELECT count(*) AS n FROM trades /*; DELETE FROM trades */"),
    ("line-comment-hides", "SELECT count(*) AS n FROM trades -- ; DROP TABLE trades"),
    # memory and time bombs
    ("memory-bomb", "SELECT len(l) FROM (SELECT list(range) AS l FROM range(200000000))"),
    ("ch-memory-bomb", "SELECT count() FROM (SELECT groupArray(number) FROM system.numbers)"),
    ("time-bomb", "SELECT count(*) FROM range(1000000000000)"),
    ("ch-time-bomb", "SELECT count() FROM system.numbers"),
]
ALLOWED = {"comment-hides", "line-comment-hides"}
assert len(HOSTILE) >= 40 and len({name for name, _ in HOSTILE}) == len(HOSTILE)


@pytest.mark.parametrize("door", DOORS)
@pytest.mark.parametrize(("name", "statement"), HOSTILE, ids=[n for n, _ in HOSTILE])
def test_hostile_statement_is_refused_and_changes_nothing(
    target: Target, canary: Canary, door: str, name: str, statement: str
) -> None:
    before = tree(canary.dir)
    sql = statement.format(canary=canary.file, dir=canary.dir, out=canary.out)
    answer = ask(door, target, canary, sql)
    if name in ALLOWED:
        assert answer.ok, answer.text
    else:
        assert not answer.ok, f"{name} answered through {door}: {answer.text[:500]}"
        assert answer.error.strip(), answer.text
        assert "Traceback" not in answer.text
        if door == "http":
            assert "\n" not in answer.error.strip(), answer.error
    assert_no_secret(canary, answer.text, f"the answer to {name} through {door}")
    assert_no_secret(canary, target.log.read_text(errors="replace"), "the owner's log")
    assert tree(canary.dir) == before, "a file changed next to the data"
    assert [ask("http", target, canary, q).rows for q in target.state_sql] == target.baseline


def test_the_write_cte_gets_a_one_line_refusal(target: Target, canary: Canary) -> None:
    sql = HOSTILE[0][1]
    for door in DOORS:
        answer = ask(door, target, canary, sql)
        assert not answer.ok
        expected = {
            "duckdb": ["queries are read-only and this one would write"],
            # the statement scanner refuses it first; the server's own refusal of every
            # write is shown by test_clickhouse_refuses_writes_and_table_functions_itself
            "clickhouse": ["queries may not use DELETE", "ClickHouse refused the query"],
            "questdb": ["queries may not use DELETE"],
        }[target.name]
        line = " ".join(answer.error.split())
        assert any(e in line for e in expected), answer.error
    assert target.baseline[0][0][0] == TRADES


def test_environ_gets_a_one_line_external_access_error(target: Target, canary: Canary) -> None:
    answer = ask("http", target, canary, "SELECT * FROM read_text('/proc/self/environ')")
    assert not answer.ok
    assert "\n" not in answer.error
    if target.name == "duckdb":
        assert answer.error.startswith("query refused: external access is disabled")
    elif target.name == "questdb":  # no such function; its file functions are refused
        assert "unknown function name: read_text" in answer.error
    else:
        assert "refused" in answer.error or "Unknown table function" in answer.error


def test_bombs_are_stopped_with_the_reason_and_others_keep_going(
    target: Target, canary: Canary
) -> None:
    memory, slow = {
        "duckdb": ("SELECT len(l) FROM (SELECT list(range) AS l FROM range(200000000))",
                   "SELECT count(*) FROM range(1000000000000)"),
        "clickhouse": ("SELECT count() FROM (SELECT groupArray(number) FROM system.numbers)",
                       "SELECT count() FROM system.numbers"),
        "questdb": ("SELECT count() FROM (SELECT x, count() FROM long_sequence(100000000)"
                    " GROUP BY x)",
                    "SELECT count() FROM long_sequence(1000000000000) WHERE x % 7 = 3"),
    }[target.name]  # fmt: skip
    assert target.client is not None
    r = target.client.get(f"{target.http_url}/query", params={"sql": memory})
    assert r.status_code == 400 and r.json()["type"] == "QueryLimitExceeded", r.text
    assert "memory" in r.json()["error"]
    if target.name == "duckdb":  # the bomb ran inside the owner: its peak memory stayed low
        status = Path(f"/proc/{target.proc.pid}/status").read_text()
        peak_kib = int(next(x for x in status.splitlines() if x.startswith("VmHWM")).split()[1])
        assert peak_kib < 1024 * 1024, f"owner peaked at {peak_kib // 1024} MiB"
    r = target.client.get(f"{target.http_url}/query", params={"sql": slow})
    assert r.status_code == 504 and r.json()["type"] == "Timeout", r.text
    assert "time limit" in r.json()["error"]
    # the query thread is free again at once: the next query is answered, not 503
    assert ask("http", target, canary, target.state_sql[0]).rows == target.baseline[0]


async def test_clickhouse_refuses_writes_and_table_functions_itself(
    clickhouse_target: Target,
) -> None:
    """Past the statement scanner: the settings of a user query make the server refuse."""
    store = open_store(clickhouse_target.store_url)
    assert isinstance(store, ClickHouseStore)
    settings = store.query_settings(10)
    assert settings["readonly"] == "1"
    refused = {
        "INSERT INTO trades SELECT * FROM trades LIMIT 1": "Cannot",
        "CREATE TABLE evil (x UInt8) ENGINE = Memory": "readonly",
        "DROP TABLE trades": "readonly",
        "SELECT * FROM numbers(3)": "Table functions are forbidden in readonly mode",
        "SELECT * FROM file('x.csv', 'CSV', 'a String')": "Table functions are forbidden",
        "SELECT * FROM url('http://127.0.0.1:9/', 'CSV', 'a String')": "Table functions",
        "SELECT * FROM remote('127.0.0.1', system.one)": "Table functions",
        "SET max_memory_usage = 0": "readonly",
    }
    try:
        for sql, reason in refused.items():
            with pytest.raises(ClickHouseServerError) as caught:
                await store._http.json(sql, settings)
            assert caught.value.code == 164 and reason in str(caught.value), sql
        doc = await store._http.json("SELECT count() FROM trades", settings)
        assert doc["data"] == [[TRADES]]
        # the limits travel in the same request and still apply under readonly=1
        applied = await store._http.json(
            "SELECT name, value FROM system.settings WHERE name IN"
            " ('readonly', 'max_execution_time', 'max_memory_usage') ORDER BY name",
            settings,
        )
        assert applied["data"] == [
            ["max_execution_time", "2"],  # whole seconds, rounded up
            ["max_memory_usage", str(128 * 10**6)],
            ["readonly", "1"],
        ]
    finally:
        await store.close()


def test_duckdb_refuses_writes_files_and_settings_itself(
    duckdb_target: Target, canary: Canary
) -> None:
    """Past the statement-type check: inside the sandbox DuckDB itself refuses them."""
    con = duckdb.connect(str(duckdb_target.offline_dir / "ticks.duckdb"))  # writable
    try:
        cur = con.cursor()
        lock_down(cur, "128MB")
        refused = {
            "DELETE FROM trades": "read-only mode",
            "UPDATE trades SET price = 0": "read-only mode",
            "INSERT INTO trades SELECT * FROM trades": "read-only mode",
            "DROP TABLE trades": "read-only mode",
            f"COPY trades TO '{canary.out}/t.csv'": "disabled by configuration",
            f"EXPORT DATABASE '{canary.out}/e'": "disabled",
            f"ATTACH '{canary.out}/a.duckdb' AS a": "disabled by configuration",
            "INSTALL httpfs": "disabled by configuration",
            "LOAD httpfs": "disabled through configuration",
            "SET enable_external_access = true": "configuration has been locked",
            "SET lock_configuration = false": "configuration has been locked",
            "RESET memory_limit": "configuration has been locked",
        }
        for sql, reason in refused.items():
            cur.execute("BEGIN TRANSACTION READ ONLY")
            with pytest.raises(duckdb.Error, match=reason):
                cur.execute(sql)
            cur.execute("ROLLBACK")
        assert cur.execute("SELECT count(*) FROM trades").fetchone() == (TRADES,)
        cur.close()
    finally:
        con.close()  # the offline door opens this file read-only afterwards
    assert os.listdir(canary.out) == []


def test_clickhouse_dedicated_read_only_user(
    clickhouse_target: Target, clickhouse_server: ClickHouseServer, canary: Canary, tmp_path: Path
) -> None:
    """A user whose profile is ``readonly=1`` with its own limits (docs/stores.md): the
    store sends it no settings, and reads work while writes and table functions do not."""
    url = f"clickhouse://tv_reader:tv-reader-pw@127.0.0.1:{clickhouse_server.http_port}/tv_hostile"

    def query(sql: str) -> Any:
        return CliRunner().invoke(
            app,
            ["query", sql, "--json", "--data-dir", str(tmp_path), "--store", url],
            env={"COLUMNS": "400"},
        )

    ok = query("SELECT symbol, count() AS n FROM trades GROUP BY symbol ORDER BY symbol")
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout) == [
        {"symbol": "BTCUSDT", "n": TRADES // 2},
        {"symbol": "ETHUSDT", "n": TRADES // 2},
    ]
    for sql, reason in {
        "SELECT * FROM file('x', 'TSV', 'a String')": "Table functions are forbidden",
        "SELECT count() FROM system.numbers": "time limit",
        "SELECT count() FROM (SELECT groupArray(number) FROM system.numbers)": "memory limit",
        "SELECT 1 SETTINGS readonly = 0": "readonly",
    }.items():
        refused = query(sql)
        assert refused.exit_code == 2, (sql, refused.output)
        assert reason in " ".join(refused.output.split()), refused.output
        assert_no_secret(canary, refused.output, sql)
    assert "tv-reader-pw" not in ok.output


ORDINARY = {
    "duckdb": [
        "SELECT symbol, count(*) AS n, round(avg(price), 3) AS p FROM trades GROUP BY symbol"
        " ORDER BY symbol",
        "SELECT table_name FROM information_schema.tables ORDER BY table_name",
    ],
    "clickhouse": [
        "SELECT symbol, count() AS n, round(avg(price), 3) AS p FROM trades GROUP BY symbol"
        " ORDER BY symbol",
        "SELECT name FROM system.tables WHERE database = currentDatabase() ORDER BY name",
    ],
    "questdb": [
        "SELECT symbol, count() AS n, round(avg(price), 3) AS p FROM trades GROUP BY symbol"
        " ORDER BY symbol",
        "SELECT table_name FROM tables() ORDER BY table_name",
    ],
}


@pytest.mark.parametrize("door", DOORS)
def test_ordinary_reads_keep_working(target: Target, canary: Canary, door: str) -> None:
    by_symbol, catalog = (ask(door, target, canary, sql) for sql in ORDINARY[target.name])
    assert by_symbol.ok and catalog.ok, by_symbol.text + catalog.text
    assert [(s, n) for s, n, _ in by_symbol.rows] == [
        ("BTCUSDT", TRADES // 2),
        ("ETHUSDT", TRADES // 2),
    ]
    assert {"trades", "quotes", "bars"} <= {row[0] for row in catalog.rows}
    if target.name == "duckdb":  # the sandbox's switches, as DuckDB itself reports them
        settings = target.baseline[0][0][-1]
        assert "enable_external_access=false" in settings
        assert "lock_configuration=true" in settings
        assert "autoinstall_known_extensions=false" in settings
    status = CliRunner().invoke(
        app, ["status", "--json", "--data-dir", str(target.owner_dir)], env={"COLUMNS": "400"}
    )
    assert status.exit_code == 0, status.output
    assert json.loads(status.stdout)["store"]["tables"]["trades"] == TRADES


def test_nothing_leaked_into_the_owners_log(target: Target, canary: Canary) -> None:
    text = target.log.read_text(errors="replace")
    assert_no_secret(canary, text, "the owner's log")
    assert "Traceback" not in text
    assert os.listdir(canary.out) == []
