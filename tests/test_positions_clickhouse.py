"""The ClickHouse position backend on the real server (18.16): a user's table read in place,
per-insert atomicity, crashes in the middle of book changes, write races, merges.

Tables of "the user" are created and filled with plain SQL, the way their own trader did;
tickvault only ever gets the URL, the table name and a column mapping.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.cli_helpers import tv
from tests.polling import eventually_sync
from tests.servers import ClickHouseServer, free_port
from tickvault.core.errors import PositionStateError
from tickvault.positions import (
    EPSILON,
    JsonFileSource,
    PositionBook,
    StateStoreSource,
    reconcile,
    restore,
    start_positions,
)
from tickvault.positions.clickhouse_sql import STATE_TABLE
from tickvault.positions.clickhouse_store import ClickHousePositionStore
from tickvault.positions.open import open_backend

LEGACY_DDL = """CREATE TABLE {db}.legacy_state (
    tid String, sym String, dir String, state String, qty String, notional Float64,
    px Float64, bars UInt16, stamp String, seq String
) ENGINE = MergeTree() ORDER BY tid"""


class Server:
    def __init__(self, server: ClickHouseServer) -> None:
        self.server = server
        self.database = f"dolphin_{uuid.uuid4().hex[:10]}"
        self.url = server.url(self.database)
        self.base = f"http://127.0.0.1:{server.http_port}/"
        self.sql(f"CREATE DATABASE {self.database}")

    def sql(self, statement: str) -> str:
        response = httpx.post(self.base, content=statement.encode(), timeout=30)
        assert response.status_code == 200, response.text
        return response.text


@pytest.fixture
def ch(clickhouse_server: ClickHouseServer) -> Iterator[Server]:
    yield Server(clickhouse_server)


def test_a_user_table_with_text_columns_is_read_through_a_column_mapping(ch: Server) -> None:
    ch.sql(LEGACY_DDL.format(db=ch.database))
    ch.sql(
        f"INSERT INTO {ch.database}.legacy_state VALUES"
        " ('l-1', 'BTCUSDT', 'LONG', 'OPEN', '12', 1200, 100, 3, '2026-06-11T07:00:00Z', '1'),"
        " ('l-2', 'ETHUSDT', 'LONG', 'OPEN', 'abc', 10, 10, 0, '2026-06-11T07:00:00Z', '1'),"
        " ('l-3', 'SOLUSDT', 'LONG', 'OPEN', '1', 150, 150, 0, '2026-06-11T07:00:00Z', '1'),"
        " ('l-3', 'SOLUSDT', 'LONG', 'CLOSED', '0', 0, 150, 0, '2026-06-11T08:00:00Z', '2'),"
        " ('l-4', 'XRPUSDT', 'LONG', 'OPEN', '5', 5, 1, 0, '2026-06-11T07:00:00Z', '1'),"
        " ('l-4', 'XRPUSDT', 'LONG', 'OPEN', '5', 5, 1, 0, 'yesterday', 'x'),"
        # the latest ordered row is CLOSED: trade ids are never reused, so the trade ended
        " ('l-5', 'XRPUSDT', 'LONG', 'CLOSED', '0', 0, 1, 0, '2026-06-11T07:00:00Z', '1'),"
        " ('l-5', 'XRPUSDT', 'LONG', 'OPEN', '5', 5, 1, 0, 'yesterday', 'x')"
    )
    columns = {
        "trade_id": "tid",
        "symbol": "sym",
        "side": "dir",
        "status": "state",
        "quantity": "qty",
        "entry_price": "px",
        "bars_held": "bars",
        "ts": "stamp",
    }
    with open_backend(ch.url, table="legacy_state", columns=columns) as store:
        report = restore([StateStoreSource(store)], quarantine_store=store)
        assert report.restored == []
        assert sorted((q.trade_id, q.reason) for q in report.quarantined) == [
            ("l-1", "non-numeric quantity '12'"),
            ("l-2", "non-numeric quantity 'abc'"),
            ("l-4", "unordered history: 1 row(s) of this trade have no integer seq"),
        ]
        [l1] = [q for q in report.quarantined if q.trade_id == "l-1"]
        # tickvault's names, their values; the ISO text time read as epoch microseconds
        assert l1.row["ts"] == 1_781_161_200_000_000 and l1.row["seq"] == 1
        assert l1.row["symbol"] == "BTCUSDT" and l1.row["bars_held"] == 3
        assert report.source_used == f"clickhouse:{ch.database}.legacy_state"
        assert len(store.quarantined()) == 3


def test_a_mapping_naming_a_missing_column_is_a_clear_error(ch: Server) -> None:
    ch.sql(LEGACY_DDL.format(db=ch.database))
    ch.sql(
        f"INSERT INTO {ch.database}.legacy_state VALUES"
        " ('l-1', 'BTCUSDT', 'LONG', 'OPEN', '1', 1, 1, 0, '2026-06-11T07:00:00Z', '1')"
    )
    with open_backend(ch.url, table="legacy_state", columns={"quantity": "size"}) as store:
        report = restore([StateStoreSource(store)])
    [attempt, flat] = report.sources_tried
    assert attempt.outcome == "error" and "no column 'size' (for quantity)" in attempt.detail
    assert flat.source == "flat" and report.restored == []
    with open_backend(ch.url, table="legacy_state") as store:  # no mapping: no trade_id column
        report = restore([StateStoreSource(store)])
    assert "has no trade_id column" in report.sources_tried[0].detail
    with open_backend(ch.url, table="no_such_table") as store:
        report = restore([StateStoreSource(store)])
    assert report.sources_tried[0].outcome == "unavailable"
    assert "no table" in report.sources_tried[0].detail


def test_insert_cut_off_mid_body_commits_nothing(ch: Server) -> None:
    """Per-insert atomicity: a complete row followed by half a row, then the connection
    drops. The server commits neither, and restore sees the state before the insert."""
    store = open_backend(ch.url)
    book = PositionBook(store, clock=lambda: 1_781_000_000.0)
    book.open("a", "BTCUSDT", "LONG", 1.0, 100.0)
    row = {
        "trade_id": "a",
        "symbol": "BTCUSDT",
        "side": "LONG",
        "status": "CLOSED",
        "quantity": 0.0,
        "notional": 0.0,
        "ts": 1_781_000_001_000_000,
        "seq": 2,
        "origin": "book",
        "writer": "torn",
    }
    whole = json.dumps(row).encode() + b"\n"
    body = whole + json.dumps(row | {"seq": 3}).encode()
    _raw_insert(ch, body, send=len(whole) + 20)  # the connection drops mid-second-row
    eventually_sync(lambda: _inserts_running(ch) == 0, what="the cut-off insert ended")
    assert store.row_count() == 1
    [p] = restore([StateStoreSource(store)]).restored
    assert (p.trade_id, p.seq) == ("a", 1)
    # control: the same request sent whole is committed, and restore sees it
    _raw_insert(ch, whole, send=len(whole))
    eventually_sync(lambda: store.row_count() == 2, what="the whole insert committed")
    report = restore([StateStoreSource(store)])
    assert report.restored == [] and report.quarantined == []
    store.close()


def _raw_insert(ch: Server, body: bytes, send: int) -> None:
    """POST an insert over a raw socket, sending only the first ``send`` bytes of ``body``
    (``Content-Length`` announces all of it), then close the connection."""
    query = f"INSERT INTO {ch.database}.{STATE_TABLE} FORMAT JSONEachRow"
    target = httpx.URL(ch.base, params={"query": query})
    head = (
        f"POST {target.raw_path.decode()} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", ch.server.http_port)) as sock:
        sock.sendall(head + body[:send])
        if send == len(body):
            sock.recv(4096)  # the answer: the insert is done


def _inserts_running(ch: Server) -> int:
    return int(
        ch.sql(
            "SELECT count() FROM system.processes WHERE query LIKE 'INSERT INTO %'"
            f" AND query LIKE '%{ch.database}%'"
        )
    )


def test_a_book_killed_in_the_middle_of_changes_restores_its_last_committed_row(
    ch: Server,
) -> None:
    trader = textwrap.dedent(
        """
        import sys
        from tickvault.positions import start_positions
        s = start_positions(".", state=sys.argv[1], alert=lambda e: None)
        s.book.open("a", "BTCUSDT", "LONG", 1.0, 100.0)
        n = 0
        while True:
            n += 1
            s.book.mark("a", bars_held=n)
            print(n, flush=True)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", trader, ch.url],
        stdout=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "TICKVAULT_DATA_DIR"},
    )
    assert proc.stdout is not None
    last = 0
    while last < 25:
        line = proc.stdout.readline()
        assert line, "the trader exited"
        last = int(line)
    proc.send_signal(signal.SIGKILL)  # somewhere inside the next mark
    proc.wait(timeout=30)
    with open_backend(ch.url) as store:
        report = restore([StateStoreSource(store)], quarantine_store=store)
        [p] = report.restored
        assert report.quarantined == [] and report.warnings == []
        # the row of the last acknowledged change, or of the one the kill interrupted
        assert p.bars_held in (last, last + 1)
        assert p.seq == p.bars_held + 1 == store.row_count()
        book = PositionBook(store, report.restored)
        book.mark("a", bars_held=1_000)
        [after] = restore([StateStoreSource(store)]).restored
        assert (after.bars_held, after.seq) == (1_000, p.seq + 1)


