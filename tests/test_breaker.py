"""The circuit breaker's state machine, with real time (short timeouts) and real asyncio."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from tickvault.core.errors import BatchRejected, StoreUnavailable
from tickvault.core.events import EventLog
from tickvault.delivery.breaker import BreakerOpen, BreakerPolicy, BreakerState, CircuitBreaker


class Dependency:
    """Something that is up or down; counts the calls that reached it."""

    def __init__(self) -> None:
        self.down = False
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        await asyncio.sleep(0)
        if self.down:
            raise StoreUnavailable("connection refused")
        return "ok"


def make(events: EventLog, **policy: float) -> CircuitBreaker:
    p = BreakerPolicy(
        **{"failure_threshold": 3, "success_threshold": 2, "open_base_s": 0.05, **policy}  # type: ignore[arg-type]
    )
    return CircuitBreaker("store", p, events=events, rng=random.Random(1))


async def test_opens_after_n_failures_refuses_then_closes_after_m_successes() -> None:
    events = EventLog()
    dep, breaker = Dependency(), make(events)
    dep.down = True
    for _ in range(3):
        with pytest.raises(StoreUnavailable):
            await breaker.call(dep)
    assert breaker.state is BreakerState.OPEN and dep.calls == 3
    with pytest.raises(BreakerOpen):  # refused without touching the dependency
        await breaker.call(dep)
    assert dep.calls == 3 and breaker.refused == 1
    dep.down = False
    assert await breaker.wait_ready()
    assert await breaker.call(dep) == "ok"
    assert breaker.state is BreakerState.HALF_OPEN  # one success is not enough (M = 2)
    assert await breaker.call(dep) == "ok"
    assert breaker.state is BreakerState.CLOSED
    moves = [(e.data["from_state"], e.data["to_state"]) for e in events.recent()]
    assert moves == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]
    assert [t["to"] for t in breaker.snapshot()["transitions"]] == ["open", "half_open", "closed"]


async def test_half_open_admits_one_trial_at_a_time() -> None:
    breaker = make(EventLog())
    gate = asyncio.Event()

    async def slow() -> str:
        await gate.wait()
        return "ok"

    for _ in range(3):
        breaker.record_failure("down")
    await breaker.wait_ready()
    trial = asyncio.create_task(breaker.call(slow))
    await asyncio.sleep(0)
    assert breaker.state is BreakerState.HALF_OPEN
    assert not breaker.available
    with pytest.raises(BreakerOpen):
        await breaker.call(slow)
    gate.set()
    assert await trial == "ok"


async def test_open_timeout_grows_with_jittered_backoff_up_to_the_cap() -> None:
    breaker = make(EventLog(), open_base_s=0.01, open_max_s=0.08, jitter=0.5)
    for _ in range(3):
        breaker.record_failure("down")
    timeouts = [breaker.current_timeout_s]
    for _ in range(6):  # every failed trial re-opens with the next, longer timeout
        assert await breaker.wait_ready()
        with pytest.raises(StoreUnavailable):
            await breaker.call(_failing)
        timeouts.append(breaker.current_timeout_s)
    bases = [min(0.08, 0.01 * 2**k) for k in range(7)]
    assert all(0.5 * b <= t <= b for t, b in zip(timeouts, bases, strict=True))
    assert timeouts[-1] > timeouts[0] * 2
    assert breaker.times_opened == 7


async def _failing() -> None:
    raise StoreUnavailable("still down")


async def test_refused_data_counts_as_success_and_cancellation_as_nothing() -> None:
    breaker = make(EventLog())

    async def refuse() -> None:
        raise BatchRejected("CHECK constraint failed")

    for _ in range(5):
        with pytest.raises(BatchRejected):
            await breaker.call(refuse)
    assert breaker.state is BreakerState.CLOSED and breaker.consecutive_failures == 0

    async def hang() -> None:
        await asyncio.sleep(10)

    task = asyncio.create_task(breaker.call(hang))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert breaker.consecutive_failures == 0


async def test_wait_ready_returns_false_when_stopped() -> None:
    breaker = make(EventLog(), open_base_s=30.0, open_max_s=30.0)
    for _ in range(3):
        breaker.record_failure("down")
    stop = asyncio.Event()
    started = time.monotonic()
    waiter = asyncio.create_task(breaker.wait_ready(stop))
    await asyncio.sleep(0.01)
    stop.set()
    assert await asyncio.wait_for(waiter, 5) is False
    assert time.monotonic() - started < 5
