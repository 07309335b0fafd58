"""Causes before symptoms: Alertmanager-style inhibition, pure (time is an argument).

When the store is down, the writer holds its in-flight batch and its breaker opens; entries
wait on the bus and the newest rows age. Those are symptoms of one cause, not faults of their
own: judging them would announce five problems and "recover" a healthy consumer group. A
*cause* finding seen in a cycle therefore inhibits its *symptom* findings in that cycle and
for ``hold_s`` after the cause was last seen (the catch-up after an outage).

Inhibited findings are removed before the policy sees them (no recovery, no alert) and are
returned with the cause that explains them, for the journal.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from tickvault.guardian.findings import Finding, Observation


@dataclass(frozen=True)
class Matcher:
    """A finding whose code is ``code`` and whose resource starts with ``resource``."""

    code: str
    resource: str = ""

    def matches(self, f: Finding) -> bool:
        return f.code == self.code and f.resource.startswith(self.resource)


@dataclass(frozen=True)
class InhibitRule:
    name: str
    sources: tuple[Matcher, ...]
    targets: tuple[Matcher, ...]


_STORE_SYMPTOMS = (
    Matcher("breaker.open", "breaker/store"),
    Matcher("writer.stale"),
    Matcher("bus.pending_stale"),
    Matcher("bus.backlog"),
)
_BUS_SYMPTOMS = (
    Matcher("breaker.open", "breaker/bus"),
    Matcher("writer.stale"),
    Matcher("bus.backlog"),
    Matcher("bus.pending_stale"),
)

RULES: tuple[InhibitRule, ...] = (
    InhibitRule(
        "store down",
        (
            Matcher("store.unavailable"),
            Matcher("store.not_writable"),
            Matcher("clickhouse.readonly"),
            Matcher("questdb.unreachable"),
        ),
        _STORE_SYMPTOMS,
    ),
    InhibitRule("bus down", (Matcher("bus.unreachable"),), _BUS_SYMPTOMS),
    # The writer's breaker is its own view of a store fault the store check may not see
    # (a flapping or half-answering store): what waits behind it is not stuck.
    InhibitRule(
        "store breaker open",
        (Matcher("breaker.open", "breaker/store"),),
        (Matcher("writer.stale"), Matcher("bus.pending_stale"), Matcher("bus.backlog")),
    ),
    InhibitRule(
        "bus breaker open",
        (Matcher("breaker.open", "breaker/bus"),),
        (Matcher("writer.stale"), Matcher("bus.backlog")),
    ),
)


@dataclass(frozen=True)
class Inhibited:
    finding: Finding
    rule: str
    cause: Finding


@dataclass
class Inhibitor:
    hold_s: float = 60.0
    rules: tuple[InhibitRule, ...] = RULES
    _last: dict[str, tuple[float, Finding]] = field(default_factory=dict)

    def apply(
        self, observations: list[Observation], now: float
    ) -> tuple[list[Observation], list[Inhibited]]:
        """The observations without inhibited findings, and what was inhibited by what."""
        findings = [f for o in observations for f in o.findings]
        for rule in self.rules:
            for f in findings:
                if any(m.matches(f) for m in rule.sources):
                    self._last[rule.name] = (now, f)
        active = {
            rule.name: self._last[rule.name][1]
            for rule in self.rules
            if rule.name in self._last and now - self._last[rule.name][0] <= self.hold_s
        }
        out: list[Observation] = []
        held: list[Inhibited] = []
        for obs in observations:
            keep: list[Finding] = []
            for f in obs.findings:
                why = next(
                    (
                        r
                        for r in self.rules
                        if r.name in active
                        and active[r.name] is not f
                        and active[r.name].resource != f.resource
                        and any(m.matches(f) for m in r.targets)
                    ),
                    None,
                )
                if why is None:
                    keep.append(f)
                else:
                    held.append(Inhibited(f, why.name, active[why.name]))
            out.append(
                replace(obs, findings=tuple(keep)) if len(keep) != len(obs.findings) else obs
            )
        return out, held