class RacingStore(ClickHousePositionStore):
    """Lets another writer insert the same trade's next row between this writer's check
    and its insert: the timing a real race has, which a test cannot otherwise arrange."""

    competitor: dict[str, Any] | None = None

    def _insert(self, table: str, rows: Any) -> None:
        if self.competitor is not None and table == STATE_TABLE:
            competitor, self.competitor = self.competitor, None
            super()._insert(table, [competitor])
        super()._insert(table, rows)


def test_a_write_race_is_detected_and_restore_refuses_to_pick_a_side(ch: Server) -> None:
    store = RacingStore.from_url(ch.url)
    assert isinstance(store, RacingStore)
    book = PositionBook(store, clock=lambda: 1_781_000_000.0)
    book.open("a", "BTCUSDT", "LONG", 1.0, 100.0)
    book.open("b", "ETHUSDT", "LONG", 1.0, 100.0)
    store.competitor = {
        "trade_id": "a",
        "symbol": "BTCUSDT",
        "side": "LONG",
        "status": "CLOSED",
        "quantity": 0.0,
        "notional": 0.0,
        "ts": 1_781_000_000_500_000,
        "seq": 2,
        "origin": "book",
        "writer": "other-process",
    }
    with pytest.raises(PositionStateError, match="another writer wrote seq 2"):
        book.mark("a", bars_held=5)
    report = restore([StateStoreSource(store)], quarantine_store=store)
    assert [p.trade_id for p in report.restored] == ["b"]
    [q] = report.quarantined
    assert q.trade_id == "a" and q.reason.startswith("2 different rows share the latest seq 2")
    rec = reconcile(store, apply=True)
    assert [t.trade_id for t in rec.tombstones] == ["a"]
    assert restore([StateStoreSource(store)]).quarantined == []
    store.close()


