"""``tickvault positions`` commands and the legacy import, on real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tickvault.cli.positions import app
from tickvault.positions import PositionBook, PositionStore, import_jsonl

runner = CliRunner()


def _row(trade_id: str, **kw: Any) -> dict[str, Any]:
    row = {
        "trade_id": trade_id,
        "symbol": "BTCUSDT",
        "side": "LONG",
        "status": "OPEN",
        "quantity": 1.0,
        "notional": 100.0,
        "entry_price": 100.0,
        "bars_held": 0,
        "ts": "2026-06-11T00:00:00Z",
        "seq": 1,
    }
    return row | kw


def _jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _invoke(data_dir: Path, *args: str) -> Any:
    result = runner.invoke(app, [*args, "--data-dir", str(data_dir)])
    return result


def _json(data_dir: Path, *args: str) -> Any:
    result = _invoke(data_dir, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# -- import -----------------------------------------------------------------------------------


def test_import_stores_rows_exactly_as_they_are(tmp_path: Path) -> None:
    src = _jsonl(
        tmp_path / "legacy.jsonl",
        [
            _row("a"),
            _row("b", quantity="12", notional=None),
            '{"trade_id": "c", "status": "OPEN", "quantity": NaN, "seq": 3, "ts": 1781136000}',
            _row("d", status="CLOSED", quantity=0, notional=0, seq=2**70, ts=1_781_136_000_000),
            _row("e", bars_held=True, extra="kept", ts=1_781_136_000_000_000_000),
            "",
            "{broken",
            "[1, 2]",
        ],
    )
    report = _json(tmp_path, "import", str(src))
    assert (report["lines"], report["imported"], report["duplicates"]) == (7, 5, 0)
    assert [(f["line"], f["trade_id"], f["reason"]) for f in report["flagged"]] == [
        (2, "b", "non-numeric quantity '12'"),
        (3, "c", "missing symbol"),
        (4, "d", "non-integer seq '1180591620717411303424'"),
        (5, "e", "non-integer bars_held 'true'"),
    ]
    assert [f["line"] for f in report["unparseable"]] == [7, 8]
    assert report["extra_columns"] == ["extra"]
    with PositionStore(tmp_path / "state.sqlite3", read_only=True) as store:
        rows = {r["trade_id"]: r for r in store.iter_rows()}
    assert rows["b"]["quantity"] == "12" and rows["b"]["notional"] is None
    assert rows["c"]["quantity"] == "NaN"
    assert rows["d"]["seq"] == "1180591620717411303424"
    # every timestamp unit lands on the same instant
    assert {rows[k]["ts"] for k in "acde"} == {1_781_136_000_000_000}
    assert {r["origin"] for r in rows.values()} == {"import"}

    again = _json(tmp_path, "import", str(src))
    assert (again["imported"], again["duplicates"]) == (0, 5)


def test_import_keeps_unparseable_timestamps_as_text(tmp_path: Path) -> None:
    src = _jsonl(tmp_path / "x.jsonl", [_row("a", ts="last tuesday")])
    with PositionStore(tmp_path / "state.sqlite3") as store:
        report = import_jsonl(store, src)
        assert [f.reason for f in report.flagged] == ["non-integer ts 'last tuesday'"]
        assert next(store.iter_rows())["ts"] == "last tuesday"


def test_import_missing_file_is_a_user_error(tmp_path: Path) -> None:
    result = _invoke(tmp_path, "import", str(tmp_path / "nope.jsonl"))
    assert result.exit_code == 2
    assert "no such file" in result.output and "Traceback" not in result.output


# -- show / restore / reconcile -----------------------------------------------------------------


def _seed(tmp_path: Path) -> None:
    with PositionStore(tmp_path / "state.sqlite3") as store:
        book = PositionBook(store)
        book.open("live", "ETHUSDT", "SHORT", 2.0, 3_000.0)
    src = _jsonl(
        tmp_path / "legacy.jsonl",
        [
            _row("old", seq=1, quantity=5.0),
            _row("old", seq=2, quantity=0, notional=0, bars_held=34),
            _row("gone", seq=1, quantity=-1.0),
            _row("gone", seq=2, status="CLOSED", quantity=0, notional=0),
        ],
    )
    assert _invoke(tmp_path, "import", str(src)).exit_code == 0


def test_show(tmp_path: Path) -> None:
    empty = _json(tmp_path / "nothing", "show")
    assert empty == {"positions": [], "malformed": [], "rows": 0, "quarantined": 0}
    assert not (tmp_path / "nothing").exists()  # show creates nothing
    _seed(tmp_path)
    data = _json(tmp_path, "show")
    assert [(p["trade_id"], p["quantity"]) for p in data["positions"]] == [("live", 2.0)]
    assert [(m["trade_id"], m["reason"]) for m in data["malformed"]] == [
        ("old", "non-positive quantity 0")
    ]
    assert data["rows"] == 5
    text = _invoke(tmp_path, "show")
    assert text.exit_code == 0 and "live" in text.stdout and "malformed" in text.stdout


def test_restore_dry_run_then_real(tmp_path: Path) -> None:
    _seed(tmp_path)
    dry = _json(tmp_path, "restore", "--dry-run")
    assert [(p["trade_id"], p["quantity"]) for p in dry["restored"]] == [("live", 2.0)]
    assert [(q["trade_id"], q["reason"]) for q in dry["quarantined"]] == [
        ("old", "non-positive quantity 0")
    ]
    assert [a["source"] for a in dry["sources_tried"]] == ["state-store"]
    assert _json(tmp_path, "show")["quarantined"] == 0
    real = _json(tmp_path, "restore")
    assert real["quarantine_copied"] == 1 and _json(tmp_path, "show")["quarantined"] == 1
    text = _invoke(tmp_path, "restore", "--dry-run")
    assert text.exit_code == 0
    assert "quarantined 'old'" in text.stdout and "restored 1 position(s)" in text.stdout


def test_restore_chain_options(tmp_path: Path) -> None:
    snapshot = tmp_path / "snap.json"
    snapshot.write_text(json.dumps([_row("s", ts=1)]))
    ledger = tmp_path / "ledger.json"
    ledger.write_text(json.dumps([{"capital": 7.0}]))
    data = _json(
        tmp_path / "empty",
        "restore",
        "--dry-run",
        "--snapshot",
        str(snapshot),
        "--redis-url",
        "redis://127.0.0.1:1/0",
        "--ledger",
        str(ledger),
    )
    assert [(a["source"], a["outcome"]) for a in data["sources_tried"]] == [
        ("state-store", "unavailable"),
        (f"json:{snapshot}", "used"),
    ]
    assert [p["trade_id"] for p in data["restored"]] == ["s"]
    assert data["capital"]["shape"] == "list" and data["capital"]["capital"] == 7.0
    missing_snapshot = _json(
        tmp_path / "empty",
        "restore",
        "--dry-run",
        "--snapshot",
        str(tmp_path / "nope.json"),
        "--redis-url",
        "redis://127.0.0.1:1/0",
    )
    assert [a["outcome"] for a in missing_snapshot["sources_tried"]] == [
        "unavailable",
        "unavailable",
        "unavailable",
        "used",
    ]
    assert missing_snapshot["source_used"] == "flat"


def test_reconcile_lists_then_tombstones(tmp_path: Path) -> None:
    _seed(tmp_path)
    listed = _json(tmp_path, "reconcile")
    assert [(m["trade_id"], m["reason"]) for m in listed["latest"]] == [
        ("old", "non-positive quantity 0")
    ]
    assert [(m["trade_id"], m["reason"]) for m in listed["superseded"]] == [
        ("gone", "non-positive quantity -1.0")
    ]
    assert listed["tombstones"] == [] and _json(tmp_path, "show")["rows"] == 5
    applied = _json(tmp_path, "reconcile", "--apply")
    assert [(t["trade_id"], t["row_id"]) for t in applied["tombstones"]] == [
        ("old", listed["latest"][0]["row_id"])
    ]
    with PositionStore(tmp_path / "state.sqlite3", read_only=True) as store:
        history = store.history("old")
    assert [r["status"] for r in history] == ["OPEN", "OPEN", "CLOSED"]  # nothing deleted
    assert history[-1]["origin"] == "reconcile"
    assert "tombstone for malformed row" in history[-1]["close_reason"]
    after = _json(tmp_path, "restore", "--dry-run")
    assert after["quarantined"] == [] and [p["trade_id"] for p in after["restored"]] == ["live"]
    assert _json(tmp_path, "reconcile", "--apply")["tombstones"] == []  # idempotent


def test_guard_command(tmp_path: Path) -> None:
    data = _json(tmp_path, "guard")
    assert data["status"]["starts_in_window"] == 0 and not data["status"]["safe_mode"]


@pytest.mark.parametrize("command", ["show", "reconcile"])
def test_real_command_line_reads_the_data_dir_from_the_environment(
    tmp_path: Path, command: str
) -> None:
    _seed(tmp_path)
    env = dict(os.environ) | {"TICKVAULT_DATA_DIR": str(tmp_path), "COLUMNS": "200"}
    args = [sys.executable, "-m", "tickvault", "positions", command, "--json"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    data = json.loads(proc.stdout)
    assert isinstance(data, dict) and data
