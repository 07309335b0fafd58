"""An asyncio circuit breaker for store writes and bus publishes.

States and transitions
----------------------
* **closed**: calls go through. ``failure_threshold`` consecutive failures open it.
* **open**: calls are refused at once with :class:`BreakerOpen` (no load on the sick
  dependency) until the open timeout has passed. The timeout of the k-th consecutive opening
  is ``min(open_max_s, open_base_s * 2**(k-1))`` scaled by a random factor in
  ``[1 - jitter, 1]``, so many breakers never retry in lockstep and none waits past the cap.
* **half-open**: exactly one trial call at a time is admitted; the others are refused. A
  failure re-opens the breaker with the next, longer timeout; ``success_threshold``
  consecutive successes close it and reset the backoff.

Only failures that say "the dependency is down" count (the ``is_failure`` predicate): a
store refusing bad *data* (``BatchRejected``) proves the store is up and counts as success.
A cancelled call counts as neither.

Every transition is published on an :class:`~tickvault.core.events.EventLog` (kind
``breaker.transition``) and kept in :meth:`CircuitBreaker.snapshot`, which ``tickvault
status`` shows.

Why not a library: the maintained asyncio breakers we looked at (``purgatory``,
``aiobreaker``) close after the first half-open success, have a fixed open timeout without
jittered exponential growth, and admit concurrent half-open calls; those are exactly the
semantics this project needs to control, so the ~150 lines live here.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from tickvault.core.backoff import capped_exponential
from tickvault.core.errors import BatchRejected, TickvaultError
from tickvault.core.events import EVENTS, EventLog

T = TypeVar("T")


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class BreakerOpen(TickvaultError):
    """The breaker refused the call; ``retry_in_s`` says when a trial will be admitted."""

    def __init__(self, name: str, retry_in_s: float) -> None:
        super().__init__(f"circuit breaker {name!r} is open (next trial in {retry_in_s:.2f}s)")
        self.name = name
        self.retry_in_s = retry_in_s


@dataclass(frozen=True)
class BreakerPolicy:
    failure_threshold: int = 5
    """Consecutive failures that open a closed breaker."""
    success_threshold: int = 2
    """Consecutive half-open successes that close it."""
    open_base_s: float = 0.5
    """Open timeout of the first opening."""
    open_max_s: float = 30.0
    """Cap of the open timeout."""
    jitter: float = 0.2
    """The timeout is scaled by a random factor in ``[1 - jitter, 1]``."""


def _default_is_failure(exc: BaseException) -> bool:
    return isinstance(exc, Exception) and not isinstance(exc, BatchRejected)


class CircuitBreaker:
    """See the module docstring. ``await breaker.call(lambda: store.write(kind, table))``."""

    def __init__(
        self,
        name: str,
        policy: BreakerPolicy | None = None,
        *,
        events: EventLog | None = None,
        is_failure: Callable[[BaseException], bool] = _default_is_failure,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.policy = policy or BreakerPolicy()
        self.events = events if events is not None else EVENTS
        self.is_failure = is_failure
        self._rng = rng or random.Random()
        self._clock = clock
        self.state = BreakerState.CLOSED
        self.consecutive_failures = 0
        self.half_open_successes = 0
        self.openings = 0
        """Consecutive openings since the breaker last closed (drives the backoff)."""
        self.times_opened = 0
        self.refused = 0
        self.last_error: str | None = None
        self.open_until = 0.0
        self.current_timeout_s = 0.0
        self.changed_at = time.time()
        self.transitions: deque[dict[str, Any]] = deque(maxlen=20)
        self._trial = False
        self._changed = asyncio.Event()

    # -- admission --------------------------------------------------------------------------

    def retry_in_s(self) -> float:
        return max(0.0, self.open_until - self._clock()) if self.state is BreakerState.OPEN else 0.0

    @property
    def available(self) -> bool:
        """Would a call be admitted now (closed, or a trial is due and none is running)?"""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            return self._clock() >= self.open_until
        return not self._trial

    def _admit(self) -> bool:
        """Admit a call or raise BreakerOpen; True when the call is a half-open trial."""
        if self.state is BreakerState.CLOSED:
            return False
        if self.state is BreakerState.OPEN:
            if self._clock() < self.open_until:
                self.refused += 1
                raise BreakerOpen(self.name, self.retry_in_s())
            self._transition(BreakerState.HALF_OPEN, "open timeout elapsed: one trial call")
        if self._trial:
            self.refused += 1
            raise BreakerOpen(self.name, 0.0)
        self._trial = True
        return True

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn`` through the breaker; raise :class:`BreakerOpen` if it is refused."""
        trial = self._admit()
        try:
            result = await fn()
        except asyncio.CancelledError:
            if trial:
                self._trial = False
                self._changed.set()
            raise
        except BaseException as exc:
            if trial:
                self._trial = False
            if self.is_failure(exc):
                self.record_failure(exc)
            else:
                self.record_success()
            raise
        if trial:
            self._trial = False
        self.record_success()
        return result

    async def wait_ready(self, stop: asyncio.Event | None = None) -> bool:
        """Wait until a call would be admitted; False if ``stop`` was set first."""
        while not self.available:
            if stop is not None and stop.is_set():
                return False
            self._changed.clear()
            timeout = self.retry_in_s() if self.state is BreakerState.OPEN else 0.5
            waiters = [asyncio.ensure_future(self._changed.wait())]
            if stop is not None:
                waiters.append(asyncio.ensure_future(stop.wait()))
            try:
                await asyncio.wait(
                    waiters, timeout=max(timeout, 0.001), return_when="FIRST_COMPLETED"
                )
            finally:
                for w in waiters:
                    w.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await w
        return not (stop is not None and stop.is_set())

    # -- outcomes ---------------------------------------------------------------------------

    def record_success(self) -> None:
        if self.state is BreakerState.HALF_OPEN:
            self.half_open_successes += 1
            if self.half_open_successes >= self.policy.success_threshold:
                self.openings = 0
                self._transition(
                    BreakerState.CLOSED, f"{self.half_open_successes} successful trial(s)"
                )
        self.consecutive_failures = 0
        self._changed.set()

    def record_failure(self, exc: BaseException | str) -> None:
        self.last_error = str(exc)
        self.consecutive_failures += 1
        if self.state is BreakerState.HALF_OPEN or (
            self.state is BreakerState.CLOSED
            and self.consecutive_failures >= self.policy.failure_threshold
        ):
            self._open()
        self._changed.set()

    def _open(self) -> None:
        p = self.policy
        self.openings += 1
        self.times_opened += 1
        base = capped_exponential(self.openings - 1, p.open_base_s, p.open_max_s)
        self.current_timeout_s = base * (1.0 - p.jitter * self._rng.random())
        self.open_until = self._clock() + self.current_timeout_s
        self._transition(
            BreakerState.OPEN,
            f"{self.consecutive_failures} consecutive failure(s), last: {self.last_error};"
            f" next trial in {self.current_timeout_s:.2f}s",
        )

    def _transition(self, to: BreakerState, reason: str) -> None:
        before = self.state
        self.state = to
        self.half_open_successes = 0
        self.changed_at = time.time()
        record = {"at": self.changed_at, "from": before.value, "to": to.value, "reason": reason}
        self.transitions.append(record)
        self.events.emit(
            f"breaker:{self.name}",
            "breaker.transition",
            f"circuit breaker {self.name}: {before.value} -> {to.value} ({reason})",
            level="info" if to is BreakerState.CLOSED else "warning",
            breaker=self.name,
            from_state=before.value,
            to_state=to.value,
            reason=reason,
            retry_in_s=self.retry_in_s(),
        )
        self._changed.set()

    def snapshot(self) -> dict[str, Any]:
        """JSON-able state for ``tickvault status``."""
        return {
            "name": self.name,
            "state": self.state.value,
            "since": self.changed_at,
            "consecutive_failures": self.consecutive_failures,
            "times_opened": self.times_opened,
            "refused": self.refused,
            "retry_in_s": round(self.retry_in_s(), 3),
            "open_timeout_s": round(self.current_timeout_s, 3),
            "last_error": self.last_error,
            "transitions": list(self.transitions),
        }
