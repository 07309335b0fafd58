"""The guardian loop: checks → policy → actions → alerts, every step journaled.

:meth:`Guardian.cycle` is one pass and takes its time from the injected clock, so tests run a
simulated day in seconds; :meth:`Guardian.run` repeats it every ``interval_s`` until stopped.
A failing check, action or alert channel never ends the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from tickvault.guardian.actions import ActionRunner
from tickvault.guardian.alerts import Alert, AlertRouter, Dispatcher
from tickvault.guardian.findings import Clock, Finding, Observation
from tickvault.guardian.inhibit import Inhibitor
from tickvault.guardian.journal import Journal
from tickvault.guardian.policy import Decision, Policy, ResourceState
from tickvault.guardian.routing import utc
from tickvault.guardian.texts import runbook_url, what

log = logging.getLogger(__name__)


def runbook_for(code: str, base: str | None = None) -> str:
    return runbook_url(code, base)


ObserveFn = Callable[[], Awaitable[list[Observation]]]


@dataclass
class CycleResult:
    at: float
    observations: list[Observation]
    decisions: list[Decision]


class Guardian:
    def __init__(
        self,
        observe: ObserveFn,
        *,
        policy: Policy,
        runner: ActionRunner,
        router: AlertRouter,
        journal: Journal,
        clock: Clock,
        dispatcher: Dispatcher | None = None,
        inhibitor: Inhibitor | None = None,
        runbook_base: str | None = None,
    ) -> None:
        self.observe = observe
        self.policy = policy
        self.runner = runner
        self.router = router
        self.journal = journal
        self.clock = clock
        self.dispatcher = dispatcher
        self.inhibitor = inhibitor or Inhibitor(policy.settings.cooldown_s)
        self.runbook_base = runbook_base
        self.last: CycleResult | None = None
        self.cycles = 0
        for resource, row in journal.states().items():  # escalations survive restarts
            self.policy.states[resource] = ResourceState.from_dict(row["state"])

    def resume(self, resource: str) -> Decision:
        now = self.clock.now()
        decision = self.policy.resume(resource, now)
        self.router.clear_escalation(resource)
        self.journal.record(now, resource, "resume", decision.reason, state=decision.state)
        self.journal.save_state(resource, self.policy.state(resource).as_dict(), [], now)
        return decision

    async def cycle(self) -> CycleResult:
        now = self.clock.now()
        for op, resource in self.journal.take_requests(now):
            if op == "resume":
                self.resume(resource)
        try:
            observations = await self.observe()
        except Exception as exc:  # a broken check must not stop the guardian
            log.exception("guardian checks failed")
            observations = [
                Observation(
                    "guardian",
                    (
                        Finding(
                            "guardian", "guardian.check_failed", "warning", {"error": str(exc)}, now
                        ),
                    ),
                )
            ]
        observations, inhibited = self.inhibitor.apply(observations, now)
        for held in inhibited:
            self.journal.record(
                now,
                held.finding.resource,
                "inhibited",
                f"{held.finding.code} held back: a symptom of {held.cause.code} on"
                f" {held.cause.resource} ({held.rule})",
                code=held.finding.code,
            )
        decisions: list[Decision] = []
        for obs in observations:
            decision = await self._judge(obs, now)
            if decision is not None:
                decisions.append(decision)
        for message in self.router.due(now):
            self.journal.record(
                now,
                message.resource,
                "alert",
                f"{message.kind}: " + ", ".join(a.code for a in message.firing or message.resolved),
                detail=message.as_dict(),
            )
            if self.dispatcher is not None:
                self.dispatcher.submit(message)
        self.cycles += 1
        self.last = CycleResult(now, observations, decisions)
        return self.last

    async def _judge(self, obs: Observation, now: float) -> Decision | None:
        finding = obs.primary
        before = self.policy.state(obs.resource).state
        can = finding is not None and self.runner.available(finding.action, finding.params)
        decision = self.policy.observe(obs, now, can_recover=can)
        st = self.policy.state(obs.resource)
        if st.state != before:
            self.journal.record(
                now,
                obs.resource,
                "transition",
                f"{before} -> {st.state}: {st.last_reason}",
                code=finding.code if finding else None,
                state=st.state,
                detail={"findings": [f.as_dict() for f in obs.findings]},
            )
        if decision is not None and decision.decision != "skip":
            self.journal.record(
                now,
                obs.resource,
                "decision",
                f"{decision.decision}: {decision.reason}",
                code=decision.code,
                state=decision.state,
                detail={"findings": [f.as_dict() for f in obs.findings]},
            )
            await self._act(decision, obs, now)
        elif st.alerted and obs.findings and st.state in ("unhealthy", "cooldown", "escalated"):
            # Still firing: keep the announced set current (a new, more severe code is
            # announced; a code that went away is no longer listed).
            alerts = [
                self._alert(
                    f,
                    ""
                    if self.runner.available(f.action, f.params)
                    else "nothing automatic (no safe action for it)",
                    "",
                )
                for f in obs.findings
            ]
            self.router.set_firing(obs.resource, alerts, now)
        self.journal.save_state(
            obs.resource, st.as_dict(), [f.as_dict() for f in obs.findings], now
        )
        return decision

    def _next(self, decision: str, resource: str) -> str:
        resolve = "announce RESOLVED when healthy again"
        if decision == "escalate" or self.policy.state(resource).state == "escalated":
            return f"no automatic action until `tickvault guardian resume {resource}`; {resolve}"
        if decision == "recover":
            s = self.policy.settings
            return (
                f"judge it again after the {s.cooldown_s:g}s cooldown; escalate to a person"
                f" after {s.max_recoveries} recoveries in {s.window_s:g}s; {resolve}"
            )
        return f"{resolve}; repeat every {self.router.repeat_interval:g}s while it lasts"

    def _alert(self, finding: Finding, did: str, next_: str) -> Alert:
        return Alert(
            finding.resource,
            finding.code,
            finding.severity,
            what(finding.code),
            dict(finding.evidence),
            runbook_for(finding.code, self.runbook_base),
            did,
            next_ or self._next("alert", finding.resource),
            self.policy.state(finding.resource).failing_since,
        )

    async def _act(self, decision: Decision, obs: Observation, now: float) -> None:
        finding = obs.primary
        if decision.decision == "resolve":
            self.router.resolve(decision.resource, None, now)
            return
        if finding is None:
            return
        nxt = self._next(decision.decision, decision.resource)
        if decision.decision == "escalate":
            self.router.escalate(self._alert(finding, f"stopped: {decision.reason}", nxt), now)
            return
        did = f"nothing automatic ({decision.reason})"
        if decision.decision == "recover" and finding.action is not None:
            did = f"ran {finding.action} at {utc(now)}"
            try:
                result = await self.runner.run(finding.action, finding.resource, finding.params)
                did += ": " + ("done" if result.ok else "failed") + _brief(result.detail)
            except Exception as exc:  # refusals are journaled by the runner
                log.warning("guardian action %s on %s: %s", finding.action, finding.resource, exc)
                did += f": refused ({exc})"
        alerts = [self._alert(f, did if f is finding else "", nxt) for f in obs.findings]
        self.router.set_firing(decision.resource, alerts, now)

    async def run(self, stop: asyncio.Event, interval_s: float) -> None:
        """Cycles until ``stop``; the dispatcher (if any) is started and stopped here."""
        if self.dispatcher is not None:
            self.dispatcher.start()
        try:
            while not stop.is_set():
                try:
                    await self.cycle()
                except Exception:  # journal trouble etc.: log, try again next cycle
                    log.exception("guardian cycle failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=interval_s)
        finally:
            if self.dispatcher is not None:
                await self.dispatcher.drain(timeout=5.0)
                await self.dispatcher.stop()

    def status(self) -> dict[str, Any]:
        return {
            resource: {"state": st.state, "code": st.code, "reason": st.last_reason}
            for resource, st in sorted(self.policy.states.items())
        }


def _brief(detail: dict[str, Any]) -> str:
    keys = ("claimed", "processed", "dead_lettered", "restarted", "drained_frames", "error")
    shown = {k: detail[k] for k in keys if k in detail}
    return " (" + ", ".join(f"{k}={v}" for k, v in shown.items()) + ")" if shown else ""
