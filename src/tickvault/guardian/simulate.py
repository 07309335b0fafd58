"""``tickvault guardian simulate``: replay a scripted timeline through the real policy.

Timeline: JSON lines ``{"t": <s>, "resource": "<name>", "code": "<finding code or ok>",
"created_at": <s, optional>, "recovery_fixes": <bool, optional, default true>}``. A line sets
the resource's condition from ``t`` on. The guardian cycles every ``interval_s`` from the
first line's ``t`` to the last one's (or ``until``) on a simulated clock; when it decides to
recover and the current condition has ``recovery_fixes`` true, the resource is healthy from
then on (until a later line says otherwise). One decision line per decision:
``{"t", "resource", "decision", "state", "reason"}``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from tickvault.core.errors import GuardianError
from tickvault.guardian.findings import Finding, Observation
from tickvault.guardian.policy import Decision, Policy, PolicySettings


@dataclass(frozen=True)
class TimelineLine:
    t: float
    resource: str
    code: str
    created_at: float | None = None
    recovery_fixes: bool = True


def parse_timeline(lines: Iterable[str]) -> list[TimelineLine]:
    out: list[TimelineLine] = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            doc: Any = orjson.loads(raw)
            out.append(
                TimelineLine(
                    t=float(doc["t"]),
                    resource=str(doc["resource"]),
                    code=str(doc["code"]),
                    created_at=None if doc.get("created_at") is None else float(doc["created_at"]),
                    recovery_fixes=bool(doc.get("recovery_fixes", True)),
                )
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise GuardianError(f"timeline line {number}: {exc!r}: {raw.strip()[:200]}") from None
    return sorted(out, key=lambda x: x.t)


def simulate(
    timeline: list[TimelineLine],
    settings: PolicySettings,
    interval_s: float,
    until: float | None = None,
) -> Iterator[Decision]:
    if not timeline:
        return
    if interval_s <= 0:
        raise GuardianError("interval must be positive")
    policy = Policy(settings)
    current: dict[str, TimelineLine] = {}
    healed: set[str] = set()
    end = max(timeline[-1].t, until if until is not None else timeline[-1].t)
    i = 0
    step = 0
    start = timeline[0].t
    while True:
        now = start + step * interval_s
        if now > end + 1e-9:
            return
        step += 1
        while i < len(timeline) and timeline[i].t <= now + 1e-9:
            line = timeline[i]
            current[line.resource] = line
            healed.discard(line.resource)
            i += 1
        for resource, line in sorted(current.items()):
            faulty = line.code != "ok" and resource not in healed
            finding = (
                Finding(resource, line.code, "warning", {}, now, "simulated") if faulty else None
            )
            obs = Observation(resource, (finding,) if finding else (), line.created_at)
            decision = policy.observe(obs, now, can_recover=True)
            if decision is None:
                continue
            if decision.decision == "recover" and line.recovery_fixes:
                healed.add(resource)
            yield decision
