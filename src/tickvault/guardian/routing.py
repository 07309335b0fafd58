"""Alert routing like Alertmanager's, per resource: pure (time is an argument), no I/O.

A *group* is one resource's alerts (one cause; symptoms of another cause are held back by
:mod:`tickvault.guardian.inhibit` before they get here). A group's life is an *episode*:

* it opens with the first alert; the first message, ``firing``, goes out ``group_wait``
  after that, if the resource is firing then (an episode that cleared and stayed clear for
  ``group_interval`` before then is dropped quietly: nothing was sent, so nothing needs
  resolving; one that keeps coming back is announced, with its flaps counted), and never
  sooner than ``group_interval`` after the previous episode's RESOLVED;
* while it is announced, a finding more severe than any already sent goes out at once
  (``update``; a new, more serious cause must never hide behind an older one); other
  changes (codes added or gone) go out at most once per ``group_interval`` (``update``,
  listing what is firing now and what stopped, so no message names a stale code); an
  unchanged group is repeated every ``repeat_interval`` (``repeat``, "still firing since");
* it closes with exactly one ``resolved`` message, sent once every alert is gone and at
  least ``group_interval`` after the previous message (which bounds a flapping resource to
  one message per ``group_interval``). If it fires again before that, the episode goes on
  (no RESOLVED was sent, so no new FIRING is either) and the next message counts the flap.

So every episode that sent anything ends with exactly one RESOLVED, and between a FIRING and
its RESOLVED there is no other FIRING of the same resource. An ``escalation`` (the policy
gave up on automatic actions) goes out at once, opening the episode if none was announced;
it is resolved like any other episode, but not repeated (a person was told to act; until
``clear_escalation`` the resource only sends its RESOLVED or a more severe update).

Every message carries ``since`` (when its episode opened), which pairs FIRING and RESOLVED.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field, replace
from typing import Any

SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}
KINDS = ("firing", "update", "repeat", "escalation", "resolved")


def utc(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _span(seconds: float) -> str:
    whole = max(0, round(seconds))
    if whole < 120:
        return f"{whole}s"
    if whole < 7200:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


@dataclass(frozen=True)
class Alert:
    """One finding worth telling a person about.

    ``summary`` is what is wrong in plain words, ``did`` what the guardian did about it,
    ``next`` what it will do next, ``runbook`` an absolute link.
    """

    resource: str
    code: str
    severity: str
    summary: str
    evidence: dict[str, Any] = field(default_factory=dict)
    runbook: str | None = None
    did: str = ""
    next: str = ""
    observed_since: float | None = None
    """When the finding was first observed (before ``for`` cycles confirmed it)."""

    @property
    def rank(self) -> int:
        return SEVERITY_RANK.get(self.severity, 0)


@dataclass(frozen=True)
class Message:
    kind: str
    """One of :data:`KINDS`."""
    resource: str
    firing: tuple[Alert, ...]
    resolved: tuple[Alert, ...]
    at: float
    since: float = 0.0
    """When this message's episode opened (pairs a FIRING with its RESOLVED)."""
    code_since: dict[str, float] = field(default_factory=dict)
    healthy_at: float | None = None
    """RESOLVED: when the resource was first seen healthy again."""
    flaps: int = 0
    """Times the resource cleared and came back within this episode since the last message."""
    cleared_at: float | None = None
    """A FIRING held back by ``group_interval`` whose resource cleared before it went out."""

    @property
    def text(self) -> str:
        lines = [self._head()]
        if self.cleared_at is not None:
            lines.append(f"cleared again at {utc(self.cleared_at)}; RESOLVED follows")
        if self.flaps:
            lines.append(
                f"cleared and came back {self.flaps} time(s) since the last message (flapping)"
            )
        for a in self.firing:
            started = self.code_since.get(a.code, self.since)
            lines.append(f"- {a.severity} {a.code} since {utc(started)}: {a.summary}")
            if a.evidence:
                lines.append("  evidence: " + ", ".join(f"{k}={v}" for k, v in a.evidence.items()))
            if a.did:
                lines.append(f"  guardian did: {a.did}")
            if a.next:
                lines.append(f"  next: {a.next}")
            if a.runbook:
                lines.append(f"  runbook: {a.runbook}")
        for a in self.resolved:
            lines.append(f"- no longer firing: {a.code}")
        return "\n".join(lines)

    def _head(self) -> str:
        codes = ", ".join(a.code for a in self.firing)
        r = self.resource
        if self.kind == "firing":
            return f"[FIRING] {r}: {codes} since {utc(self.since)}"
        if self.kind == "update":
            return f"[FIRING] {r}: now {codes} (firing since {utc(self.since)})"
        if self.kind == "repeat":
            return f"[FIRING] {r}: {codes} still firing since {utc(self.since)}"
        if self.kind == "escalation":
            return f"[ESCALATED] {r}: {codes}; automatic actions stopped"
        gone = ", ".join(a.code for a in self.resolved)
        healthy = self.at if self.healthy_at is None else self.healthy_at
        return (
            f"[RESOLVED] {r}: {gone} healthy again at {utc(healthy)}"
            f" (firing since {utc(self.since)}, {_span(healthy - self.since)})"
        )

    def as_dict(self) -> dict[str, Any]:
        def one(a: Alert) -> dict[str, Any]:
            return {
                "code": a.code,
                "severity": a.severity,
                "summary": a.summary,
                "since": self.code_since.get(a.code, self.since),
                "evidence": a.evidence,
                "did": a.did,
                "next": a.next,
                "runbook": a.runbook,
            }

        return {
            "kind": self.kind,
            "resource": self.resource,
            "at": self.at,
            "since": self.since,
            "flaps": self.flaps,
            "cleared_at": self.cleared_at,
            "healthy_at": self.healthy_at,
            "firing": [one(a) for a in self.firing],
            "resolved": [one(a) for a in self.resolved],
            "text": self.text,
        }


