"""What the web layer reads of a running pipeline: :class:`ServedPipeline`.

The HTTP API, the dashboard and the metrics are typed on this protocol, not on
:class:`tickvault.service.pipeline.Pipeline` (which satisfies it structurally), so the web
layer never imports the service that serves it. Every member is read-only here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from tickvault.core.snapshot import LiveProvider, StatusProvider

if TYPE_CHECKING:
    from tickvault.bus.base import Bus
    from tickvault.delivery.failover import FailoverPublisher
    from tickvault.delivery.publisher import FramePublisher
    from tickvault.delivery.writer import Writer
    from tickvault.guardian.engine import Guardian
    from tickvault.stores.base import Store


class ServedPipeline(StatusProvider, LiveProvider, Protocol):
    """A running pipeline as the web layer sees it."""

    @property
    def started_at(self) -> float:
        """``time.time()`` when the pipeline was built."""

    @property
    def bus(self) -> Bus:
        """The primary bus."""

    @property
    def buses(self) -> list[Bus]:
        """The primary bus, then the ``[bus] fallback`` buses."""

    @property
    def store(self) -> Store: ...

    @property
    def writers(self) -> list[Writer]:
        """One writer per bus, in the order of :attr:`buses`."""

    @property
    def publisher(self) -> FramePublisher: ...

    @property
    def failover(self) -> FailoverPublisher:
        """Its ``names`` are the buses' redacted names, in the order of :attr:`buses`."""

    @property
    def guardian(self) -> Guardian | None:
        """The running guardian, if any."""
