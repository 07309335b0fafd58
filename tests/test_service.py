"""``tickvault run`` / ``demo`` as a user runs them, and commands beside a running process."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from .cli_helpers import spawn, tv, tv_json
from .polling import eventually_sync


def test_query_and_status_work_while_run_holds_the_data_dir(tmp_path: Path) -> None:
    config = tmp_path / "tv.toml"
    config.write_text(
        '[[sources]]\nkind = "synthetic"\nrate = 2000\nsymbols = ["BTCUSDT", "ETHUSDT"]\n'
    )
    data = tmp_path / "data"
    proc = spawn("run", "--config", config, "--data-dir", data)
    try:

        def stored() -> int:
            r = tv(
                "query",
                "SELECT count(*) AS n FROM trades",
                "--data-dir",
                data,
                "--json",
                check=False,
            )
            return int(json.loads(r.stdout)[0]["n"]) if r.returncode == 0 else 0

        eventually_sync(lambda: stored() > 100, what="rows stored by `run`")
        status = tv_json("status", "--data-dir", data)
        assert status["running"] is True
        assert status["store"]["tables"]["trades"] > 0
        assert status["writer"]["inserted"] > 0
        assert status["sources"][0]["kind"] == "synthetic"
        refused = tv("query", "DELETE FROM trades", "--data-dir", data, check=False)
        assert refused.returncode == 2
        assert "only read-only SELECT" in refused.stderr
        assert "Traceback" not in refused.stderr
        second = tv("run", "--config", config, "--data-dir", data, check=False, timeout=30)
        assert second.returncode == 2
        assert "is in use by process" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    after = tv_json("status", "--data-dir", data)
    assert after["running"] is False
    group = after["bus"]["streams"][0]["groups"][0]
    assert group["pending"] == 0 and group["lag"] == 0  # SIGTERM drained everything
    published = after["store"]["tables"]["trades"] + after["store"]["tables"]["quotes"]
    assert published > 100


def test_demo_runs_offline_and_prints_a_summary(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc = tv("demo", "--seconds", "2", "--rate", "5000", "--data-dir", data)
    assert "demo done" in proc.stdout
    assert "backlog 0" in proc.stdout
    counts = tv_json("query", "SELECT count(*) AS n FROM trades", "--data-dir", data)
    assert counts[0]["n"] > 1000


def test_unsupported_backend_urls_fail_clearly(tmp_path: Path) -> None:
    proc = tv("status", "--bus", "kafka://localhost:9092/x", "--data-dir", tmp_path, check=False)
    assert proc.returncode == 2
    assert "kafka" in proc.stderr.lower()
    assert "Traceback" not in proc.stderr
    proc = tv("status", "--bus", "bogus://x", "--data-dir", tmp_path, check=False)
    assert proc.returncode == 2 and "unknown bus URL" in proc.stderr


def test_bad_config_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[bus]\nurll = "sqlite:///x"\n')
    proc = tv("status", "--config", config, "--data-dir", tmp_path, check=False)
    assert proc.returncode == 2
    assert "urll" in proc.stderr
    config.write_text('[[sources]]\nkind = "nope"\n')
    proc = tv("run", "--config", config, "--data-dir", tmp_path, check=False)
    assert proc.returncode == 2 and "unknown kind 'nope'" in proc.stderr


def test_query_before_any_data_explains_what_to_do(tmp_path: Path) -> None:
    proc = tv("query", "SELECT 1", "--data-dir", tmp_path / "empty", check=False)
    assert proc.returncode == 2
    assert "no store at" in proc.stderr


def test_query_works_while_replay_holds_the_data_dir(tmp_path: Path) -> None:
    from tickvault.sources.binance.sample import write_recording

    rec = write_recording(tmp_path / "in.jsonl", 400_000, seed=9)
    data = tmp_path / "data"
    proc = spawn("replay", rec.path, "--data-dir", data, "--json")
    answered_while_running = 0
    try:
        while proc.poll() is None:
            r = tv(
                "query",
                "SELECT count(*) AS n FROM trades",
                "--data-dir",
                data,
                "--json",
                check=False,
            )
            assert "Traceback" not in r.stderr
            assert "lock" not in r.stderr.lower()
            if r.returncode == 0 and proc.poll() is None:
                answered_while_running += 1
    finally:
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert json.loads(out)["stored"] == rec.unique_records
    assert answered_while_running >= 1
