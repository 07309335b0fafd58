"""``tickvault replay`` starts its producer before it imports anything heavy.

Structural, not timed (``bench/vs_script.py`` has the timings): what the command needs up to
the producer's start (the lock, the format and market checks, the process) loads neither
Arrow nor DuckDB nor the pipeline, the producer itself parses and frames without Arrow, and
the lock is held before the child exists.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tickvault.core.config import load_settings
from tickvault.core.errors import ConfigError
from tickvault.service.owner_lock import DataDirLock
from tickvault.service.replay_start import start_replay

from .test_startup import HEAVY, loaded_after


def test_path_to_the_producer_start_is_light() -> None:
    loaded = loaded_after(
        "import tickvault.cli, tickvault.service.replay_start,"
        " tickvault.sources.binance.capture_formats"
    )
    assert sorted(m for m in loaded if m.split(".")[0] in HEAVY or m in HEAVY) == []
    assert "tickvault.core.records" not in loaded


def test_the_producer_process_needs_no_arrow() -> None:
    """What the producer child imports to parse, frame and publish (see producer._produce)."""
    loaded = loaded_after(
        "import tickvault.delivery.producer, tickvault.delivery.breaker, tickvault.bus,"
        " tickvault.bus.sqlite.bus, tickvault.delivery.checkpoints,"
        " tickvault.delivery.failover, tickvault.delivery.publisher, tickvault.sources.replay"
    )
    assert sorted(m for m in loaded if m.split(".")[0] in HEAVY or m in HEAVY) == []


def test_a_second_replay_fails_before_starting_a_producer(tmp_path: Path) -> None:
    recording = tmp_path / "t.jsonl"
    recording.write_text("")
    settings = load_settings(None, data_dir=tmp_path / "data")
    holder = DataDirLock(settings.data_dir)
    holder.acquire()
    try:
        with pytest.raises(ConfigError, match="in use"):
            start_replay(settings, [recording])
    finally:
        holder.release()
    started = start_replay(settings, [recording])  # free again: lock taken, child started
    try:
        assert started.lock.held
        assert started.producer._proc.pid is not None
    finally:
        started.abandon()
    assert not started.lock.held


def test_missing_file_is_refused_before_the_lock(tmp_path: Path) -> None:
    settings = load_settings(None, data_dir=tmp_path / "data")
    with pytest.raises(ConfigError, match="no such file"):
        start_replay(settings, [tmp_path / "missing.jsonl"])
    assert not (tmp_path / "data" / ".owner.lock").exists()
