"""The per-resource policy: a pure state machine (no I/O; time is an argument).

One call of :meth:`Policy.observe` per resource per cycle. In order:

1. **Escalated** resources get no automatic action until :meth:`Policy.resume`: ``skip``,
   except ``resolve`` when they become healthy (the escalation was announced, so its end is
   too) and ``alert`` when they fail again after that.
2. **Grace**: a resource younger than ``grace_s`` (by its ``created_at``) is not judged; its
   findings do not count (incident 000: a fresh table has no sequencer files yet).
3. **Cooldown**: for ``cooldown_s`` after a recovery the resource's findings do not count.
4. **Healthy** (no finding): the persistence counter resets; if an alert or recovery was
   announced, the decision is ``resolve``. After ``backoff_reset_s`` healthy the backoff
   starts again from ``backoff_initial_s``.
5. **Persistence**: a finding must be seen ``for_cycles`` consecutive cycles (``skip`` with
   reason ``pending`` until then), so a flapping finding never acts.
6. **Unhealthy**: without an automatic action → ``alert`` (once, until resolved). With one:
   at most ``max_recoveries`` recoveries per ``window_s``; the next one escalates
   (``escalate``, once); between recoveries at least the backoff delay passes
   (``backoff_initial_s`` doubling per recovery, capped at ``backoff_max_s``); otherwise
   ``recover``, which starts the cooldown.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from tickvault.core.backoff import capped_exponential
from tickvault.guardian.findings import Finding, Observation

DECISIONS = ("recover", "alert", "resolve", "escalate", "skip")


@dataclass(frozen=True)
class PolicySettings:
    for_cycles: int = 3
    grace_s: float = 60.0
    cooldown_s: float = 60.0
    backoff_initial_s: float = 10.0
    backoff_max_s: float = 300.0
    backoff_reset_s: float = 600.0
    max_recoveries: int = 3
    window_s: float = 3600.0


@dataclass
class ResourceState:
    """What the policy remembers about one resource (JSON-able, persisted in the journal)."""

    resource: str
    state: str = "healthy"
    """``healthy``, ``grace``, ``pending``, ``unhealthy``, ``cooldown`` or ``escalated``."""
    code: str | None = None
    consecutive: int = 0
    recoveries: list[float] = field(default_factory=list)
    backoff_level: int = 0
    next_recovery_at: float = 0.0
    cooldown_until: float = 0.0
    healthy_since: float | None = None
    alerted: bool = False
    escalated_at: float | None = None
    failing_since: float | None = None
    """When the current unhealthy stretch was first observed (None while healthy)."""
    changed_at: float = 0.0
    last_reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ResourceState:
        known = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass(frozen=True)
class Decision:
    t: float
    resource: str
    decision: str
    state: str
    reason: str
    code: str | None = None
    finding: Finding | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "t": self.t,
            "resource": self.resource,
            "decision": self.decision,
            "state": self.state,
            "reason": self.reason,
        }
        if self.code is not None:
            out["code"] = self.code
        return out


def _fmt(seconds: float) -> str:
    return f"{seconds:g}s"


class Policy:
    """Decides, per resource and cycle, whether to recover, alert, resolve, escalate or skip."""

    def __init__(self, settings: PolicySettings | None = None) -> None:
        self.settings = settings or PolicySettings()
        self.states: dict[str, ResourceState] = {}

    def state(self, resource: str) -> ResourceState:
        return self.states.setdefault(resource, ResourceState(resource))

    def _set(self, st: ResourceState, state: str, now: float, reason: str) -> None:
        if st.state != state:
            st.changed_at = now
        st.state = state
        st.last_reason = reason

    def observe(self, obs: Observation, now: float, *, can_recover: bool) -> Decision | None:
        """Feed one cycle's observation; None means nothing worth a decision line."""
        s = self.settings
        st = self.state(obs.resource)
        finding = obs.primary
        code = finding.code if finding else None

        def decide(decision: str, reason: str) -> Decision:
            st.last_reason = reason
            return Decision(now, obs.resource, decision, st.state, reason, code, finding)

        if st.state == "escalated":
            if finding is None:
                if not st.alerted:
                    return None
                st.alerted = False
                return decide(
                    "resolve",
                    "healthy again; automatic actions stay stopped until"
                    f" `tickvault guardian resume {obs.resource}`",
                )
            if not st.alerted:
                st.alerted = True
                return decide(
                    "alert",
                    f"{code} again while escalated: no automatic action until"
                    f" `tickvault guardian resume {obs.resource}`",
                )
            return decide(
                "skip",
                f"escalated: no automatic action until `tickvault guardian resume {obs.resource}`",
            )
        if obs.created_at is not None and now - obs.created_at < s.grace_s:
            st.consecutive = 0
            age = now - obs.created_at
            self._set(st, "grace", now, "grace")
            if finding is None:
                return None
            return decide("skip", f"grace: resource is {_fmt(age)} old (< {_fmt(s.grace_s)})")
        if now < st.cooldown_until:
            st.consecutive = 0
            if finding is None:
                return None
            left = st.cooldown_until - now
            return decide("skip", f"cooldown: {_fmt(left)} left after a recovery; not judged")
        if finding is None:
            st.consecutive = 0
            st.code = None
            st.failing_since = None
            if st.healthy_since is None:
                st.healthy_since = now
            if now - st.healthy_since >= s.backoff_reset_s:
                st.backoff_level = 0
            was_alerted = st.alerted
            st.alerted = False
            self._set(st, "healthy", now, "healthy")
            if was_alerted:
                return decide("resolve", "healthy again")
            return None
        st.healthy_since = None
        st.code = code
        if st.failing_since is None:
            st.failing_since = now
        st.consecutive += 1
        if st.consecutive < s.for_cycles:
            self._set(st, "pending", now, "pending")
            return decide("skip", f"pending: seen {st.consecutive}/{s.for_cycles} cycles")
        if not can_recover:
            self._set(st, "unhealthy", now, "unhealthy")
            if st.alerted:
                return None
            st.alerted = True
            return decide(
                "alert", f"{code} for {st.consecutive} cycles; no automatic action for it"
            )
        st.recoveries = [r for r in st.recoveries if now - r < s.window_s]
        if len(st.recoveries) >= s.max_recoveries:
            st.alerted = True
            st.escalated_at = now
            self._set(st, "escalated", now, "escalated")
            return decide(
                "escalate",
                f"{len(st.recoveries)} recoveries within {_fmt(s.window_s)} did not fix {code};"
                f" automatic actions stopped until `tickvault guardian resume {obs.resource}`",
            )
        if now < st.next_recovery_at:
            self._set(st, "unhealthy", now, "backoff")
            return decide("skip", f"backoff: next recovery in {_fmt(st.next_recovery_at - now)}")
        delay = capped_exponential(st.backoff_level, s.backoff_initial_s, s.backoff_max_s)
        st.backoff_level += 1
        st.recoveries.append(now)
        st.next_recovery_at = now + delay
        st.cooldown_until = now + s.cooldown_s
        st.consecutive = 0
        st.alerted = True
        self._set(st, "cooldown", now, "recovering")
        return decide(
            "recover",
            f"{code} for {s.for_cycles} cycles; recovery {len(st.recoveries)}/"
            f"{s.max_recoveries} in {_fmt(s.window_s)}; cooldown {_fmt(s.cooldown_s)},"
            f" next recovery no sooner than {_fmt(delay)}",
        )

    def resume(self, resource: str, now: float) -> Decision:
        """A human's ``resume``: forget the recoveries and the backoff, judge afresh."""
        st = self.state(resource)
        was = st.state
        # ``alerted`` survives: an announced problem still gets its RESOLVED.
        fresh = ResourceState(resource, changed_at=now, last_reason="resumed", alerted=st.alerted)
        self.states[resource] = fresh
        return Decision(now, resource, "resume", fresh.state, f"resumed by an operator (was {was})")
