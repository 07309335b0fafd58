"""``tickvault guardian check / status / history / resume`` on a real data dir."""

from __future__ import annotations

import json
from pathlib import Path

from tickvault.guardian.journal import Journal
from tickvault.guardian.policy import ResourceState

from .cli_helpers import tv


def test_check_status_history_and_resume(tmp_path: Path) -> None:
    data = tmp_path / "data"
    tv("demo", "--seconds", "1", "--data-dir", data)
    proc = tv("guardian", "check", "--json", "--data-dir", data, check=False)
    report = json.loads(proc.stdout)
    assert proc.returncode == (1 if report["findings"] else 0)
    assert "bus/ticks/writers" in report["resources"]
    assert "store/duckdb" in report["resources"]
    status = json.loads(tv("guardian", "status", "--json", "--data-dir", data).stdout)
    assert set(report["resources"]) <= set(status["resources"])

    journal = Journal(data / "guardian.sqlite3")
    journal.save_state(
        "questdb/trades",
        ResourceState("questdb/trades", state="escalated", code="questdb.wal_suspended").as_dict(),
        [],
        1.0,
    )
    journal.close()
    tv("guardian", "resume", "questdb/trades", "--data-dir", data)
    status = json.loads(tv("guardian", "status", "--json", "--data-dir", data).stdout)
    assert status["resources"]["questdb/trades"]["state"] == "healthy"
    history = json.loads(tv("guardian", "history", "--json", "--data-dir", data).stdout)
    assert any(e["kind"] == "resume" and e["resource"] == "questdb/trades" for e in history)


def test_check_exits_1_on_an_unhealthy_store(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc = tv(
        "guardian",
        "check",
        "--json",
        "--data-dir",
        data,
        "--store",
        "questdb://127.0.0.1:9?timeout=1",
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    codes = {f["code"] for f in json.loads(proc.stdout)["findings"]}
    assert "store.unavailable" in codes


def test_run_help_shows_the_config_sections() -> None:
    """Rich markup ate ``[bus]``: the help read "TOML config file (, , [])"."""
    text = " ".join(tv("run", "--help").stdout.split())
    assert "TOML config file (tables bus, store, sources, ...)" in text
    assert "(, , [])" not in text
