"""The first step of a replay, taken before anything heavy is imported.

``tickvault replay`` spends a noticeable part of a short run importing Arrow, DuckDB and
the pipeline. The producer process needs none of that from its parent, so the command
takes the data dir's lock and starts the producer first (:func:`start_replay`); the
child's start-up and first chunks then overlap the owner's. The order that matters is
kept: the lock is held before the child can publish anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tickvault.core.config import Settings
from tickvault.core.errors import ConfigError
from tickvault.delivery.producer import ProducerProcess, ReplaySpec
from tickvault.service.owner_lock import DataDirLock
from tickvault.sources.binance.markets import check_market


@dataclass
class ReplayStart:
    """A replay whose owner lock is held and whose producer already runs."""

    lock: DataDirLock
    producer: ProducerProcess

    def abandon(self) -> None:
        """Stop the producer and let the lock go (the replay will not run after all)."""
        self.producer.kill()
        self.lock.release()


def check_files(paths: list[Path]) -> None:
    for path in paths:
        if not path.is_file():
            raise ConfigError(f"replay: no such file: {path}")


def start_replay(
    settings: Settings,
    paths: list[Path],
    restart: bool = False,
    *,
    exchange: str = "binance",
    line_format: str = "auto",
    symbol: str | None = None,
) -> ReplayStart:
    """Take the data dir's lock and start the producer process, before anything heavy is
    imported here: the child's start-up and first chunks overlap the owner's. Raise
    ConfigError for a missing file, an unknown market or a data dir in use."""
    check_market(exchange)
    check_files(paths)
    lock = DataDirLock(settings.data_dir)
    lock.acquire()
    producer = ProducerProcess(settings, ReplaySpec(paths, restart, exchange, line_format, symbol))
    try:
        producer.start()
    except BaseException:
        lock.release()
        raise
    return ReplayStart(lock, producer)
