"""Incident 004 regression: a zero-sized ``OPEN`` row must not restart-loop the trader.

Seed (``seeds/004_*.txt``): ``position_state`` held the legacy ``ATOMUSDT`` leg
``1a3d2f9c`` as ``status=OPEN, quantity=0, notional=0, bars_held=34``. Restore picked it
as the latest row, hard-stopped on "invalid quantity", the supervisor restarted the
process, and the next start read the same row again. The retract path had written it
(remaining size rounded to zero, still written as ``OPEN``), and the capital ledger came
list-shaped where a dict was expected.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from tickvault.positions import (
    EPSILON,
    JsonFileSource,
    PositionBook,
    PositionStore,
    StateStoreSource,
    import_jsonl,
    restore,
    start_positions,
)

SEED_ROW: dict[str, Any] = {
    "trade_id": "1a3d2f9c",
    "symbol": "ATOMUSDT",
    "side": "SHORT",
    "status": "OPEN",
    "quantity": 0,
    "notional": 0,
    "entry_price": 8.41,
    "bars_held": 34,
    "ts": "2026-06-11T07:42:00Z",
    "seq": 5,
}


def _seed_store(data_dir: Path) -> None:
    """Valid positions written by the book, then the seed's legacy history imported."""
    legacy = data_dir / "legacy.jsonl"
    data_dir.mkdir(parents=True, exist_ok=True)
    earlier = SEED_ROW | {"quantity": 118.9, "notional": 999.95, "bars_held": 20, "seq": 4}
    legacy.write_text(json.dumps(earlier) + "\n" + json.dumps(SEED_ROW) + "\n")
    with PositionStore(data_dir / "state.sqlite3") as store:
        book = PositionBook(store, clock=lambda: 1_781_000_000.0)
        book.open("t-btc", "BTCUSDT", "LONG", 0.25, 64_000.0)
        book.open("t-eth", "ETHUSDT", "SHORT", 3.0, 3_100.0)
        report = import_jsonl(store, legacy)
    assert report.imported == 2
    assert [(f.trade_id, f.reason) for f in report.flagged] == [
        ("1a3d2f9c", "non-positive quantity 0")
    ]


def test_incident_004_seed_row_is_quarantined_and_process_keeps_running(tmp_path: Path) -> None:
    _seed_store(tmp_path)
    alerts: list[Any] = []

    startup = start_positions(tmp_path, alert=alerts.append, clock=lambda: 1_781_000_100.0)

    report = startup.report
    assert [p.trade_id for p in report.restored] == ["t-btc", "t-eth"]
    assert [(q.trade_id, q.reason) for q in report.quarantined] == [
        ("1a3d2f9c", "non-positive quantity 0")
    ]
    assert report.quarantined[0].row["bars_held"] == 34
    assert report.quarantined[0].row["symbol"] == "ATOMUSDT"
    assert [a.outcome for a in report.sources_tried] == ["used"]
    assert not startup.safe_mode
    assert [a.kind for a in alerts] == ["positions.quarantined"]
    # the bad row was copied to position_quarantine with its reason
    assert startup.store is not None
    copies = startup.store.quarantined()
    assert [(c["trade_id"], c["reason"]) for c in copies] == [
        ("1a3d2f9c", "non-positive quantity 0")
    ]
    # the process keeps trading
    book = startup.book
    assert book.get("1a3d2f9c") is None
    book.open("t-sol", "SOLUSDT", "LONG", 10.0, 150.0)
    book.close("t-eth", 3_050.0, "take profit")
    assert [p.trade_id for p in book.positions()] == ["t-btc", "t-sol"]
    startup.close()


