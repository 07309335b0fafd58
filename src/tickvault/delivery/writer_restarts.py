"""Writers the guardian can restart in place (``restart_component`` with ``writer``).

A restart cancels the writers' run and starts it again under the same consumer names, so
each first re-reads its own pending entries (``Bus.read_own_pending``) before new ones:
nothing is acknowledged that was not stored, nothing a writer held is lost, and an entry
whose store commit finished just as the cancel arrived is written again idempotently and
acknowledged then. Offered only when every bus acknowledges per entry: on a log-offset bus
(Kafka) a cancelled run could leave read but uncommitted offsets behind the consumer's
position until the next rebalance, so there the guardian escalates instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from tickvault.delivery.writer import Writer

log = logging.getLogger(__name__)


class RestartableWriters:
    """Runs ``writers`` like ``asyncio.gather`` of their ``run`` and restarts them on request.

    :meth:`run` returns when every writer's run returned (stopped or drained) and re-raises
    a writer's error, exactly as the gather would.
    """

    def __init__(
        self,
        writers: Sequence[Writer],
        stop: asyncio.Event,
        until_drained: asyncio.Event | None = None,
    ) -> None:
        self.writers = list(writers)
        self.stop = stop
        self.until_drained = until_drained
        self.restarts = 0
        self._requested = asyncio.Event()

    @property
    def restartable(self) -> bool:
        return all(w.bus.capabilities.per_entry_ack for w in self.writers)

    async def restart(self) -> None:
        """Ask for a restart; it happens at once in :meth:`run`'s task."""
        self._requested.set()

    async def run(self) -> None:
        while True:
            runs: asyncio.Future[list[None]] = asyncio.gather(
                *(w.run(self.stop, until_drained=self.until_drained) for w in self.writers)
            )
            requested: asyncio.Future[bool] = asyncio.ensure_future(self._requested.wait())
            waits: set[asyncio.Future[Any]] = {runs, requested}
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if runs.done():
                requested.cancel()
                runs.result()
                return
            self._requested.clear()
            runs.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runs
            self.restarts += 1
            log.warning(
                "writers restarted (%s); each re-reads its own pending entries first",
                ", ".join(w.config.consumer for w in self.writers),
            )
