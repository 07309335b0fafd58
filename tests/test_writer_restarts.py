"""The guardian's ``restart_component`` for the writer inside ``tickvault run``.

The pipeline runs its writers restartable; a restart while records flow loses nothing and
stores nothing twice (each writer re-reads its own pending entries first), and the
guardian's action context offers the restart only on buses that acknowledge per entry.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.polling import eventually
from tickvault.core.config import Settings
from tickvault.guardian.actions import ActionContext
from tickvault.service.pipeline import Pipeline
from tickvault.sources.synthetic import SyntheticSource

RECORDS = 60_000


async def test_writer_restarts_mid_run_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    settings.guardian.enabled = False
    source = SyntheticSource(
        rate=0, seed=11, first_id=1, start_us=1_700_000_000_000_000, limit=RECORDS
    )
    async with Pipeline(settings, [source]) as pipeline:
        run = asyncio.create_task(pipeline.run())
        await eventually(lambda: pipeline.restartable is not None, what="writers running")
        restartable = pipeline.restartable
        assert restartable is not None and restartable.restartable  # SQLite: per-entry acks
        for i in range(3):
            floor = pipeline.writer.stats.inserted
            await eventually(
                lambda floor=floor: pipeline.writer.stats.inserted > floor or run.done(),
                timeout=120,
                what=f"records stored before restart {i + 1}",
            )
            if run.done():
                break
            await restartable.restart()
            await eventually(lambda i=i: restartable.restarts == i + 1, what="restarted")
        summary = await asyncio.wait_for(run, timeout=300)
        counts = await pipeline.store.query(
            "SELECT (SELECT count(*) FROM trades) + (SELECT count(*) FROM quotes),"
            " (SELECT count(DISTINCT (symbol, trade_id)) FROM trades)"
            " + (SELECT count(DISTINCT (symbol, update_id)) FROM quotes)"
        )
    assert restartable.restarts >= 1
    assert summary.drained and summary.backlog == 0
    assert list(counts.rows[0]) == [RECORDS, RECORDS]  # every record once, none twice


async def test_the_guardian_is_offered_the_writer_restart_in_run(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    settings.guardian.interval_s = 3600
    source = SyntheticSource(rate=0, seed=2, first_id=1, start_us=1_700_000_000_000_000, limit=100)
    async with Pipeline(settings, [source]) as pipeline:
        pipeline.with_guardian = True  # as `tickvault run` sets it
        await asyncio.wait_for(pipeline.run(), timeout=120)
        guardian = pipeline.guardian
    assert guardian is not None
    ctx: ActionContext = guardian.runner.ctx
    assert set(ctx.restarters) == {"writer"}
    assert guardian.runner.available("restart_component", {"component": "writer"})