def test_incident_004_repeated_restarts_do_not_loop(tmp_path: Path) -> None:
    """What the supervisor saw: start, restore, exit — now every start succeeds the same way."""
    _seed_store(tmp_path)
    trader = textwrap.dedent(
        """
        import json, sys
        from tickvault.positions import start_positions
        s = start_positions(sys.argv[1], alert=lambda e: None)
        print(json.dumps({
            "restored": [p.trade_id for p in s.report.restored],
            "quarantined": [q.reason for q in s.report.quarantined],
            "safe_mode": s.safe_mode,
        }))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "TICKVAULT_DATA_DIR"}
    for _ in range(3):
        proc = subprocess.run(
            [sys.executable, "-c", trader, str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout) == {
            "restored": ["t-btc", "t-eth"],
            "quarantined": ["non-positive quantity 0"],
            "safe_mode": False,
        }
    with PositionStore(tmp_path / "state.sqlite3", read_only=True) as store:
        assert len(store.quarantined()) == 1  # idempotent copy, not one per restart
        assert len(store.starts()) == 3


def test_incident_004_retract_to_zero_writes_closed_not_open(tmp_path: Path) -> None:
    """The source of the bad row: a partial retract whose remainder rounds to zero."""
    with PositionStore(tmp_path / "state.sqlite3") as store:
        book = PositionBook(store)
        book.open("leg-a", "ATOMUSDT", "SHORT", 0.3, 8.41)
        book.retract("leg-a", quantity=0.1)
        book.retract("leg-a", quantity=0.1)
        # 0.3 - 0.1 - 0.1 - 0.1 is 5.6e-17 in floating point: dust, so a full close
        assert book.retract("leg-a", quantity=0.1) is None
        book.open("leg-b", "ATOMUSDT", "SHORT", 1e-6, 8.41)
        assert book.retract("leg-b", fraction=1.0) is None
        rows = list(store.iter_rows())
        assert [(r["trade_id"], r["status"]) for r in rows] == [
            ("leg-a", "OPEN"),
            ("leg-a", "OPEN"),
            ("leg-a", "OPEN"),
            ("leg-a", "CLOSED"),
            ("leg-b", "OPEN"),
            ("leg-b", "CLOSED"),
        ]
        for r in rows:
            if r["status"] == "OPEN":
                assert r["quantity"] > EPSILON and r["notional"] > EPSILON
        report = restore([StateStoreSource(store)], quarantine_store=store)
        assert report.restored == [] and report.quarantined == []


def test_incident_004_list_shaped_capital_ledger_is_read(tmp_path: Path) -> None:
    _seed_store(tmp_path)
    ledger = tmp_path / "capital_update_ledger.json"
    ledger.write_text(
        json.dumps(
            [
                {"capital": 10_000.0, "ts": "2026-06-10T00:00:00Z"},
                {"capital": 10_412.5, "ts": "2026-06-11T06:00:00Z"},
            ]
        )
    )
    startup = start_positions(tmp_path, alert=lambda e: None, ledger=ledger)
    assert startup.report.capital is not None
    assert startup.report.capital.shape == "list"
    assert startup.report.capital.capital == 10_412.5
    startup.close()
    ledger.write_text('"corrupt"')
    startup = start_positions(tmp_path, alert=lambda e: None, ledger=ledger)
    assert startup.report.capital is None
    assert any("capital ledger" in w and "is a str" in w for w in startup.report.warnings)
    assert [p.trade_id for p in startup.report.restored] == ["t-btc", "t-eth"]
    startup.close()


def test_incident_004_cli_restore_reports_instead_of_halting(tmp_path: Path) -> None:
    _seed_store(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "TICKVAULT_DATA_DIR"}
    proc = subprocess.run(
        [sys.executable, "-m", "tickvault", "positions", "restore", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env | {"TICKVAULT_DATA_DIR": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert [(p["trade_id"], p["quantity"]) for p in report["restored"]] == [
        ("t-btc", 0.25),
        ("t-eth", 3.0),
    ]
    assert [(q["trade_id"], q["reason"]) for q in report["quarantined"]] == [
        ("1a3d2f9c", "non-positive quantity 0")
    ]
    assert [a["source"] for a in report["sources_tried"]] == ["state-store"]


def test_incident_004_restore_never_raises_on_the_seed_row_in_any_source(tmp_path: Path) -> None:
    """The same row in a JSON snapshot (the secondary) is quarantined the same way."""
    snapshot = tmp_path / "snapshot.json"
    snapshot.write_text(json.dumps([SEED_ROW | {"ts": 1_781_163_720_000_000}]))
    report = restore([StateStoreSource(tmp_path / "missing.sqlite3"), JsonFileSource(snapshot)])
    assert [a.outcome for a in report.sources_tried] == ["unavailable", "used"]
    assert [(q.trade_id, q.reason) for q in report.quarantined] == [
        ("1a3d2f9c", "non-positive quantity 0")
    ]
    assert report.restored == []


# -- the deployment of the incident: position_state in ClickHouse -----------------------------

INCIDENT_DDL = """CREATE TABLE {db}.position_state (
    trade_id String, symbol String, side String, status String, quantity Float64,
    notional Float64, entry_price Float64, bars_held UInt32, ts DateTime, seq UInt64
) ENGINE = MergeTree() ORDER BY (trade_id, seq)"""

INCIDENT_ROWS = """INSERT INTO {db}.position_state VALUES
    ('t-btc', 'BTCUSDT', 'LONG', 'OPEN', 0.25, 16000, 64000, 3, '2026-06-11 07:00:00', 1),
    ('t-btc', 'BTCUSDT', 'LONG', 'OPEN', 0.25, 16000, 64000, 4, '2026-06-11 07:15:00', 2),
    ('1a3d2f9c', 'ATOMUSDT', 'SHORT', 'OPEN', 118.9, 999.95, 8.41, 20, '2026-06-11 07:00:00', 4),
    ('1a3d2f9c', 'ATOMUSDT', 'SHORT', 'OPEN', 0, 0, 8.41, 34, '2026-06-11 07:42:00', 5),
    ('t-nan', 'ETHUSDT', 'LONG', 'OPEN', 1, nan, 3100, 0, '2026-06-11 07:00:00', 1),
    ('t-neg', 'SOLUSDT', 'LONG', 'OPEN', -2, -300, 150, 0, '2026-06-11 07:00:00', 1),
    ('t-dup', 'XRPUSDT', 'LONG', 'OPEN', 100, 52, 0.52, 1, '2026-06-11 07:00:00', 3),
    ('t-dup', 'XRPUSDT', 'LONG', 'OPEN', 100, 52, 0.52, 1, '2026-06-11 07:00:00', 3),
    ('t-race', 'ADAUSDT', 'LONG', 'OPEN', 10, 4, 0.4, 1, '2026-06-11 07:00:00', 2),
    ('t-race', 'ADAUSDT', 'LONG', 'OPEN', 20, 8, 0.4, 1, '2026-06-11 07:01:00', 2),
    ('t-done', 'DOTUSDT', 'SHORT', 'OPEN', 5, 30, 6, 2, '2026-06-11 06:00:00', 1),
    ('t-done', 'DOTUSDT', 'SHORT', 'CLOSED', 0, 0, 6, 2, '2026-06-11 06:30:00', 2)"""


def _clickhouse_incident(server: Any) -> tuple[str, str, Any]:
    import httpx

    database = f"dolphin_{os.urandom(5).hex()}"
    base = f"http://127.0.0.1:{server.http_port}/"

    def sql(statement: str) -> str:
        response = httpx.post(base, content=statement.encode(), timeout=30)
        assert response.status_code == 200, response.text
        return response.text

    sql(f"CREATE DATABASE {database}")
    sql(INCIDENT_DDL.format(db=database))
    sql(INCIDENT_ROWS.format(db=database))
    return database, server.url(database), sql


def _their_table(sql: Any, database: str) -> tuple[str, str]:
    rows = sql(f"SELECT * FROM {database}.position_state ORDER BY trade_id, seq, quantity")
    parts = sql(
        f"SELECT name FROM system.parts WHERE database = '{database}'"
        " AND table = 'position_state' AND active ORDER BY name"
    )
    return rows, parts


def test_incident_004_in_clickhouse_restore_names_the_quarantined_row_and_source(
    clickhouse_server: Any, tmp_path: Path
) -> None:
    from tests.cli_helpers import tv

    database, url, sql = _clickhouse_incident(clickhouse_server)
    before = _their_table(sql, database)
    ledger = tmp_path / "capital_update_ledger.json"
    ledger.write_text(
        json.dumps(
            [
                {"capital": 10_000.0, "ts": "2026-06-10T00:00:00Z"},
                {"capital": 10_412.5, "ts": "2026-06-11T06:00:00Z"},
            ]
        )
    )
    args = ("--state", url, "--table", "position_state")
    proc = tv("positions", "restore", *args, "--ledger", ledger)
    text = proc.stdout
    source = f"clickhouse:{database}.position_state"
    # rows: the latest row of each of the 7 trades
    assert f"source {source}: used: 7 rows, 2 restored, 4 quarantined" in text, text
    assert f"restored 2 position(s) from {source}" in text
    assert "t-btc BTCUSDT LONG 0.25 @ 64000" in text and "t-dup XRPUSDT LONG 100 @ 0.52" in text
    assert (
        "quarantined '1a3d2f9c': non-positive quantity 0.0; row symbol='ATOMUSDT',"
        " side='SHORT', status='OPEN', quantity=0.0, notional=0.0, bars_held=34, seq=5"
        f" ({source} sha1:"
    ) in text, text
    assert "quarantined 't-nan': non-finite notional nan" in text
    assert "quarantined 't-neg': non-positive quantity -2.0" in text
    assert "quarantined 't-race': 2 different rows share the latest seq 2" in text
    assert "capital 10,412.50 (ledger list-shaped, 2 entries)" in text

    report = json.loads(tv("positions", "restore", *args, "--json").stdout)
    assert report["source_used"] == source
    assert sorted((q["trade_id"], q["reason"]) for q in report["quarantined"]) == [
        ("1a3d2f9c", "non-positive quantity 0.0"),
        ("t-nan", "non-finite notional nan"),
        ("t-neg", "non-positive quantity -2.0"),
        (
            "t-race",
            "2 different rows share the latest seq 2 (a write race); cannot tell which is current",
        ),
    ]
    seed = next(q for q in report["quarantined"] if q["trade_id"] == "1a3d2f9c")
    assert seed["row"]["bars_held"] == 34 and seed["row"]["seq"] == 5
    assert seed["row"]["ts"] == 1_781_163_720_000_000  # 2026-06-11 07:42:00 UTC
    assert report["quarantine_copied"] == 0  # the first restore copied them already

    copies = sql(
        f"SELECT trade_id, reason FROM {database}.tickvault_position_quarantine FINAL"
        " ORDER BY trade_id FORMAT TSV"
    )
    assert copies.count("\n") == 4 and "1a3d2f9c\tnon-positive quantity 0.0" in copies
    assert _their_table(sql, database) == before  # their table: same rows, same parts


def test_incident_004_in_clickhouse_show_and_reconcile_leave_their_table_alone(
    clickhouse_server: Any, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from tickvault.cli.positions import app

    database, url, sql = _clickhouse_incident(clickhouse_server)
    before = _their_table(sql, database)
    runner = CliRunner()

    def run(*args: str) -> Any:
        result = runner.invoke(app, [*args, "--state", url, "--table", "position_state", "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    shown = run("show")
    assert [p["trade_id"] for p in shown["positions"]] == ["t-btc", "t-dup"]
    assert sorted(m["trade_id"] for m in shown["malformed"]) == [
        "1a3d2f9c",
        "t-nan",
        "t-neg",
        "t-race",
    ]
    assert shown["rows"] == 12 and shown["quarantined"] == 0  # show writes nothing
    listed = run("reconcile")
    assert sorted(m["trade_id"] for m in listed["latest"]) == [
        "1a3d2f9c",
        "t-nan",
        "t-neg",
        "t-race",
    ]
    assert listed["superseded"] == [] and listed["tombstones"] == []
    applied = run("reconcile", "--apply")
    assert sorted(t["trade_id"] for t in applied["tombstones"] if t["seq"] is not None) == [
        "1a3d2f9c",
        "t-nan",
        "t-neg",
        "t-race",
    ]
    after = run("restore")
    assert [p["trade_id"] for p in after["restored"]] == ["t-btc", "t-dup"]
    assert after["quarantined"] == []
    assert run("reconcile")["latest"] == []
    # tickvault wrote only to its own tables; theirs has the same rows and parts
    assert _their_table(sql, database) == before
    tables = sql(f"SELECT name FROM system.tables WHERE database = '{database}' ORDER BY name")
    assert tables.split() == [
        "position_state",
        "tickvault_position_quarantine",
        "tickvault_position_starts",
        "tickvault_position_tombstones",
    ]
    # a new row from their trader supersedes the tombstone: the trade is judged again
    sql(
        f"INSERT INTO {database}.position_state VALUES ('1a3d2f9c', 'ATOMUSDT', 'SHORT',"
        " 'OPEN', 50, 420.5, 8.41, 35, '2026-06-12 07:00:00', 6)"
    )
    again = run("restore")
    assert [p["trade_id"] for p in again["restored"]] == ["1a3d2f9c", "t-btc", "t-dup"]


def test_incident_004_in_clickhouse_selected_by_the_config_file(
    clickhouse_server: Any, tmp_path: Path
) -> None:
    """``[positions] state``/``table`` in the config do what ``--state``/``--table`` do; a
    flag given on the command line still wins over the file."""
    from typer.testing import CliRunner

    from tickvault.cli.positions import app

    database, url, _ = _clickhouse_incident(clickhouse_server)
    config = tmp_path / "tickvault.toml"
    config.write_text(f'[positions]\nstate = "{url}"\ntable = "position_state"\n')
    runner = CliRunner()
    result = runner.invoke(app, ["show", "--config", str(config), "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert [p["trade_id"] for p in shown["positions"]] == ["t-btc", "t-dup"]
    assert "1a3d2f9c" in [m["trade_id"] for m in shown["malformed"]]
    # the flag overrides the file: an empty embedded state instead of ClickHouse
    local = tmp_path / "local.sqlite3"
    result = runner.invoke(
        app, ["show", "--config", str(config), "--state", f"sqlite://{local}", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["positions"] == []
    restored = runner.invoke(app, ["restore", "--config", str(config), "--dry-run"])
    assert restored.exit_code == 0, restored.output
    assert f"restored 2 position(s) from clickhouse:{database}.position_state" in restored.stdout