def test_restore_does_not_depend_on_merges(ch: Server) -> None:
    with open_backend(ch.url) as store:
        book = PositionBook(store, clock=lambda: 1_781_000_000.0)
        for i in range(6):
            book.open(f"t{i}", "BTCUSDT", "LONG", 1.0 + i, 100.0)
        for i in range(6):
            book.mark(f"t{i}", bars_held=i)
        for i in range(0, 6, 2):
            book.close(f"t{i}", 101.0, "exit")
        before = restore([StateStoreSource(store)]).restored
        parts = ch.sql(
            f"SELECT count() FROM system.parts WHERE database = '{ch.database}'"
            f" AND table = '{STATE_TABLE}' AND active"
        )
        assert int(parts) > 1  # one part per insert, not merged yet
        ch.sql(f"OPTIMIZE TABLE {ch.database}.{STATE_TABLE} FINAL")
        parts = ch.sql(
            f"SELECT count() FROM system.parts WHERE database = '{ch.database}'"
            f" AND table = '{STATE_TABLE}' AND active"
        )
        assert int(parts) == 1
        after = restore([StateStoreSource(store)]).restored
        assert after == before == book.positions()
        assert store.row_count() == 15  # a MergeTree merge keeps every row


def test_an_unreachable_clickhouse_start_is_safe_mode_with_the_secondary_and_no_secret(
    tmp_path: Path,
) -> None:
    secret = "s3cr3t-pw"
    url = f"clickhouse://trader:{secret}@127.0.0.1:{free_port()}/dolphin?timeout=2"
    snapshot = tmp_path / "snap.json"
    snapshot.write_text(
        json.dumps(
            [
                {
                    "trade_id": "a",
                    "symbol": "BTCUSDT",
                    "side": "LONG",
                    "status": "OPEN",
                    "quantity": 1.0,
                    "notional": 100.0,
                    "entry_price": 100.0,
                    "bars_held": 0,
                    "ts": 1_781_000_000_000_000,
                    "seq": 1,
                }
            ]
        )
    )
    alerts: list[Any] = []
    startup = start_positions(
        tmp_path, state=url, secondary=[JsonFileSource(snapshot)], alert=alerts.append
    )
    assert startup.safe_mode and [p.trade_id for p in startup.report.restored] == ["a"]
    assert [(a.source, a.outcome) for a in startup.report.sources_tried] == [
        ("clickhouse:dolphin.tickvault_position_state", "unavailable"),
        (f"json:{snapshot}", "used"),
    ]
    assert [a.kind for a in alerts] == ["positions.store_unavailable", "positions.fallback_source"]
    shown = repr(startup.report.to_dict()) + repr([msgspec.to_builtins(a) for a in alerts])
    assert secret not in shown and "127.0.0.1" in shown
    startup.close()
    proc = tv("positions", "restore", "--state", url, "--snapshot", snapshot, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "source clickhouse:dolphin.tickvault_position_state: unavailable" in proc.stdout
    assert f"restored 1 position(s) from json:{snapshot}" in proc.stdout
    assert secret not in proc.stdout + proc.stderr


def test_a_table_of_odd_shapes_and_names_is_judged_never_fatal(ch: Server) -> None:
    """A quote in the table name, a space in a column name, NULL trade ids, an Enum side,
    an Array quantity, a Decimal notional, an infinite Float32 price, a NULL seq."""
    ch.sql(
        f"CREATE TABLE {ch.database}.`we'ird` (`trade id` Nullable(String), symbol String,"
        " side Enum8('LONG' = 1, 'SHORT' = 2), status Nullable(String),"
        " quantity Array(Float64), notional Decimal(18, 4), entry_price Nullable(Float32),"
        " bars_held Int8, ts Nullable(DateTime), seq Nullable(Int64))"
        " ENGINE = MergeTree() ORDER BY tuple()"
    )
    ch.sql(
        f"INSERT INTO {ch.database}.`we'ird` VALUES"
        " (NULL, 'A', 'LONG', 'OPEN', [1.0], 12.5, 1.5, 3, '2026-01-01 00:00:00', 1),"
        " ('x', 'A', 'SHORT', NULL, [], 0, NULL, -1, NULL, NULL),"
        " ('x', 'A', 'SHORT', 'OPEN', [2], 1.25, inf, 1, '2026-01-01 00:00:00', 2),"
        " ('y\\\\''`', 'B', 'LONG', 'CLOSED', [], 0, 1, 0, '2026-01-01 00:00:00',"
        " 9223372036854775807)"
    )
    columns = {"trade_id": "trade id"}
    with open_backend(ch.url, table="we'ird", columns=columns) as store:
        report = restore([StateStoreSource(store)], quarantine_store=store)
        assert report.restored == [] and report.warnings == []
        assert sorted((str(q.trade_id), q.reason) for q in report.quarantined) == [
            ("None", "missing trade_id"),
            ("x", "unordered history: 1 row(s) of this trade have no integer seq"),
        ]
        assert report.quarantine_copied == 2
        settled = reconcile(store, apply=True)
        assert len([t for t in settled.tombstones if t.seq is not None]) == 2
        after = restore([StateStoreSource(store)], quarantine_store=store)
        assert after.quarantined == [] and after.restored == []


READER = ("tv_position_reader", "reader-pw")  # not the query suite's tv_reader


@pytest.fixture(scope="module")
def reader_user(clickhouse_server: ClickHouseServer) -> tuple[str, str]:
    """A user the server keeps at ``readonly=1`` (a profile in users.xml, which the server
    reloads by itself), like the read-only account a trader would hand out."""
    users = clickhouse_server.workdir / "users.xml"
    text = users.read_text()
    if READER[0] not in text:
        text = text.replace("<profiles>", "<profiles><ro><readonly>1</readonly></ro>", 1)
        text = text.replace(
            "</users>",
            f"<{READER[0]}><password>{READER[1]}</password><networks><ip>127.0.0.1</ip>"
            f"</networks><profile>ro</profile><quota>default</quota></{READER[0]}></users>",
            1,
        )
        before = users.stat().st_mtime
        users.write_text(text)
        # the server notices a change by the file's mtime, in whole seconds: make it differ
        os.utime(users, (before + 2, before + 2))
    base = f"http://127.0.0.1:{clickhouse_server.http_port}/"
    headers = {"X-ClickHouse-User": READER[0], "X-ClickHouse-Key": READER[1]}
    eventually_sync(
        lambda: httpx.post(base, content=b"SELECT 1", headers=headers).text.strip() == "1",
        what="the read-only user is loaded",
    )
    return READER


def test_a_read_only_account_restores_from_the_users_table(
    ch: Server, reader_user: tuple[str, str], tmp_path: Path
) -> None:
    from tests.test_incident_004 import INCIDENT_DDL, INCIDENT_ROWS

    ch.sql(INCIDENT_DDL.format(db=ch.database))
    ch.sql(INCIDENT_ROWS.format(db=ch.database))
    user, password = reader_user
    url = ch.url.replace("clickhouse://", f"clickhouse://{user}:{password}@")
    proc = tv("positions", "restore", "--state", url, "--table", "position_state")
    source = f"clickhouse:{ch.database}.position_state"
    assert f"restored 2 position(s) from {source}" in proc.stdout, proc.stdout
    assert "quarantined '1a3d2f9c': non-positive quantity 0.0" in proc.stdout
    # readonly=1 forbids the output setting that keeps NaN apart from NULL: still refused
    assert "quarantined 't-nan': missing notional" in proc.stdout
    assert "quarantine copy failed" in proc.stdout and "read-only" in proc.stdout
    assert password not in proc.stdout + proc.stderr
    tables = ch.sql(f"SELECT name FROM system.tables WHERE database = '{ch.database}'")
    assert tables.split() == ["position_state"]  # nothing could be, and nothing was, created


_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=8,
)
_ROW = st.fixed_dictionaries(
    {
        "trade_id": st.one_of(st.none(), st.sampled_from(["a", "b", "c", "d'", "e\\"])),
        "symbol": st.one_of(st.none(), _TEXT, st.just("BTCUSDT")),
        "side": st.one_of(st.none(), st.sampled_from(["LONG", "SHORT", "BUY", ""])),
        "status": st.one_of(st.none(), st.sampled_from(["OPEN", "CLOSED", "PARTIAL"])),
        "quantity": st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
        "notional": st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
        "entry_price": st.one_of(st.none(), _TEXT, st.just("12.5")),
        "bars_held": st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
        "ts": st.one_of(st.none(), _TEXT, st.just("2026-06-11T07:42:00Z")),
        "seq": st.one_of(st.none(), _TEXT, st.integers(-5, 5).map(str)),
    }
)


