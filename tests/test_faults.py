"""Faults under the pipeline (a full disk, an unreachable fallback bus): one clear line,
a documented exit code, data consistent, and SIGTERM always ends in time with exit 0.

The full disk is real: a small tmpfs mounted for the test (the suite runs as root, as CI
does), grown afterwards to free space.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tickvault.sources.binance.hostile import write_hostile

from .cli_helpers import cli_env, tv_json
from .polling import eventually_sync
from .servers import free_port


class SmallDisk:
    def __init__(self, path: Path) -> None:
        self.path = path

    def resize(self, size: str) -> None:
        subprocess.run(
            ["mount", "-o", f"remount,size={size}", str(self.path)], check=True, timeout=30
        )


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    try:
        yield SmallDisk(mount)
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False, timeout=30)


def _spawn(*args: str | Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tickvault", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )


def _fill(disk: SmallDisk) -> Path:
    filler = disk.path / "filler"
    with open(filler, "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError:
            pass
    return filler


def test_a_full_disk_is_one_line_exit_3_and_a_rerun_after_freeing_space_stores_all(
    tmp_path: Path, small_disk: SmallDisk
) -> None:
    rec = write_hostile(tmp_path / "in.jsonl", valid=2_000, hostile=0)
    data = small_disk.path / "data"
    store = f"duckdb:///{tmp_path / 'ticks.duckdb'}"
    filler = _fill(small_disk)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tickvault",
            "replay",
            str(rec.path),
            "--data-dir",
            str(data),
            "--store",
            store,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=cli_env(),
    )
    assert proc.returncode == 3, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert "Traceback" not in proc.stderr
    assert len(lines) <= 2  # one message (the terminal may wrap it)
    text = " ".join(lines)
    assert "disk full at" in text and "free disk space" in text
    filler.unlink()
    summary = tv_json("replay", rec.path, "--data-dir", data, "--store", store)
    assert summary["drained"] is True and summary["stored"] == len(rec.valid_trades)


def test_the_bus_disk_filling_up_mid_replay_waits_with_a_clear_line_and_resumes(
    tmp_path: Path, small_disk: SmallDisk
) -> None:
    small_disk.resize("2m")
    rec = write_hostile(tmp_path / "in.jsonl", valid=150_000, hostile=0)
    data = small_disk.path / "data"
    store = tmp_path / "ticks.duckdb"
    log = tmp_path / "stderr.log"
    with open(log, "w") as err_file:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tickvault",
                "replay",
                str(rec.path),
                "--data-dir",
                str(data),
                "--store",
                f"duckdb:///{store}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=err_file,
            text=True,
            env=cli_env(),
        )
        try:
            eventually_sync(
                lambda: "disk full at" in log.read_text() or proc.poll() is not None,
                120,
                "the bus disk to fill up",
            )
            assert proc.poll() is None, log.read_text()
            small_disk.resize("200m")  # space freed: the job goes on by itself
            proc.wait(timeout=180)
        finally:
            if proc.poll() is None:
                proc.kill()
    errors = log.read_text()
    assert proc.returncode == 0, errors
    assert "Traceback" not in errors
    assert "free disk space" in errors
    rows = tv_json(
        "query",
        "SELECT count(*) AS n FROM trades",
        "--data-dir",
        data,
        "--store",
        f"duckdb:///{store}",
    )
    assert rows == [{"n": len(rec.valid_trades)}]


def test_sigterm_with_an_unreachable_fallback_bus_exits_0_within_the_grace(
    tmp_path: Path,
) -> None:
    config = tmp_path / "tv.toml"
    config.write_text(
        "[shutdown]\ngrace_s = 3\n\n"
        '[[sources]]\nkind = "synthetic"\nrate = 2000\nsymbols = ["BTCUSDT"]\n'
    )
    dead = f"redis://127.0.0.1:{free_port()}/0"
    data = tmp_path / "data"
    proc = _spawn(
        "run", "--config", config, "--data-dir", data, "--fallback", dead, "--http-listen", ""
    )
    try:
        eventually_sync(
            lambda: (data / "ticks.duckdb").exists() or proc.poll() is not None, 60, "running"
        )
        assert proc.poll() is None
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "WriterStopped" not in err
    assert took < 3 + 10, took  # the grace, plus start-up of the shutdown path
    assert "stopped:" in err
