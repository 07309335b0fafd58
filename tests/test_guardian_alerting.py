"""Alert episodes, inhibition and the guardian loop on a simulated clock (issue: the live
guardian repeated incident 000's mistakes). Pure and fast; ``test_guardian_live.py`` runs the
same behaviour against real servers."""

from __future__ import annotations

import itertools
from pathlib import Path

from tickvault.guardian.actions import ActionContext, ActionRunner
from tickvault.guardian.alerts import Alert, AlertRouter, Message
from tickvault.guardian.engine import Guardian
from tickvault.guardian.findings import Finding, Observation, SimClock
from tickvault.guardian.inhibit import Inhibitor
from tickvault.guardian.journal import Journal
from tickvault.guardian.policy import Policy, PolicySettings

STORE = "store/clickhouse"


def _paired(messages: list[Message]) -> None:
    """Per resource: FIRING (or ESCALATED) opens, RESOLVED closes, nothing opens twice."""
    for resource in {m.resource for m in messages}:
        open_since: float | None = None
        for m in (m for m in messages if m.resource == resource):
            if m.kind in ("firing", "escalation") and open_since is None:
                open_since = m.since
            elif m.kind == "resolved":
                assert open_since == m.since, f"RESOLVED without its FIRING: {m.text}"
                open_since = None
            else:
                assert m.kind in ("update", "repeat", "escalation") and open_since == m.since
        assert open_since is None, f"{resource}: a FIRING never got its RESOLVED"


def test_a_more_severe_finding_on_an_announced_resource_is_announced_at_once() -> None:
    router = AlertRouter(group_wait=10, group_interval=60, repeat_interval=300)
    router.fire(Alert(STORE, "clickhouse.too_many_parts", "warning", "parts"), 0)
    (first,) = router.due(10)
    assert first.kind == "firing"
    router.fire(Alert(STORE, "store.unavailable", "critical", "down"), 15)
    (update,) = router.due(15)  # not held for group_interval
    assert update.kind == "update" and update.since == first.since
    assert "store.unavailable" in update.text.splitlines()[0]
    # The repeat lists what fires now and says since when.
    router.resolve(STORE, "clickhouse.too_many_parts", 20)
    assert router.due(30) == []
    (changed,) = router.due(75)
    assert [a.code for a in changed.firing] == ["store.unavailable"]
    assert "no longer firing: clickhouse.too_many_parts" in changed.text
    (repeat,) = router.due(75 + 300)
    assert repeat.kind == "repeat"
    assert "still firing since 1970-01-01 00:00:00 UTC" in repeat.text
    assert "too_many_parts" not in repeat.text


def test_resolve_refire_resolve_inside_group_interval_still_gets_its_resolved() -> None:
    router = AlertRouter(group_wait=10, group_interval=60, repeat_interval=3600)
    a = Alert("breaker/bus:primary", "breaker.open", "warning", "open")
    router.fire(a, 0)
    sent = router.due(10)
    for t, on in ((20, False), (25, True), (30, False)):
        router.fire(a, t) if on else router.resolve(a.resource, None, t)
        sent += router.due(t)
    sent += router.due(70)
    assert [m.kind for m in sent] == ["firing", "resolved"]
    assert sent[1].flaps == 1 and "came back 1 time(s)" in sent[1].text
    _paired(sent)


def test_five_store_flaps_give_paired_bounded_messages_and_none_is_lost() -> None:
    router = AlertRouter(group_wait=10, group_interval=60, repeat_interval=3600)
    a = Alert(STORE, "store.unavailable", "critical", "down")
    sent: list[Message] = []
    down = [(t0, t0 + 20) for t0 in (0, 40, 100, 200, 330)]  # five outages of 20 s
    for t in range(0, 600):
        if any(s <= t < e for s, e in down):
            router.fire(a, t)
        else:
            router.resolve(STORE, None, t)
        sent += router.due(t)
    _paired(sent)
    firing = [m for m in sent if m.kind == "firing"]
    resolved = [m for m in sent if m.kind == "resolved"]
    assert len(firing) == len(resolved) >= 3
    # Every outage is inside an announced episode (none is silently dropped)...
    for s, e in down:
        assert any(f.since <= s and r.at >= e for f, r in zip(firing, resolved, strict=True))
    # ...and messages stay at least group_interval apart (bounded under flapping).
    assert all(b.at - a_.at >= 10 for a_, b in itertools.pairwise(sent))
    assert len(sent) <= 600 // 60 + 1


