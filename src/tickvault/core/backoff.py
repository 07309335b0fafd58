"""One backoff policy and one retry helper for every loop that waits before trying again.

:class:`Backoff` is capped exponential growth with a jitter mode:

* ``"full"``: a delay drawn uniformly from ``[0, d]`` (d the capped exponential step), so
  clients that failed together spread out over the whole window;
* ``"equal"``: drawn from ``[d/2, d]``: spread out, and never near zero;
* ``"none"``: exactly ``d`` (polls of a server's own progress, where spreading adds nothing).

Its ``delay(n)`` is pure (the ``n``-th step, counted from 0), ``next_delay()`` walks the
schedule and ``reset()`` starts it again. The random source is injected (``rng``: a
``() -> float`` in ``[0, 1)``, e.g. ``random.Random(seed).random``) so schedules are
reproducible in tests.

:func:`retry` is the "run it until it works, backing off, logging the error" idiom with a
stop event. It is hand-written rather than taken from ``tenacity``/``backoff``: the callers
need an :class:`asyncio.Event` to cut a wait short and a per-error hook that decides to give
up (a stop request, a deadline, an error that retrying cannot fix), and the whole is a dozen
lines, smaller than adapting a library's stop/wait strategy objects to that.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

T = TypeVar("T")

Jitter = Literal["full", "equal", "none"]


def capped_exponential(attempt: int, initial: float, cap: float, multiplier: float = 2.0) -> float:
    """``min(cap, initial * multiplier ** attempt)``, for any ``attempt >= 0`` (no overflow)."""
    try:
        return min(cap, initial * multiplier ** max(attempt, 0))
    except OverflowError:
        return cap


@dataclass
class Backoff:
    """Capped exponential backoff: step ``n`` is ``min(cap, initial * multiplier**n)``, then
    jittered (see the module docstring). Not shared between concurrent loops: :func:`retry`
    works on a fresh copy (:meth:`restarted`)."""

    initial: float
    cap: float
    multiplier: float = 2.0
    jitter: Jitter = "full"
    rng: Callable[[], float] = field(default=random.random, repr=False, compare=False)
    attempt: int = 0
    """How many delays :meth:`next_delay` has handed out since the last :meth:`reset`."""

    def __post_init__(self) -> None:
        if self.initial < 0 or self.cap < 0 or self.multiplier < 1:
            raise ValueError(
                f"backoff needs initial >= 0, cap >= 0, multiplier >= 1"
                f" (got {self.initial}, {self.cap}, {self.multiplier})"
            )
        if self.jitter not in ("full", "equal", "none"):
            raise ValueError(f"backoff jitter must be full, equal or none, not {self.jitter!r}")

    def ceiling(self, attempt: int) -> float:
        """The un-jittered step ``attempt`` (pure)."""
        return capped_exponential(attempt, self.initial, self.cap, self.multiplier)

    def delay(self, attempt: int) -> float:
        """Step ``attempt`` (from 0) with the jitter applied; draws from ``rng`` at most once."""
        d = self.ceiling(attempt)
        if self.jitter == "full":
            return d * self.rng()
        if self.jitter == "equal":
            return d * (0.5 + self.rng() / 2.0)
        return d

    def next_delay(self) -> float:
        """The next delay of the schedule (the first is about ``initial``)."""
        d = self.delay(self.attempt)
        self.attempt += 1
        return d

    def reset(self) -> None:
        """Start the schedule again (after a success)."""
        self.attempt = 0

    def restarted(self) -> Backoff:
        """A copy of this policy at the start of its schedule."""
        return dataclasses.replace(self, attempt=0)


async def wait_unless_stopped(delay: float, stop: asyncio.Event | None) -> None:
    """Sleep ``delay`` seconds, or less when ``stop`` is set meanwhile."""
    if stop is None:
        await asyncio.sleep(delay)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=delay)


async def retry(
    op: Callable[[], Awaitable[T]],
    *,
    backoff: Backoff,
    retry_on: type[BaseException] | tuple[type[BaseException], ...],
    on_error: Callable[[BaseException, float], None] | None = None,
    stop: asyncio.Event | None = None,
) -> T:
    """``await op()`` until it returns, waiting a :class:`Backoff` delay after each error of
    type ``retry_on`` (any other error propagates at once).

    ``on_error(exc, delay)`` runs after each such error, before the wait: it logs and counts,
    and gives up by raising (the original error with ``raise exc``, or a stop signal of the
    caller's). A set ``stop`` cuts the wait short; the next attempt still runs, so an
    ``on_error`` that gives up when ``stop`` is set is what ends a stopped loop. The schedule
    starts afresh at every call.
    """
    schedule = backoff.restarted()
    while True:
        try:
            return await op()
        except retry_on as exc:
            delay = schedule.next_delay()
            if on_error is not None:
                on_error(exc, delay)
            await wait_unless_stopped(delay, stop)
