"""Findings (what a check observed) and the clock every time-dependent part takes."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

SEVERITIES = ("info", "warning", "critical")


class Clock(Protocol):
    """Wall-clock seconds. Tests and ``simulate`` pass a :class:`SimClock`."""

    def now(self) -> float: ...


class SystemClock:
    def now(self) -> float:
        return time.time()


class SimClock:
    """A clock that only moves when told to (``advance`` / ``set``)."""

    def __init__(self, start: float = 0.0) -> None:
        self.t = start

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds

    def set(self, t: float) -> None:
        self.t = t


@dataclass(frozen=True)
class Finding:
    """Something wrong with one resource, as a component's own API reported it.

    ``code`` is stable (``questdb.wal_suspended``); ``evidence`` holds the raw values the
    check saw, so an alert or the journal can show why; ``action`` names the allowlisted
    action that may fix it (None: alert only) and ``params`` its arguments.
    """

    resource: str
    code: str
    severity: str
    evidence: dict[str, Any]
    observed_at: float
    action: str | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "resource": self.resource,
            "code": self.code,
            "severity": self.severity,
            "evidence": self.evidence,
            "observed_at": self.observed_at,
            "action": self.action,
            "params": self.params,
        }


@dataclass(frozen=True)
class Observation:
    """One check's view of one resource in one cycle: no findings means healthy.

    ``created_at`` is when the resource came to be (a table created or re-created, a
    component started); resources younger than the policy's ``grace`` are not judged.
    """

    resource: str
    findings: tuple[Finding, ...] = ()
    created_at: float | None = None

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def primary(self) -> Finding | None:
        """The most severe finding (ties: the first reported)."""
        if not self.findings:
            return None
        return max(self.findings, key=lambda f: SEVERITIES.index(f.severity))