def test_an_episode_that_clears_before_group_wait_sends_nothing() -> None:
    router = AlertRouter(group_wait=10, group_interval=60, repeat_interval=3600)
    router.fire(Alert(STORE, "store.unavailable", "critical", "blip"), 0)
    sent = router.due(0) + router.due(4)
    router.resolve(STORE, None, 5)
    sent += [m for t in range(5, 200) for m in router.due(float(t))]
    assert sent == [] and router.firing() == {}


def _finding(resource: str, code: str, severity: str = "warning", **kw: object) -> Finding:
    action = kw.pop("action", None)
    return Finding(resource, code, severity, dict(kw), 0.0, action)  # type: ignore[arg-type]


def test_a_store_outage_inhibits_its_symptoms_and_for_hold_after() -> None:
    inhibitor = Inhibitor(hold_s=20)
    cause = _finding(STORE, "store.unavailable", "critical")
    symptoms = [
        _finding("breaker/store", "breaker.open"),
        _finding("bus/ticks/writers", "bus.pending_stale", action="stream_upkeep"),
        _finding("writer", "writer.stale"),
    ]
    obs = [Observation(STORE, (cause,))] + [Observation(f.resource, (f,)) for f in symptoms]
    kept, held = inhibitor.apply(obs, 100)
    assert [o.findings for o in kept] == [(cause,), (), (), ()]
    assert {h.finding.code for h in held} == {f.code for f in symptoms}
    assert all(h.cause is cause for h in held)
    later = [Observation(f.resource, (f,)) for f in symptoms[1:]]  # breaker closed again
    assert all(not o.findings for o in inhibitor.apply(later, 115)[0])  # the catch-up
    assert all(o.findings for o in inhibitor.apply(later, 121)[0])  # hold over: judged
    # The store's breaker alone (a store the store check sees answering) holds them too.
    breaker = Observation("breaker/store", (symptoms[0],))
    kept, held = inhibitor.apply([breaker, *later], 200)
    assert kept[0].findings and not any(o.findings for o in kept[1:])
    # A breaker on the bus is not a symptom of the store.
    other = [Observation("breaker/bus:primary", (_finding("breaker/bus:primary", "breaker.open"),))]
    assert inhibitor.apply([Observation(STORE, (cause,)), *other], 200)[0][1].findings


def _guardian(tmp_path: Path, clock: SimClock, observe: object, ran: list[str]) -> Guardian:
    journal = Journal(tmp_path / "guardian.sqlite3")

    async def upkeep_handler(entries: object) -> None:  # pragma: no cover - never called
        ran.append("handler")

    runner = ActionRunner(
        ActionContext(consumer="writer-1", upkeep_handler=upkeep_handler),  # type: ignore[arg-type]
        journal,
        clock=clock.now,
        dry_run=True,
    )
    return Guardian(
        observe,  # type: ignore[arg-type]
        policy=Policy(PolicySettings(for_cycles=2, grace_s=10, cooldown_s=20)),
        runner=runner,
        router=AlertRouter(group_wait=10, group_interval=60, repeat_interval=300),
        journal=journal,
        clock=clock,
        runbook_base="https://docs.example/guardian.md",
    )


