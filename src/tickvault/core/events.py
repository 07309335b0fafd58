"""In-process events: what changed, for status pages now and for alerting later.

Components that change state in a way an operator should hear about (a circuit breaker
opening or closing, the spool filling up, a bus failing over) publish an :class:`Event` on
an :class:`EventLog`. The log keeps the most recent events in a bounded ring (so a long
outage cannot grow memory) and calls every subscriber synchronously, in subscription order.

Contract
--------
* ``emit`` never raises: a subscriber that raises is logged and skipped, so alerting can
  never break the data path.
* Events carry a monotonically increasing ``seq`` per log, so a reader polling ``since(seq)``
  sees every event still in the ring exactly once and can tell when it missed some (the
  oldest ``seq`` it gets is larger than the one it asked after, plus one).
* ``level`` is ``info`` (back to normal), ``warning`` (degraded, recovering by itself) or
  ``critical`` (data is being dropped or a human is needed).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

log = logging.getLogger(__name__)

Level = Literal["info", "warning", "critical"]
Subscriber = Callable[["Event"], None]


@dataclass(frozen=True)
class Event:
    seq: int
    at: float
    source: str
    """Who emitted it, e.g. ``breaker:store`` or ``spool``."""
    kind: str
    """What happened, e.g. ``breaker.transition`` or ``spool.full``."""
    level: Level
    message: str
    data: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class EventLog:
    """A bounded ring of recent events plus synchronous subscribers."""

    def __init__(self, keep: int = 1000) -> None:
        self._ring: deque[Event] = deque(maxlen=keep)
        self._subscribers: list[Subscriber] = []
        self._seq = 0

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        """Call ``fn`` for every future event; returns a function that unsubscribes."""
        self._subscribers.append(fn)

        def unsubscribe() -> None:
            if fn in self._subscribers:
                self._subscribers.remove(fn)

        return unsubscribe

    def emit(
        self,
        source: str,
        kind: str,
        message: str,
        *,
        level: Level = "info",
        **data: Any,
    ) -> Event:
        self._seq += 1
        event = Event(self._seq, time.time(), source, kind, level, message, dict(data))
        self._ring.append(event)
        log_level = {"info": logging.INFO, "warning": logging.WARNING}.get(level, logging.ERROR)
        log.log(log_level, "%s: %s", source, message)
        for fn in list(self._subscribers):
            try:
                fn(event)
            except Exception:  # a broken subscriber must not break the data path
                log.exception("event subscriber %r failed", fn)
        return event

    def since(self, seq: int = 0) -> list[Event]:
        """Events with ``seq`` greater than the given one, oldest first."""
        return [e for e in self._ring if e.seq > seq]

    def recent(self, n: int = 50) -> list[Event]:
        return list(self._ring)[-n:]

    @property
    def last_seq(self) -> int:
        return self._seq


EVENTS = EventLog()
"""The process-wide log that components use unless they are given their own."""
