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
from tickvault.guardian.journal import Journal
from tickvault.guardian.policy import Decision, Policy, ResourceState

log = logging.getLogger(__name__)

RUNBOOK_BASE = "docs/guardian.md"
RUNBOOKS: dict[str, str] = {
    "questdb.wal_suspended": (
        f"{RUNBOOK_BASE}#runbook-incident-001-a-suspended-or-damaged-wal: read errorTag and"
        " errorMessage in `SELECT * FROM wal_tables()`, fix the cause (disk space, a bad row),"
        " then `ALTER TABLE <t> RESUME WAL` (or `RESUME WAL FROM TXN <n>` to skip a bad"
        " transaction). If the WAL is damaged: restore the table from a backup or re-create it"
        " and replay it with `tickvault rebuild --since <time>`. Never delete txn_seq, _txnlog"
        " or any WAL file."
    ),
    "questdb.wal_damaged": (
        f"{RUNBOOK_BASE}#runbook-incident-001-a-suspended-or-damaged-wal: the sequencer log"
        " is damaged; the table directory was copied to backup_dir. Never delete txn_seq,"
        " _txnlog or any WAL file, never REBASE WAL by reflex: rename the table away and"
        " `tickvault rebuild --since <time>` into a fresh one."
    ),
    "questdb.wal_not_initialised": (
        f"{RUNBOOK_BASE}#runbook-incident-000-a-recovery-loop: a fresh WAL table appears in"
        " wal_tables() after its first commit; if it does not, check that writes reach it."
    ),
}


def runbook_for(code: str) -> str:
    return RUNBOOKS.get(code, f"{RUNBOOK_BASE}#runbooks")


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
    ) -> None:
        self.observe = observe
        self.policy = policy
        self.runner = runner
        self.router = router
        self.journal = journal
        self.clock = clock
        self.dispatcher = dispatcher
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
            await self._act(decision, finding, now)
        self.journal.save_state(
            obs.resource, st.as_dict(), [f.as_dict() for f in obs.findings], now
        )
        return decision

    def _alert(self, finding: Finding, summary: str) -> Alert:
        return Alert(
            finding.resource,
            finding.code,
            finding.severity,
            summary,
            dict(finding.evidence),
            runbook_for(finding.code),
        )

    async def _act(self, decision: Decision, finding: Finding | None, now: float) -> None:
        if decision.decision == "resolve":
            self.router.resolve(decision.resource, None, now)
            return
        if finding is None:
            return
        if decision.decision == "escalate":
            self.router.escalate(self._alert(finding, decision.reason), now)
            return
        self.router.fire(self._alert(finding, decision.reason), now)
        if decision.decision == "recover" and finding.action is not None:
            try:
                await self.runner.run(finding.action, finding.resource, finding.params)
            except Exception as exc:  # refusals are journaled by the runner
                log.warning("guardian action %s on %s: %s", finding.action, finding.resource, exc)

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
