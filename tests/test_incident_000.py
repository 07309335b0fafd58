"""Incident 000: a guardian recovered healthy tables in a loop and flooded Telegram.

The monitor judged a freshly created table by a directory it does not have yet, had no
cooldown and no budget. These replay that timeline through the real policy, the real engine
(with a real webhook receiver) and the ``simulate`` command, on a simulated clock.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from tickvault.guardian.actions import ActionContext, ActionRunner
from tickvault.guardian.alerts import AlertRouter, Dispatcher, WebhookChannel
from tickvault.guardian.engine import Guardian
from tickvault.guardian.findings import Finding, Observation, SimClock
from tickvault.guardian.journal import Journal
from tickvault.guardian.policy import Policy, PolicySettings

from .alert_receiver import Receiver
from .cli_helpers import tv
from .polling import eventually

R = "questdb/market_orderbook"


def _obs(t: float, code: str | None, created_at: float | None = None) -> Observation:
    found = (Finding(R, code, "critical", {}, t, "restart_component", {"component": "x"}),)
    return Observation(R, found if code else (), created_at)


def test_fresh_table_reporting_not_initialised_for_15s_gets_no_recovery() -> None:
    policy = Policy()
    decisions = [
        policy.observe(_obs(t, "questdb.wal_not_initialised", created_at=0.0), t, can_recover=True)
        for t in range(0, 16)
    ]
    assert all(d is not None and d.decision == "skip" for d in decisions)
    assert all("grace" in d.reason for d in decisions if d)
    # ...and once it initialised (no finding), nothing at all happens after the grace.
    later = [
        policy.observe(_obs(t, None, created_at=0.0), t, can_recover=True) for t in range(16, 200)
    ]
    assert later == [None] * len(later)


def test_recovered_resource_is_not_judged_during_cooldown() -> None:
    policy = Policy(PolicySettings(cooldown_s=60))
    got = [policy.observe(_obs(t, "x.broken"), float(t), can_recover=True) for t in range(0, 62)]
    recovers = [d for d in got if d and d.decision == "recover"]
    assert [d.t for d in recovers] == [2.0]
    during = [d for d in got if d and 2 < d.t < 62]
    assert during and all(d.decision == "skip" and "cooldown" in d.reason for d in during)
    assert policy.state(R).consecutive == 0


def _guardian(tmp_path: Path, clock: SimClock, faults: dict[str, bool], url: str) -> Guardian:
    restarts: list[float] = []

    async def restart() -> None:
        restarts.append(clock.now())

    async def observe() -> list[Observation]:
        return [_obs(clock.now(), "x.broken" if faults["on"] else None)]

    ctx = ActionContext(restarters={"x": restart})
    journal = Journal(tmp_path / "guardian.sqlite3")
    g = Guardian(
        observe,
        policy=Policy(),
        runner=ActionRunner(ctx, journal, clock=clock.now),
        router=AlertRouter(group_wait=30, group_interval=300, repeat_interval=4 * 3600),
        journal=journal,
        clock=clock,
        dispatcher=Dispatcher([WebhookChannel(url)]),
    )
    g.restarts = restarts  # type: ignore[attr-defined]
    return g


async def test_persistent_fault_recovers_at_most_budget_then_one_escalation_then_silence(
    tmp_path: Path,
) -> None:
    clock = SimClock(1_000_000.0)
    faults = {"on": True}
    with Receiver() as rx:
        g = _guardian(tmp_path, clock, faults, rx.url)
        g.dispatcher.start()  # type: ignore[union-attr]
        for _ in range(int(86_400 / 5)):  # a simulated day, a cycle every 5 s
            await g.cycle()
            clock.advance(5)
        await eventually(lambda: g.dispatcher.delivered["webhook"] >= 2)  # type: ignore[union-attr]
        await g.dispatcher.drain()  # type: ignore[union-attr]
        restarts = g.restarts  # type: ignore[attr-defined]
        assert len(restarts) == 3
        gaps = [b - a for a, b in itertools.pairwise(restarts)]
        assert all(gap >= 60 for gap in gaps)  # cooldown between recoveries
        kinds = [m["kind"] for m in rx.json_bodies()]
        assert kinds.count("escalation") == 1
        assert kinds == ["firing", "escalation"]
        esc = next(m for m in rx.json_bodies() if m["kind"] == "escalation")
        assert "docs/guardian.md" in esc["firing"][0]["runbook"]
        assert g.policy.state(R).state == "escalated"
        # Resume: the guardian acts again (after the persistence window), and the fault is gone.
        g.resume(R)
        faults["on"] = False
        for _ in range(10):
            await g.cycle()
            clock.advance(5)
        assert len(restarts) == 3
        assert g.policy.state(R).state == "healthy"
        actions = g.journal.events(kind="action_result")
        assert len(actions) == 3 and all(a["detail"]["ok"] for a in actions)
        assert g.journal.events(kind="resume")
        await g.dispatcher.stop()  # type: ignore[union-attr]
        g.journal.close()


def test_simulate_command_replays_the_incident_timeline(tmp_path: Path) -> None:
    lines = []
    # The incident: table re-created at t=0, txn_seq missing for 15 s, then fine...
    lines.append({"t": 0, "resource": "orderbook", "code": "txn_seq_missing", "created_at": 0})
    lines.append({"t": 15, "resource": "orderbook", "code": "ok", "created_at": 0})
    # ...and a real fault that recovery does not fix, on another table, for an hour.
    lines.append({"t": 0, "resource": "trades", "code": "wal_suspended", "recovery_fixes": False})
    lines.append(
        {"t": 3600, "resource": "trades", "code": "wal_suspended", "recovery_fixes": False}
    )
    timeline = tmp_path / "timeline.jsonl"
    timeline.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    proc = tv("guardian", "simulate", timeline, "--interval", "1")
    out = [json.loads(x) for x in proc.stdout.splitlines()]
    assert all(set(d) >= {"t", "resource", "decision", "state", "reason"} for d in out)
    orderbook = [d for d in out if d["resource"] == "orderbook"]
    assert orderbook and {d["decision"] for d in orderbook} == {"skip"}
    trades = [d["decision"] for d in out if d["resource"] == "trades"]
    assert trades.count("recover") == 3
    assert trades.count("escalate") == 1
    after = trades[trades.index("escalate") + 1 :]
    assert after and set(after) == {"skip"}