async def test_a_store_outage_through_the_loop_is_one_firing_and_one_resolved(
    tmp_path: Path,
) -> None:
    """The live incident's timeline on a simulated clock: the store goes down for 180 s;
    its breaker opens, entries wait, rows age. One FIRING naming the store, one RESOLVED,
    and no action on the bus (the writer holding its batch is not a stuck consumer)."""
    clock = SimClock(1_000_000.0)
    t0 = clock.now()
    down = (t0 + 30, t0 + 210)
    ran: list[str] = []

    async def observe() -> list[Observation]:
        now = clock.now()
        out = down[0] <= now < down[1]
        late = down[0] <= now < down[1] + 15  # the catch-up after the outage
        return [
            Observation(STORE, (_finding(STORE, "store.unavailable", "critical"),) if out else ()),
            Observation(
                "breaker/store", (_finding("breaker/store", "breaker.open"),) if out else ()
            ),
            Observation(
                "bus/ticks/writers",
                (_finding("bus/ticks/writers", "bus.pending_stale", action="stream_upkeep"),)
                if out
                else (),
            ),
            Observation("writer", (_finding("writer", "writer.stale"),) if late else ()),
        ]

    g = _guardian(tmp_path, clock, observe, ran)
    for _ in range(400 // 2):
        await g.cycle()
        clock.advance(2)
    alerts = g.journal.events(kind="alert")
    sent = [(e["detail"]["kind"], e["resource"]) for e in alerts]
    assert sent == [("firing", STORE), ("resolved", STORE)]
    assert [a["code"] for a in alerts[0]["detail"]["firing"]] == ["store.unavailable"]
    assert alerts[0]["detail"]["since"] == alerts[1]["detail"]["since"]
    assert down[0] < alerts[0]["ts"] <= down[0] + 20  # for 2 cycles + group_wait
    assert down[1] <= alerts[1]["ts"] <= down[1] + 60 + 4
    assert g.journal.events(kind="action_planned") == [] and ran == []
    inhibited = g.journal.events(kind="inhibited")
    assert {e["code"] for e in inhibited} == {"breaker.open", "bus.pending_stale", "writer.stale"}
    text = g.journal.events(kind="alert")[0]["detail"]["text"]
    assert "store/clickhouse: store.unavailable since" in text
    assert "runbook: https://docs.example/guardian.md#runbook-store-unavailable" in text
    assert "guardian did: nothing automatic" in text and "next: announce RESOLVED" in text
    g.journal.close()


async def test_an_escalated_resource_that_heals_gets_its_resolved(tmp_path: Path) -> None:
    clock = SimClock(0.0)
    state = {"bad": True}
    restarts: list[float] = []

    async def restart() -> None:
        restarts.append(clock.now())

    async def observe() -> list[Observation]:
        f = Finding("x", "x.broken", "critical", {}, clock.now(), "restart_component",
                    {"component": "x"})  # fmt: skip
        return [Observation("x", (f,) if state["bad"] else ())]

    journal = Journal(tmp_path / "g.sqlite3")
    g = Guardian(
        observe,
        policy=Policy(PolicySettings(for_cycles=1, grace_s=0, cooldown_s=5, max_recoveries=1)),
        runner=ActionRunner(ActionContext(restarters={"x": restart}), journal, clock=clock.now),
        router=AlertRouter(group_wait=0, group_interval=10, repeat_interval=100),
        journal=journal,
        clock=clock,
    )
    for step in range(120):
        state["bad"] = step < 60
        await g.cycle()
        clock.advance(1)
    kinds = [e["detail"]["kind"] for e in journal.events(kind="alert")]
    assert kinds == ["firing", "escalation", "resolved"]
    assert len(restarts) == 1 and g.policy.state("x").state == "escalated"
    journal.close()


async def test_a_new_more_severe_cause_is_announced_and_stale_codes_are_not_repeated(
    tmp_path: Path,
) -> None:
    """The live incident: a warning was firing on the store when the store went down; the
    outage was never announced and the repeat still named the old code."""
    clock = SimClock(0.0)
    codes: dict[str, str | None] = {"code": "clickhouse.too_many_parts"}

    async def observe() -> list[Observation]:
        code = codes["code"]
        severity = "critical" if code == "store.unavailable" else "warning"
        found = (Finding(STORE, code, severity, {}, clock.now()),) if code else ()
        return [Observation(STORE, found)]

    g = _guardian(tmp_path, clock, observe, [])
    for t in range(120):
        codes["code"] = (
            "clickhouse.too_many_parts" if t < 30 else "store.unavailable" if t < 90 else None
        )
        await g.cycle()
        clock.advance(1)
    alerts = g.journal.events(kind="alert")

    def codes_of(detail: dict[str, list[dict[str, str]]]) -> list[str]:
        return [a["code"] for a in detail["firing"] or detail["resolved"]]

    got = [(e["ts"], e["detail"]["kind"], codes_of(e["detail"])) for e in alerts]
    assert [k for _, k, _ in got] == ["firing", "update", "resolved"], got
    assert got[0][2] == ["clickhouse.too_many_parts"]
    assert got[1][2] == ["store.unavailable"] and got[1][0] <= 31  # at once, not after 60 s
    assert "no longer firing: clickhouse.too_many_parts" in alerts[1]["detail"]["text"]
    assert got[2][2] == ["store.unavailable"] and got[2][0] >= 90
    g.journal.close()
