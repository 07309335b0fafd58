"""The crash-loop guard: count starts in a window, persistently, and trip into safe mode.

A supervisor restarts a process that exits; if every start dies on the same stored state,
that is an endless loop (incident 004). The guard records each start in the state store
(``position_starts``); when more than ``max_starts`` starts fall within ``window_seconds``,
the start is a *safe-mode* start: restore only reports, the book opens nothing, and a
critical :class:`AlertEvent` is raised. The process then keeps running, so the supervisor
stops restarting it. Time comes from an injected clock (``time.time`` by default).

Leaving safe mode: the window passes without further starts, or an operator runs
``tickvault positions guard --reset``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Literal

import msgspec

from tickvault.core.errors import PositionInputError
from tickvault.positions.backend import PositionBackend

log = logging.getLogger("tickvault.positions")

Level = Literal["info", "warning", "critical"]


class CrashLoopPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """Safe mode when more than ``max_starts`` starts happen within ``window_seconds``."""

    max_starts: int = 5
    window_seconds: float = 600.0

    def __post_init__(self) -> None:
        if self.max_starts < 1 or not self.window_seconds > 0:
            raise PositionInputError("crash-loop policy needs max_starts >= 1, window > 0")


class GuardDecision(msgspec.Struct, frozen=True, kw_only=True):
    """The guard's verdict on one start."""

    starts_in_window: int
    max_starts: int
    window_seconds: float
    safe_mode: bool


class AlertEvent(msgspec.Struct, frozen=True, kw_only=True):
    """Something a human should hear about; ``kind`` is stable (``positions.crash_loop``)."""

    kind: str
    level: Level
    message: str
    ts: float
    details: dict[str, Any] = msgspec.field(default_factory=dict)


AlertSink = Callable[[AlertEvent], None]


def log_alert(event: AlertEvent) -> None:
    """The default sink: log the event (critical as ERROR, warning as WARNING)."""
    severity = {"critical": logging.ERROR, "warning": logging.WARNING}.get(event.level, 20)
    log.log(severity, "ALERT %s: %s %s", event.kind, event.message, event.details or "")


class CrashLoopGuard:
    """Start counting over one :class:`PositionBackend`."""

    def __init__(
        self,
        store: PositionBackend,
        policy: CrashLoopPolicy | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.policy = policy or CrashLoopPolicy()
        self.clock = clock

    def record_start(self) -> GuardDecision:
        """Persist this start and decide; raises StoreUnavailable if it cannot persist."""
        count = self.store.record_start(self.clock(), self.policy.window_seconds)
        return self._decision(count)

    def status(self) -> GuardDecision:
        """The verdict over the starts recorded within the window now; records nothing."""
        since = self.clock() - self.policy.window_seconds
        return self._decision(sum(1 for t in self.store.starts() if t >= since))

    def reset(self) -> int:
        """Forget recorded starts; return how many."""
        return self.store.clear_starts()

    def _decision(self, count: int) -> GuardDecision:
        return GuardDecision(
            starts_in_window=count,
            max_starts=self.policy.max_starts,
            window_seconds=self.policy.window_seconds,
            safe_mode=count > self.policy.max_starts,
        )
