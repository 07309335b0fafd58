"""Alert grouping, flapping, and delivery over real local HTTP servers (webhook, Bot API)."""

from __future__ import annotations

import itertools
from pathlib import Path

from tickvault.guardian.actions import ActionContext, ActionRunner
from tickvault.guardian.alerts import (
    Alert,
    AlertRouter,
    Dispatcher,
    Message,
    TelegramChannel,
    WebhookChannel,
)
from tickvault.guardian.engine import Guardian
from tickvault.guardian.findings import Finding, Observation, SimClock
from tickvault.guardian.journal import Journal
from tickvault.guardian.policy import Policy

from .alert_receiver import Receiver
from .polling import eventually


async def test_flapping_finding_causes_no_recovery_and_at_most_one_alert_per_group_interval(
    tmp_path: Path,
) -> None:
    clock = SimClock(0.0)
    restarts: list[float] = []

    async def restart() -> None:
        restarts.append(clock.now())

    cycle = itertools.count()

    async def observe() -> list[Observation]:
        bad = next(cycle) % 2 == 0  # alternating every cycle
        f = Finding(
            "writer/trades/BTC",
            "writer.stale",
            "warning",
            {},
            clock.now(),
            "restart_component",
            {"component": "writer"},
        )
        return [Observation("writer/trades/BTC", (f,) if bad else ())]

    journal = Journal(tmp_path / "g.sqlite3")
    router = AlertRouter(group_wait=30, group_interval=300, repeat_interval=3600)
    g = Guardian(
        observe,
        policy=Policy(),
        runner=ActionRunner(
            ActionContext(restarters={"writer": restart}), journal, clock=clock.now
        ),
        router=router,
        journal=journal,
        clock=clock,
    )
    for _ in range(2 * 3600 // 5):
        await g.cycle()
        clock.advance(5)
    assert restarts == []
    assert journal.events(kind="alert") == []
    journal.close()

    # Straight to the router: an alert that fires and resolves every cycle.
    router = AlertRouter(group_wait=30, group_interval=300, repeat_interval=3600)
    sent: list[Message] = []
    alert = Alert("r", "c", "warning", "flap")
    for step in range(2 * 3600 // 5):
        now = step * 5.0
        if step % 2 == 0:
            router.fire(alert, now)
        else:
            router.resolve("r", "c", now)
        sent.extend(router.due(now))
    # Announced (a resource that keeps coming back is not dropped), bounded, and paired:
    # every FIRING is followed by exactly one RESOLVED before the next FIRING.
    kinds = [m.kind for m in sent]
    assert kinds and set(kinds) <= {"firing", "resolved"}
    assert kinds == ["firing", "resolved"] * (len(kinds) // 2)
    assert all(b.at - a.at >= 300 for a, b in itertools.pairwise(sent))
    assert len(sent) <= 2 * 3600 // 300 + 1
    assert all(m.flaps > 0 for m in sent)  # the flapping is said, not hidden


def test_grouping_dedupes_waits_and_resolves() -> None:
    router = AlertRouter(group_wait=30, group_interval=300, repeat_interval=3600)
    a = Alert("store/duckdb", "store.unavailable", "critical", "down")
    b = Alert("store/duckdb", "store.not_writable", "critical", "ro")
    router.fire(a, 0)
    router.fire(a, 5)
    router.fire(b, 10)
    assert router.due(20) == []
    (first,) = router.due(30)
    assert first.kind == "firing" and {x.code for x in first.firing} == {a.code, b.code}
    assert router.due(100) == []
    router.resolve("store/duckdb", None, 120)
    assert router.due(200) == []
    (resolved,) = router.due(330)
    assert resolved.kind == "resolved" and len(resolved.resolved) == 2
    assert router.escalate(a, 400) and not router.escalate(a, 401)
    assert [m.kind for m in router.due(402)] == ["escalation"]


async def test_telegram_honours_429_retry_after_loses_nothing_and_paces_per_chat() -> None:
    with Receiver(throttle=2, retry_after=1) as bot:
        channel = TelegramChannel("123:ABC", "42", api_url=bot.url, min_interval_s=1.0)
        dispatcher = Dispatcher([channel])
        dispatcher.start()
        for i in range(4):
            dispatcher.submit(
                Message("firing", f"r{i}", (Alert(f"r{i}", "c", "warning", "x"),), (), float(i))
            )
        await eventually(lambda: dispatcher.delivered["telegram"] == 4, timeout=30)
        await dispatcher.stop()
    delivered = [b["text"].splitlines()[0] for _, b, _ in bot.accepted]
    assert delivered == [f"[FIRING] r{i}: c since 1970-01-01 00:00:00 UTC" for i in range(4)]
    assert all(p == "/bot123:ABC/sendMessage" for p, _, _ in bot.requests)
    assert all(b["chat_id"] == "42" for _, b, _ in bot.requests)
    stamps = [t for _, _, t in bot.requests]
    assert len(stamps) == 6 and channel.throttled == 2
    assert all(b - a >= 0.95 for a, b in itertools.pairwise(stamps))


async def test_a_failing_channel_never_blocks_the_others() -> None:
    with Receiver(fail=1000) as broken, Receiver() as good:
        dispatcher = Dispatcher(
            [
                WebhookChannel(broken.url),
                TelegramChannel("t", "1", api_url=good.url, min_interval_s=0.0),
            ],
            attempts=2,
            retry_base_s=0.01,
        )
        dispatcher.channels[0].name = "webhook"
        dispatcher.start()
        for i in range(3):
            dispatcher.submit(Message("firing", f"r{i}", (), (), 0.0))
        await eventually(lambda: dispatcher.delivered["telegram"] == 3)
        await eventually(lambda: dispatcher.failed["webhook"] == 3)
        await dispatcher.stop()
    assert len(good.accepted) == 3
