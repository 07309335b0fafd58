"""Allowlisted, idempotent, dry-runnable, journaled recovery actions.

Rules every action obeys (incident 001: a recovery deleted a write-ahead log):

* Only names in :data:`ALLOWLIST` run; anything else is refused and journaled.
* Before it runs, an action's plan — what it will change, and the backup taken or why none is
  possible — is written to the journal; then the action runs and its result is journaled.
  With ``dry_run`` only the plan is written.
* Running an action twice is harmless: each checks the current state first (a table that is
  not suspended is not resumed; a rebuild only inserts rows whose natural key is missing).
* No action deletes or renames a file. Any path argument naming a write-ahead-log or
  sequencer file or directory (:func:`guard_path`) makes the runner refuse the action.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, cast

from tickvault.bus.base import Bus
from tickvault.core.errors import TickvaultError, UnsafeActionRefused
from tickvault.guardian import questdb_actions as qdb
from tickvault.guardian.journal import Journal
from tickvault.stores.base import Store

if TYPE_CHECKING:
    from tickvault.delivery.upkeep import EntriesHandler, StreamUpkeep
    from tickvault.stores.questdb.store import QuestDBStore

# File and directory names that belong to a database's write-ahead log or sequencer
# (QuestDB ``txn_seq``/``_txnlog``/``_wal_index.d``/``wal<N>``, SQLite ``-wal``/``-shm``/
# ``-journal``, DuckDB ``.wal``, PostgreSQL ``pg_wal``, ClickHouse ``.sequencer``).
_PROTECTED = re.compile(
    r"^(txn_seq|_txnlog|_txn|_wal_index\.d|_meta|_cv|seq|wal\d*|pg_wal|pg_xlog|.*\.wal"
    r"|.*-wal|.*-shm|.*-journal|.*sequencer.*)$",
    re.IGNORECASE,
)


def guard_path(path: str | PurePath) -> None:
    """Raise :class:`UnsafeActionRefused` if ``path`` is or lies inside a WAL/sequencer path."""
    for part in PurePath(path).parts:
        if _PROTECTED.match(part):
            raise UnsafeActionRefused(
                f"refused: {path} is a write-ahead-log or sequencer path ({part!r}); the"
                " guardian never touches these — see the incident 001 runbook"
            )


def _paths_in(value: Any) -> list[str]:
    if isinstance(value, str | PurePath) and ("/" in str(value) or "\\" in str(value)):
        return [str(value)]
    if isinstance(value, dict):
        return [p for v in value.values() for p in _paths_in(v)]
    if isinstance(value, list | tuple):
        return [p for v in value for p in _paths_in(v)]
    return []


@dataclass
class ActionContext:
    """What actions may use: the components' own APIs and the host's hooks."""

    bus: Bus | None = None
    store: Store | None = None
    stream: str = "ticks"
    group: str = "writers"
    consumer: str = ""
    """The live consumer stream upkeep claims to ("" = none known: no stream upkeep, since
    entries claimed to a name nobody reads from would be stranded)."""
    restarters: dict[str, Callable[[], Awaitable[None]]] = field(default_factory=dict)
    drain_spool: Callable[[], Awaitable[int]] | None = None
    operator_flags: frozenset[str] = frozenset()
    """Actions an operator asked for explicitly (``questdb_actions.DISCARD_FLAG``)."""
    disk_free: Callable[[Path], int] = qdb.disk_free
    upkeep_handler: EntriesHandler | None = None
    """Processes the entries a stream upkeep claims (the writer's ``process`` inside a
    service); without one they stay pending for ``consumer``, which re-reads them."""


def _upkeep(ctx: ActionContext, p: dict[str, Any]) -> StreamUpkeep:
    """The guardian's upkeep pass: to the live writer's consumer, never taking its own
    in-flight entries (``claim_own=False``); what it claims goes to ``upkeep_handler``.
    ``min_idle_ms`` (the finding's threshold) is how long an entry must have been idle."""
    from tickvault.delivery.upkeep import StreamUpkeep, UpkeepPolicy

    if ctx.bus is None:
        raise TickvaultError("no bus")
    if not ctx.consumer:
        raise TickvaultError("no live consumer to claim to ([writer] consumer is not set)")
    policy = UpkeepPolicy(min_idle_ms=int(p.get("min_idle_ms", UpkeepPolicy.min_idle_ms)))
    return StreamUpkeep(
        ctx.bus,
        ctx.stream,
        ctx.group,
        ctx.consumer,
        policy,
        handler=ctx.upkeep_handler,
        claim_own=False,
    )


@dataclass(frozen=True)
class ActionResult:
    action: str
    resource: str
    ok: bool
    dry_run: bool
    detail: dict[str, Any]


Plan = dict[str, Any]
Step = Callable[[ActionContext, dict[str, Any]], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class ActionSpec:
    name: str
    description: str
    changes_stored_state: bool
    plan: Step
    run: Step


# -- the actions --------------------------------------------------------------------------


async def _restart_plan(ctx: ActionContext, p: dict[str, Any]) -> Plan:
    name = str(p.get("component", ""))
    if name not in ctx.restarters:
        raise TickvaultError(f"no restartable component {name!r} in this process")
    return {"will": f"restart component {name}", "backup": "none needed (no stored state)"}


async def _restart_run(ctx: ActionContext, p: dict[str, Any]) -> dict[str, Any]:
    await ctx.restarters[str(p["component"])]()
    return {"restarted": p["component"]}


async def _upkeep_plan(ctx: ActionContext, p: dict[str, Any]) -> Plan:
    would = await _upkeep(ctx, p).run_once(dry_run=True)
    return {
        "will": "stream upkeep pass: " + would.summary(),
        "backup": "none needed: claimed entries stay on the bus; dead letters keep payloads",
    }


async def _upkeep_run(ctx: ActionContext, p: dict[str, Any]) -> dict[str, Any]:
    return (await _upkeep(ctx, p).run_once()).as_dict()


async def _drain_plan(ctx: ActionContext, p: dict[str, Any]) -> Plan:
    if ctx.drain_spool is None:
        raise TickvaultError("no spool in this process")
    return {
        "will": "drain the disk spool to a healthy bus",
        "backup": "spool segments are removed only after the bus has their frames",
    }


async def _drain_run(ctx: ActionContext, p: dict[str, Any]) -> dict[str, Any]:
    assert ctx.drain_spool is not None
    return {"drained_frames": await ctx.drain_spool()}


def _questdb(ctx: ActionContext) -> QuestDBStore:
    """The context's store when it speaks QuestDB (by its methods, so a stand-in works)."""
    store = ctx.store
    if store is None or not hasattr(store, "wal_status") or not hasattr(store, "_rest"):
        raise TickvaultError("RESUME WAL needs a QuestDB store")
    return cast("QuestDBStore", store)


_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


async def _resume_plan(ctx: ActionContext, p: dict[str, Any]) -> Plan:
    table = str(p.get("table", ""))
    if not _IDENT.match(table):
        raise UnsafeActionRefused(f"refused: {table!r} is not a plain table name")
    store = _questdb(ctx)
    status = (await store.wal_status()).get(table)
    before = (
        None
        if status is None
        else {
            "suspended": status.suspended,
            "writer_txn": status.writer_txn,
            "sequencer_txn": status.sequencer_txn,
            "error_tag": status.error_tag,
        }
    )
    return {
        "will": f"ALTER TABLE {table} RESUME WAL"
        if before and before["suspended"]
        else f"nothing: {table} is not suspended",
        "before": before,
        "backup": "not possible from outside the server; QuestDB's files are never touched,"
        " the wal_tables() row before the action is recorded here",
    }


async def _resume_run(ctx: ActionContext, p: dict[str, Any]) -> dict[str, Any]:
    table = str(p["table"])
    store = _questdb(ctx)
    status = (await store.wal_status()).get(table)
    if status is None or not status.suspended:
        return {"resumed": False, "reason": "not suspended"}
    await store._rest.exec(f"ALTER TABLE {table} RESUME WAL")
    after = (await store.wal_status()).get(table)
    return {"resumed": True, "suspended_after": bool(after and after.suspended)}


async def _rebuild_plan(ctx: ActionContext, p: dict[str, Any]) -> Plan:
    from tickvault.service.rebuild import parse_time, rebuild

    if ctx.bus is None or ctx.store is None:
        raise TickvaultError("rebuild needs a bus and a store")
    since = parse_time(str(p["since"]))
    until = parse_time(str(p["until"])) if p.get("until") else None
    would = await rebuild(ctx.bus, ctx.store, ctx.stream, since, until, dry_run=True)
    return {
        "will": f"insert the missing ones of {would.rows_in_range} retained rows in"
        f" [{since.isoformat()}, {until.isoformat() if until else 'now'})",
        "backup": "none needed: inserts only rows whose natural key is missing; no stored row"
        " is changed or removed",
    }


async def _rebuild_run(ctx: ActionContext, p: dict[str, Any]) -> dict[str, Any]:
    from tickvault.service.rebuild import parse_time, rebuild

    assert ctx.bus is not None and ctx.store is not None
    since = parse_time(str(p["since"]))
    until = parse_time(str(p["until"])) if p.get("until") else None
    return (await rebuild(ctx.bus, ctx.store, ctx.stream, since, until)).as_dict()


ALLOWLIST: dict[str, ActionSpec] = {
    s.name: s
    for s in (
        ActionSpec(
            "restart_component", "restart a pipeline component", False, _restart_plan, _restart_run
        ),
        ActionSpec(
            "stream_upkeep",
            "reclaim stuck entries, remove dead consumers",
            True,
            _upkeep_plan,
            _upkeep_run,
        ),
        ActionSpec("drain_spool", "move spooled frames to the bus", True, _drain_plan, _drain_run),
        ActionSpec(
            "questdb_resume_wal", "ALTER TABLE … RESUME WAL", True, _resume_plan, _resume_run
        ),
        ActionSpec(
            "questdb_backup_table",
            "copy a QuestDB table's directory to backup_dir (reads the server's files only)",
            False,
            qdb.backup_plan,
            qdb.backup_run,
        ),
        ActionSpec(
            "questdb_discard_unapplied_wal",
            "ALTER TABLE … RESUME WAL FROM TXN n: skips unapplied txns (operator flag only)",
            True,
            qdb.discard_plan,
            qdb.discard_run,
        ),
        ActionSpec(
            "rebuild_range",
            "re-write a time range from the bus into the store",
            True,
            _rebuild_plan,
            _rebuild_run,
        ),
    )
}


class ActionRunner:
    """Runs allowlisted actions, journal first. Errors become failed results, never raise —
    except refusals, which raise :class:`UnsafeActionRefused` after being journaled."""

    def __init__(
        self,
        ctx: ActionContext,
        journal: Journal,
        *,
        clock: Callable[[], float],
        dry_run: bool = False,
    ) -> None:
        self.ctx = ctx
        self.journal = journal
        self.clock = clock
        self.dry_run = dry_run

    def available(self, name: str | None, params: dict[str, Any] | None = None) -> bool:
        """Whether ``name`` could run here at all (so the policy knows it may recover)."""
        if name is None or name not in ALLOWLIST:
            return False
        p = params or {}
        if name == "restart_component":
            return str(p.get("component")) in self.ctx.restarters
        if name == "drain_spool":
            return self.ctx.drain_spool is not None
        if name == "questdb_backup_table":
            store = self.ctx.store
            return bool(getattr(store, "server_root", None) and getattr(store, "backup_dir", None))
        if name == "questdb_discard_unapplied_wal":
            return qdb.DISCARD_FLAG in self.ctx.operator_flags
        if name == "stream_upkeep":
            return self.ctx.bus is not None and bool(self.ctx.consumer)
        if name == "questdb_resume_wal":
            return self.ctx.store is not None and hasattr(self.ctx.store, "wal_status")
        return self.ctx.bus is not None

    def _refuse(self, name: str, resource: str, params: dict[str, Any], why: str) -> None:
        self.journal.record(
            self.clock(),
            resource,
            "action_refused",
            why,
            detail={"action": name, "params": params},
        )
        raise UnsafeActionRefused(why)

    async def run(
        self,
        name: str,
        resource: str,
        params: dict[str, Any] | None = None,
        *,
        dry_run: bool | None = None,
    ) -> ActionResult:
        params = dict(params or {})
        dry = self.dry_run if dry_run is None else dry_run
        spec = ALLOWLIST.get(name)
        if spec is None:
            self._refuse(name, resource, params, f"refused: {name!r} is not an allowlisted action")
            raise AssertionError("unreachable")
        for path in [resource, *_paths_in(params)]:
            try:
                guard_path(path)
            except UnsafeActionRefused as exc:
                self._refuse(name, resource, params, str(exc))
        try:
            plan = await spec.plan(self.ctx, params)
        except UnsafeActionRefused as exc:
            self._refuse(name, resource, params, str(exc))
            raise
        except TickvaultError as exc:
            return self._result(name, resource, params, False, dry, {"error": str(exc)})
        self.journal.record(
            self.clock(),
            resource,
            "action_planned",
            str(plan.get("will", name)),
            detail={"action": name, "params": params, "plan": plan, "dry_run": dry},
        )
        if dry:
            return self._result(name, resource, params, True, True, {"plan": plan})
        try:
            detail = await spec.run(self.ctx, params)
        except Exception as exc:  # journaled as a failed result; the policy goes on
            return self._result(name, resource, params, False, False, {"error": str(exc)})
        return self._result(name, resource, params, True, False, detail)

    def _result(
        self,
        name: str,
        resource: str,
        params: dict[str, Any],
        ok: bool,
        dry: bool,
        detail: dict[str, Any],
    ) -> ActionResult:
        reason = ("dry run: nothing done" if dry else "done") if ok else "failed"
        self.journal.record(
            self.clock(),
            resource,
            "action_result",
            f"{name}: {reason}",
            detail={"action": name, "params": params, "ok": ok, "dry_run": dry, **detail},
        )
        return ActionResult(name, resource, ok, dry, detail)
