"""The one backoff policy and retry helper (tickvault.core.backoff)."""

from __future__ import annotations

import asyncio
import random

import pytest

from tickvault.core.backoff import Backoff, capped_exponential, retry
from tickvault.core.errors import BusError, BusUnavailable, StoreError


def test_steps_grow_by_the_multiplier_up_to_the_cap() -> None:
    b = Backoff(initial=0.05, cap=1.0, jitter="none")
    assert [b.next_delay() for _ in range(7)] == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert b.attempt == 7
    b.reset()
    assert b.attempt == 0 and b.next_delay() == pytest.approx(0.05)
    tripled = Backoff(initial=1.0, cap=100.0, multiplier=3.0, jitter="none")
    assert [tripled.delay(n) for n in range(6)] == [1.0, 3.0, 9.0, 27.0, 81.0, 100.0]


def test_a_huge_attempt_number_gives_the_cap_not_an_overflow() -> None:
    assert capped_exponential(5000, 0.5, 30.0) == 30.0
    assert Backoff(initial=0.5, cap=30.0, jitter="none").delay(10**6) == 30.0
    assert capped_exponential(-3, 0.5, 30.0) == 0.5


def test_full_jitter_draws_from_zero_to_the_step() -> None:
    draws = iter([0.0, 0.5, 0.999])
    b = Backoff(initial=2.0, cap=8.0, jitter="full", rng=lambda: next(draws))
    assert [b.next_delay() for _ in range(3)] == pytest.approx([0.0, 2.0, 7.992])
    seeded = Backoff(initial=0.5, cap=30.0, rng=random.Random(3).random)
    spread = {round(seeded.delay(6), 6) for _ in range(50)}
    assert len(spread) > 40 and all(0.0 <= d <= 30.0 for d in spread)


def test_equal_jitter_stays_in_the_upper_half_of_the_step() -> None:
    draws = iter([0.0, 1.0 - 1e-12, 0.5])
    b = Backoff(initial=4.0, cap=4.0, jitter="equal", rng=lambda: next(draws))
    assert [b.next_delay() for _ in range(3)] == pytest.approx([2.0, 4.0, 3.0])
    rng = random.Random(1)
    policy = Backoff(initial=0.5, cap=30.0, jitter="equal", rng=rng.random)
    for n in range(40):
        ideal = min(30.0, 0.5 * 2**n)
        assert ideal / 2 <= policy.delay(n) <= ideal


def test_the_same_seed_gives_the_same_schedule() -> None:
    def schedule(seed: int) -> list[float]:
        b = Backoff(initial=0.1, cap=5.0, rng=random.Random(seed).random)
        return [b.next_delay() for _ in range(10)]

    assert schedule(42) == schedule(42) != schedule(43)


def test_a_bad_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="jitter"):
        Backoff(initial=0.1, cap=1.0, jitter="half")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="multiplier"):
        Backoff(initial=0.1, cap=1.0, multiplier=0.5)
    with pytest.raises(ValueError):
        Backoff(initial=-1.0, cap=1.0)


async def test_retry_backs_off_until_the_operation_succeeds() -> None:
    failures = [BusUnavailable("down"), BusUnavailable("still down"), BusUnavailable("again")]
    seen: list[tuple[str, float]] = []

    async def op() -> str:
        if failures:
            raise failures.pop(0)
        return "done"

    policy = Backoff(initial=0.001, cap=0.002, jitter="none")
    result = await retry(
        op, backoff=policy, retry_on=BusError, on_error=lambda e, d: seen.append((str(e), d))
    )
    assert result == "done"
    assert seen == [("down", 0.001), ("still down", 0.002), ("again", 0.002)]
    assert policy.attempt == 0  # the caller's policy is a template: each call starts afresh


async def test_retry_lets_other_errors_through_at_once() -> None:
    calls = 0

    async def op() -> None:
        nonlocal calls
        calls += 1
        raise StoreError("not a bus error")

    with pytest.raises(StoreError):
        await retry(op, backoff=Backoff(initial=0.0, cap=0.0), retry_on=BusError)
    assert calls == 1


async def test_on_error_gives_up_by_raising() -> None:
    calls = 0

    async def op() -> None:
        nonlocal calls
        calls += 1
        raise BusUnavailable(f"attempt {calls}")

    def three_tries(exc: BaseException, delay: float) -> None:
        if calls == 3:
            raise exc

    with pytest.raises(BusUnavailable, match="attempt 3"):
        await retry(
            op, backoff=Backoff(initial=0.0, cap=0.0), retry_on=BusError, on_error=three_tries
        )


async def test_a_stop_cuts_the_wait_short() -> None:
    stop = asyncio.Event()
    calls = 0

    class Stopped(Exception):
        pass

    async def op() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            stop.set()  # asked to stop while the bus is down: no hour-long wait
        raise BusUnavailable("down")

    def give_up_when_stopped(exc: BaseException, delay: float) -> None:
        if stop.is_set() and calls > 1:
            raise Stopped from exc

    hour = Backoff(initial=3600.0, cap=3600.0, jitter="none")
    with pytest.raises(Stopped):
        await asyncio.wait_for(
            retry(op, backoff=hour, retry_on=BusError, on_error=give_up_when_stopped, stop=stop),
            timeout=60,
        )
    assert calls == 2
