"""Checks: each asks a component's own API and turns the answer into observations.

Nothing here looks at files or directory names (incident 000 judged health from a
``txn_seq`` directory that a fresh table does not have yet and picked "the first matching"
table directory). QuestDB tables are found through ``tables()`` and judged through
``wal_tables()``; a table's age is the time the guardian first saw its current identity.

Each check returns one :class:`Observation` per resource it looked at (no findings: healthy)
and never raises: a component that cannot answer is itself a finding.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from tickvault.bus.base import Bus
from tickvault.core.records import KINDS
from tickvault.guardian.clickhouse_checks import clickhouse_findings
from tickvault.guardian.findings import Clock, Finding, Observation
from tickvault.stores.base import Store

LiveFn = Callable[[], dict[str, Any]]
Check = Callable[[], Awaitable[list[Observation]]]

_EPOCH = dt.datetime(1970, 1, 1)


@dataclass(frozen=True)
class Thresholds:
    writer_stale_s: float = 300.0
    backlog_max: int = 100_000
    pending_age_max_s: float = 300.0
    spool_max_bytes: int = 512 << 20
    source_stale_s: float = 120.0
    wal_lag_max: int = 1000
    zero_price_share_max: float = 0.05
    quality_rows: int = 10_000
    probe_timeout_s: float = 2.0
    """A bus that does not answer a check within this is unreachable (a client's own
    reconnect loop must not stall the guardian's cycle)."""


def _epoch(value: Any) -> float | None:
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return float((value - _EPOCH).total_seconds())
    if isinstance(value, int | float):
        return float(value) / 1e6 if value > 1e12 else float(value)
    return None


@dataclass
class Checks:
    """The guardian's checks over one pipeline (any part may be missing)."""

    clock: Clock
    bus: Bus | None = None
    store: Store | None = None
    stream: str = "ticks"
    group: str = "writers"
    live: LiveFn | None = None
    limits: Thresholds = field(default_factory=Thresholds)
    _dead_letters: int | None = None
    _identities: dict[str, tuple[str, float]] = field(default_factory=dict)
    _bus_down: bool = False

    def all(self) -> list[Check]:
        return [
            self.bus_check,
            self.store_check,
            self.questdb_check,
            self.quality_check,
            self.live_check,
            self.writer_check,
        ]

    async def run(self) -> list[Observation]:
        out: list[Observation] = []
        for check in self.all():
            out.extend(await check())
        return out

    def _f(
        self,
        resource: str,
        code: str,
        severity: str,
        evidence: dict[str, Any],
        action: str | None = None,
        **params: Any,
    ) -> Finding:
        return Finding(resource, code, severity, evidence, self.clock.now(), action, params)

    def _seen(self, resource: str, identity: str) -> float:
        """When the guardian first saw ``resource`` with this identity (re-created → new)."""
        known = self._identities.get(resource)
        if known is None or known[0] != identity:
            known = self._identities[resource] = (identity, self.clock.now())
        return known[1]

    # -- bus ------------------------------------------------------------------------------

    async def bus_check(self) -> list[Observation]:
        if self.bus is None:
            return []
        resource = f"bus/{self.stream}/{self.group}"
        self._bus_down = True
        try:
            info = await asyncio.wait_for(self.bus.info(self.stream), self.limits.probe_timeout_s)
            letters = sum(
                (
                    await asyncio.wait_for(
                        self.bus.dead_letter_counts(self.stream), self.limits.probe_timeout_s
                    )
                ).values()
            )
        except TimeoutError:
            err = f"no answer within {self.limits.probe_timeout_s:g}s"
            return [
                Observation(
                    resource, (self._f(resource, "bus.unreachable", "critical", {"error": err}),)
                )
            ]
        except Exception as exc:
            return [
                Observation(
                    resource,
                    (self._f(resource, "bus.unreachable", "critical", {"error": str(exc)}),),
                )
            ]
        self._bus_down = False
        found: list[Finding] = []
        for g in info.groups:
            if g.name != self.group:
                continue
            backlog = g.lag + g.pending
            if backlog > self.limits.backlog_max:
                found.append(
                    self._f(
                        resource,
                        "bus.backlog",
                        "warning",
                        {"backlog": backlog, "max": self.limits.backlog_max},
                    )
                )
            stale = await self._stale_pending(g.pending, g.oldest_pending_age_ms)
            if stale is not None:
                found.append(
                    self._f(
                        resource,
                        "bus.pending_stale",
                        "warning",
                        stale,
                        "stream_upkeep",
                        min_idle_ms=int(self.limits.pending_age_max_s * 1000),
                    )
                )
        previous, self._dead_letters = self._dead_letters, letters
        if previous is not None and letters > previous:
            found.append(
                self._f(
                    resource,
                    "bus.dead_letters_growing",
                    "warning",
                    {"dead_letters": letters, "new": letters - previous},
                )
            )
        return [Observation(resource, tuple(found))]

    def _live_consumers(self) -> set[str]:
        """Consumers of this group that run in this process and are alive (heartbeating)."""
        if self.live is None:
            return set()
        writer = self.live().get("writer") or {}
        name = writer.get("consumer")
        return {str(name)} if name else set()

    async def _stale_pending(self, pending: int, oldest_ms: int | None) -> dict[str, Any] | None:
        """Evidence of entries stuck with a consumer that is not alive, or None.

        Entries held by a live consumer of this process (the writer holding its in-flight
        batch while the store is down, as designed) are not stuck: they are left out, so no
        recovery ever takes entries away from a live consumer.
        """
        limit_s = self.limits.pending_age_max_s
        live = self._live_consumers()
        assert self.bus is not None
        if live and self.bus.capabilities.claim:
            rows = await self.bus.pending(self.stream, self.group, count=10_000)
            others = [p for p in rows if p.consumer not in live]
            age_s = max((p.idle_ms for p in others), default=0) / 1000
            if age_s <= limit_s:
                return None
            return {
                "oldest_pending_age_s": round(age_s, 1),
                "pending": len(others),
                "consumers": sorted({p.consumer for p in others}),
                "held_by_live_consumers": len(rows) - len(others),
            }
        age_s = (oldest_ms or 0) / 1000
        if age_s <= limit_s:
            return None
        return {"oldest_pending_age_s": round(age_s, 1), "pending": pending}

    # -- store ----------------------------------------------------------------------------

    async def store_check(self) -> list[Observation]:
        if self.store is None:
            return []
        resource = f"store/{self.store.url.split('://', 1)[0] or 'store'}"
        found: list[Finding] = []
        try:
            health = await self.store.health()
        except Exception as exc:
            health = None
            found.append(self._f(resource, "store.unavailable", "critical", {"error": str(exc)}))
        if health is not None and not health.ok:
            found.append(
                self._f(resource, "store.unavailable", "critical", {"detail": health.detail})
            )
        elif (
            health is not None
            and not health.writable
            and not getattr(self.store, "read_only", False)
        ):
            found.append(
                self._f(resource, "store.not_writable", "critical", {"detail": health.detail})
            )
        if health is not None and health.ok and self.store.url.startswith("clickhouse"):
            found.extend(await clickhouse_findings(self.store, resource, self._f))
        return [Observation(resource, tuple(found))]

    async def questdb_check(self) -> list[Observation]:
        """QuestDB's own view of its tables (:mod:`tickvault.guardian.questdb_checks`)."""
        from tickvault.guardian.questdb_checks import questdb_check

        return await questdb_check(self)

    # -- data quality ---------------------------------------------------------------------

    async def quality_check(self) -> list[Observation]:
        """Share of zero or non-finite prices among each table's newest rows."""
        if self.store is None:
            return []
        out: list[Observation] = []
        for spec in KINDS.values():
            prices = [c for c in spec.columns if c == "price" or c.endswith("_price")]
            if not prices or "ts_recv" not in spec.columns:
                continue
            resource = f"quality/{spec.table}"
            bad = " OR ".join(f"NOT ({c} > 0 AND {c} < 1e300)" for c in prices)
            sql = (
                f"SELECT count(*) AS n, sum(CASE WHEN {bad} THEN 1 ELSE 0 END) AS bad FROM"
                f" (SELECT {', '.join(prices)} FROM {spec.table} ORDER BY ts_recv DESC"
                f" LIMIT {int(self.limits.quality_rows)}) t"
            )
            try:
                result = await self.store.query(sql)
            except Exception:
                continue  # a missing table is the store check's business
            n, n_bad = result.rows[0] if result.rows else (0, 0)
            n, n_bad = int(n or 0), int(n_bad or 0)
            found: list[Finding] = []
            if n and n_bad / n > self.limits.zero_price_share_max:
                found.append(
                    self._f(
                        resource,
                        "quality.bad_prices",
                        "warning",
                        {"rows": n, "bad": n_bad, "share": round(n_bad / n, 4)},
                    )
                )
            out.append(Observation(resource, tuple(found)))
        return out

    # -- the running pipeline (sources, breakers, spool, writer) ---------------------------

    async def live_check(self) -> list[Observation]:
        if self.live is None:
            return []
        live = self.live()
        started = self.clock.now() - float(live.get("uptime_s") or 0.0)
        out: list[Observation] = []
        for src in live.get("sources") or []:
            resource = f"source/{src.get('name')}"
            found: list[Finding] = []
            if not src.get("connected", True):
                found.append(self._f(resource, "source.disconnected", "warning", dict(src)))
            age = src.get("last_message_age_s")
            if age is not None and age > self.limits.source_stale_s:
                found.append(
                    self._f(resource, "source.stale", "warning", {"last_message_age_s": age})
                )
            if src.get("gaps_open"):
                found.append(
                    self._f(resource, "source.gaps_open", "info", {"gaps_open": src["gaps_open"]})
                )
            out.append(Observation(resource, tuple(found), started))
        for b in live.get("breakers") or []:
            resource = f"breaker/{b.get('name')}"
            found = []
            if b.get("state") in ("open", "half_open"):  # half-open: still not trusted
                found.append(
                    self._f(
                        resource,
                        "breaker.open",
                        "warning",
                        {k: b.get(k) for k in ("times_opened", "last_error", "retry_in_s")},
                    )
                )
            out.append(Observation(resource, tuple(found), started))
        spool = (live.get("failover") or {}).get("spool")
        if spool:
            resource = "spool"
            found = []
            size = int(spool.get("size_bytes") or 0)
            if size > self.limits.spool_max_bytes:
                found.append(
                    self._f(
                        resource,
                        "spool.large",
                        "warning",
                        {"size_bytes": size, "max": self.limits.spool_max_bytes},
                        "drain_spool",
                    )
                )
            out.append(Observation(resource, tuple(found), started))
        return out

    async def writer_check(self) -> list[Observation]:
        """Freshness per active table and symbol, judged only while the bus has a backlog
        (a quiet market is not a stuck writer). One resource, ``writer``: one cause (the
        writer not writing) is one finding listing every stale ``table/symbol``."""
        if self.live is None or self.store is None or self.bus is None:
            return []
        live = self.live()
        started = self.clock.now() - float(live.get("uptime_s") or 0.0)
        if self._bus_down:
            return []  # the bus check reports it
        try:
            info = await asyncio.wait_for(self.bus.info(self.stream), self.limits.probe_timeout_s)
        except Exception:
            return []  # the bus check reports it
        backlog = sum(g.lag + g.pending for g in info.groups if g.name == self.group)
        now = self.clock.now()
        stale: list[str] = []
        oldest = 0.0
        for spec in KINDS.values():
            if "symbol" not in spec.columns or "ts_recv" not in spec.columns:
                continue
            try:
                result = await self.store.query(
                    f"SELECT symbol, max(ts_recv) AS last FROM {spec.table} GROUP BY symbol"
                )
            except Exception:
                continue
            for symbol, last in result.rows:
                last_s = _epoch(last)
                if last_s is None or not math.isfinite(last_s):
                    continue
                age = now - last_s
                if age > 86_400:  # not active
                    continue
                if backlog and age > self.limits.writer_stale_s:
                    stale.append(f"{spec.table}/{symbol}")
                    oldest = max(oldest, age)
        resource = "writer"
        found: tuple[Finding, ...] = ()
        if stale:
            found = (
                self._f(
                    resource,
                    "writer.stale",
                    "warning",
                    {
                        "stale": sorted(stale),
                        "oldest_row_age_s": round(oldest, 1),
                        "backlog": backlog,
                    },
                    "restart_component",
                    component="writer",
                ),
            )
        return [Observation(resource, found, started)]