@dataclass
class _Group:
    since: float
    created: float = 0.0
    firing: dict[str, Alert] = field(default_factory=dict)
    code_since: dict[str, float] = field(default_factory=dict)
    sent: dict[str, Alert] = field(default_factory=dict)
    """The codes the last message showed as firing (empty: nothing announced yet)."""
    announced: bool = False
    top_sent: int = -1
    last_sent: float = -math.inf
    flaps: int = 0
    clear_since: float | None = None
    escalation: Alert | None = None
    after_resolved: bool = False
    seen: dict[str, Alert] = field(default_factory=dict)
    """Every alert of this episode, for one held back by ``group_interval`` that cleared."""
    owed: bool = False
    """Fired past ``group_wait`` but held back by ``group_interval``: it will be announced."""
    """Only remembers when the last episode's RESOLVED went out."""


class AlertRouter:
    """Groups, deduplicates, times and pairs alerts; see the module docstring."""

    def __init__(
        self,
        group_wait: float = 30.0,
        group_interval: float = 300.0,
        repeat_interval: float = 14_400.0,
    ) -> None:
        self.group_wait = group_wait
        self.group_interval = group_interval
        self.repeat_interval = repeat_interval
        self._groups: dict[str, _Group] = {}
        self._escalated: set[str] = set()

    def _group(self, resource: str, now: float, start: float | None = None) -> _Group:
        began = now if start is None else min(now, start)
        group = self._groups.get(resource)
        if group is None:
            group = self._groups[resource] = _Group(since=began, created=now)
        elif group.after_resolved:  # a new episode (its FIRING waits out group_interval)
            group.after_resolved = False
            group.since, group.clear_since = max(began, group.last_sent), None
            group.created = now
        elif not group.firing and group.clear_since is not None:
            group.clear_since = None  # back before its RESOLVED went out: same episode
            group.flaps += 1
        return group

    def fire(self, alert: Alert, now: float) -> None:
        """Add (or refresh the text of) one alert of ``alert.resource``."""
        group = self._group(alert.resource, now, alert.observed_since)
        known = group.firing.get(alert.code)
        if known is not None and not alert.did:  # a refresh keeps what was done about it
            alert = replace(alert, did=known.did, next=alert.next or known.next)
        group.firing[alert.code] = alert
        group.seen[alert.code] = alert
        group.code_since.setdefault(alert.code, max(group.since, alert.observed_since or now))

    def set_firing(self, resource: str, alerts: list[Alert], now: float) -> None:
        """Make ``alerts`` the resource's whole firing set (codes not in it stop firing)."""
        if not alerts:
            self.resolve(resource, None, now)
            return
        keep = {a.code for a in alerts}
        group = self._groups.get(resource)
        if group is not None:
            for code in [c for c in group.firing if c not in keep]:
                del group.firing[code]
                group.code_since.pop(code, None)
        for alert in alerts:
            self.fire(alert, now)

    def resolve(self, resource: str, code: str | None, now: float) -> None:
        """Resolve one alert of ``resource`` (``code`` None: all of them)."""
        group = self._groups.get(resource)
        if group is None:
            return
        for c in [code] if code is not None else list(group.firing):
            group.firing.pop(c, None)
            group.code_since.pop(c, None)
        if group.firing:
            return
        if group.clear_since is None:
            group.clear_since = now

    def escalate(self, alert: Alert, now: float) -> bool:
        """One escalation message for the resource (False if already escalated)."""
        if alert.resource in self._escalated:
            return False
        self._escalated.add(alert.resource)
        group = self._group(alert.resource, now)
        group.firing[alert.code] = alert
        group.code_since.setdefault(alert.code, now)
        group.escalation = alert
        return True

    def clear_escalation(self, resource: str) -> None:
        self._escalated.discard(resource)

    def firing(self) -> dict[str, list[str]]:
        """Codes firing now per resource (announced or not)."""
        return {r: sorted(g.firing) for r, g in self._groups.items() if g.firing}

    def _message(self, kind: str, resource: str, g: _Group, now: float) -> Message:
        shown = g.firing or (g.seen if kind == "firing" else {})  # owed, cleared since
        resolved = tuple(a for c, a in g.sent.items() if c not in shown)
        firing = tuple(shown.values()) if kind != "resolved" else ()
        code_since = {c: g.code_since.get(c, g.since) for c in shown} or dict(g.code_since)
        cleared = g.clear_since if kind == "firing" and not g.firing else None
        msg = Message(
            kind,
            resource,
            firing,
            resolved,
            now,
            since=g.since,
            code_since=code_since,
            healthy_at=g.clear_since if kind == "resolved" else None,
            flaps=g.flaps,
            cleared_at=cleared,
        )
        g.sent = dict(shown)
        g.top_sent = max([g.top_sent, *(a.rank for a in firing)])
        g.announced = True
        g.owed = False
        g.last_sent = now
        g.flaps = 0
        return msg

    def due(self, now: float) -> list[Message]:
        """Messages to send now; call once per cycle."""
        out: list[Message] = []
        for resource, g in list(self._groups.items()):
            since_last = now - g.last_sent
            if g.escalation is not None:
                g.escalation = None
                out.append(self._message("escalation", resource, g, now))
            elif not g.announced:
                waited = now - g.created >= self.group_wait
                if (g.firing and waited) or g.owed:
                    if since_last >= self.group_interval:
                        out.append(self._message("firing", resource, g, now))
                    else:
                        g.owed = True  # held back only by the interval: never lost
                elif g.clear_since is not None and now - g.clear_since >= self.group_interval:
                    del self._groups[resource]  # cleared before anything was sent: quiet
            elif not g.firing:
                if since_last >= self.group_interval:
                    out.append(self._message("resolved", resource, g, now))
                    # A new episode's FIRING still waits group_interval after this RESOLVED.
                    self._groups[resource] = _Group(
                        since=now, last_sent=now, clear_since=now, after_resolved=True
                    )
            elif max(a.rank for a in g.firing.values()) > g.top_sent or (
                set(g.firing) != set(g.sent) and since_last >= self.group_interval
            ):
                out.append(self._message("update", resource, g, now))
            elif since_last >= self.repeat_interval and resource not in self._escalated:
                out.append(self._message("repeat", resource, g, now))
        return out