def _literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return repr(value)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(_ROW, min_size=1, max_size=12))
def test_restore_of_any_rows_in_a_users_table_never_raises(
    clickhouse_server: ClickHouseServer, rows: list[dict[str, Any]]
) -> None:
    ch = Server(clickhouse_server)
    database = ch.database
    ch.sql(
        f"CREATE TABLE {database}.t (trade_id Nullable(String), symbol Nullable(String),"
        " side Nullable(String), status Nullable(String), quantity Nullable(Float64),"
        " notional Nullable(Float64), entry_price Nullable(String), bars_held Nullable(Int64),"
        " ts Nullable(String), seq Nullable(String)) ENGINE = MergeTree() ORDER BY tuple()"
    )
    names = list(rows[0])
    values = ", ".join("(" + ", ".join(_literal(r[n]) for n in names) + ")" for r in rows)
    ch.sql(f"INSERT INTO {database}.t ({', '.join(names)}) VALUES {values}")
    with open_backend(ch.url, table="t") as store:
        first = restore([StateStoreSource(store)], quarantine_store=store)
        again = restore([StateStoreSource(store)], quarantine_store=store)
    assert [a.outcome for a in first.sources_tried] == ["used"]
    assert first.warnings == [] and again.quarantine_copied == 0
    trades = [p.trade_id for p in first.restored] + [q.trade_id for q in first.quarantined]
    assert len(trades) == len(set(trades))  # one verdict per trade
    assert {t for t in trades} <= {r["trade_id"] for r in rows}
    for p in first.restored:
        assert math.isfinite(p.quantity) and p.quantity > EPSILON and p.notional > EPSILON
    assert first.quarantine_copied == len(first.quarantined)
