"""The ``replay`` job: recorded files through the whole pipeline until all is stored.

Parsing runs in a producer process (see :mod:`tickvault.delivery.producer`); this process owns the
data dir, runs the writer and answers ``query``/``status``. Used by ``tickvault replay``
and by ``bench/e2e.py`` so that the benchmark measures exactly what users run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tickvault.core.config import Settings
from tickvault.delivery.checkpoints import CheckpointStore
from tickvault.delivery.producer import ProducerProcess, ProducerResult, ReplaySpec
from tickvault.service.owner_lock import DataDirLock
from tickvault.service.replay_start import ReplayStart, check_files
from tickvault.sources.binance.markets import check_market
from tickvault.sources.replay import count_lines, file_key

if TYPE_CHECKING:
    from tickvault.service.pipeline import Pipeline, RunSummary


@dataclass(frozen=True)
class ReplayPlan:
    paths: list[Path]
    total_lines: int
    resume_at: int
    """Lines already published by earlier runs (checkpoints), summed over the files."""


def plan_replay(
    settings: Settings,
    paths: list[Path],
    restart: bool = False,
    *,
    count: bool = True,
    exchange: str = "binance",
) -> ReplayPlan:
    """Check the files and read their checkpoints; raise ConfigError for a missing file.

    ``count=False`` skips counting the lines (only a progress bar needs the total).
    """
    check_files(paths)
    resume_at = 0
    if not restart:
        checkpoints = CheckpointStore(settings.state_path)
        try:
            resume_at = sum(checkpoints.get(file_key(p, exchange))[0] for p in paths)
        finally:
            checkpoints.close()
    total = sum(count_lines(p) for p in paths) if count else 0
    return ReplayPlan(list(paths), total, resume_at)


async def run_replay(
    settings: Settings,
    plan: ReplayPlan,
    *,
    restart: bool = False,
    on_progress: Callable[[Pipeline], None] | None = None,
    handle_signals: bool = False,
    exchange: str = "binance",
    line_format: str = "auto",
    symbol: str | None = None,
    started: ReplayStart | None = None,
) -> tuple[RunSummary, ProducerResult]:
    """Replay ``plan`` and wait until every record is stored and acknowledged.

    ``exchange`` is the Binance market every row is stamped with (``binance``,
    ``binance-usdm``...); ``line_format`` and ``symbol`` are passed to the replay source.
    ``started``: the lock and producer of :func:`start_replay` (then the other producer
    arguments are the ones given there).
    """
    from tickvault.service.pipeline import Pipeline

    check_market(exchange)
    if started is None:
        spec = ReplaySpec(plan.paths, restart, exchange, line_format, symbol)
        started = ReplayStart(DataDirLock(settings.data_dir), ProducerProcess(settings, spec))
    producer = started.producer
    # The owner's lock first (a second replay on the same data dir must fail before it
    # publishes anything), then the child, which starts up while the store opens.
    async with Pipeline(
        settings, [], drain_timeout=None, on_locked=producer.start, lock=started.lock
    ) as pipeline:
        pipeline.producers.append(producer)
        if handle_signals:
            pipeline.install_signal_handlers()
        run_task = asyncio.create_task(pipeline.run())
        while not run_task.done():
            if on_progress is not None:
                on_progress(pipeline)
            await asyncio.wait({run_task}, timeout=0.25)
        summary = run_task.result()
    return summary, producer.result
