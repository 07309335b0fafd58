"""``tickvault guardian …`` and ``tickvault rebuild``.

``check`` exits 1 when any resource is unhealthy (0 otherwise, 2 for invalid arguments).
While another process owns the data dir (``tickvault run``), ``check`` and ``status`` report
what that process's guardian saw last (from the journal) instead of opening the store.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from tickvault.cli.options import (
    BusUrl,
    DataDir,
    JsonFlag,
    StoreUrl,
    config_option,
    print_json,
    settings_or_exit,
)
from tickvault.core.config import Settings
from tickvault.core.errors import ConfigError, TickvaultError
from tickvault.guardian.journal import JOURNAL_NAME, Journal
from tickvault.guardian.simulate import parse_timeline, simulate
from tickvault.service import control
from tickvault.service.guardian import build_guardian, policy_settings

app = typer.Typer(help="Watch the pipeline, recover safely, escalate.", no_args_is_help=True)
out = Console()
err = Console(stderr=True)

ConfigFile = Annotated[Path | None, config_option("TOML config ([guardian]).")]


def _fail(exc: Exception) -> typer.Exit:
    err.print(f"[red]error:[/red] {exc}", highlight=False)
    return typer.Exit(2)


async def _one_pass(settings: Settings, dry_run: bool) -> dict[str, Any]:
    from tickvault.bus import open_bus
    from tickvault.stores import open_store

    bus = open_bus(settings.bus_url)
    store = open_store(settings.store_url)
    guardian = build_guardian(settings, bus=bus, store=store, dry_run=dry_run, with_channels=False)
    try:
        result = await guardian.cycle()
    finally:
        guardian.journal.close()
        await bus.close()
        await store.close()
    return {
        "at": result.at,
        "findings": [f.as_dict() for o in result.observations for f in o.findings],
        "resources": guardian.status(),
        "live": False,
    }


def _from_journal(settings: Settings) -> dict[str, Any]:
    journal = Journal.in_data_dir(settings.data_dir)
    try:
        states = journal.states()
    finally:
        journal.close()
    return {
        "at": max((s["updated_at"] for s in states.values()), default=None),
        "findings": [f for s in states.values() for f in s["findings"]],
        "resources": {
            r: {
                "state": s["state"]["state"],
                "code": s["state"]["code"],
                "reason": s["state"]["last_reason"],
            }
            for r, s in sorted(states.items())
        },
        "live": True,
    }


@app.command()
def run(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Decide, journal, do nothing.")
    ] = False,
    config: ConfigFile = None,
    data_dir: DataDir = None,
    bus: BusUrl = None,
    store: StoreUrl = None,
) -> None:
    """Run the guardian on its own (``tickvault run`` also runs it), until SIGINT/SIGTERM."""
    import signal

    from tickvault.bus import open_bus
    from tickvault.stores import open_store

    settings = settings_or_exit(err, config, data_dir, bus, store)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        bus_ = open_bus(settings.bus_url)
        store_ = open_store(settings.store_url)
        guardian = build_guardian(settings, bus=bus_, store=store_, dry_run=dry_run or None)
        try:
            await guardian.run(stop, settings.guardian.interval_s)
        finally:
            guardian.journal.close()
            await bus_.close()
            await store_.close()

    try:
        asyncio.run(main())
    except TickvaultError as exc:
        raise _fail(exc) from None


@app.command()
def check(
    json_out: JsonFlag = False,
    config: ConfigFile = None,
    data_dir: DataDir = None,
    bus: BusUrl = None,
    store: StoreUrl = None,
) -> None:
    """One pass of the checks (no action); exit 1 if anything is unhealthy."""
    settings = settings_or_exit(err, config, data_dir, bus, store)
    try:
        if control.owner_pid(settings.data_dir):
            data = _from_journal(settings)
        else:
            data = asyncio.run(_one_pass(settings, dry_run=True))
    except TickvaultError as exc:
        raise _fail(exc) from None
    if json_out:
        print_json(data, indent=False)
    else:
        for f in data["findings"]:
            out.print(
                f"{f['severity']:<8} {f['resource']}: {f['code']} {f['evidence']}",
                highlight=False,
                markup=False,
            )
        if not data["findings"]:
            out.print("all healthy")
    raise typer.Exit(1 if data["findings"] else 0)


@app.command()
def status(json_out: JsonFlag = False, config: ConfigFile = None, data_dir: DataDir = None) -> None:
    """Each resource's policy state, as the journal last recorded it."""
    settings = settings_or_exit(err, config, data_dir)
    if not (settings.data_dir / JOURNAL_NAME).exists():
        raise _fail(ConfigError(f"no guardian journal in {settings.data_dir} yet"))
    data = _from_journal(settings)
    if json_out:
        print_json(data, indent=False)
        return
    for resource, st in data["resources"].items():
        out.print(
            f"{resource:<40} {st['state']:<10} {st['code'] or ''}  {st['reason']}",
            highlight=False,
            markup=False,
        )


@app.command()
def history(
    json_out: JsonFlag = False,
    resource: Annotated[str | None, typer.Option(help="Only this resource.")] = None,
    limit: Annotated[int, typer.Option(help="Newest N events.")] = 200,
    config: ConfigFile = None,
    data_dir: DataDir = None,
) -> None:
    """The audit journal: transitions, decisions, actions, alerts, resumes."""
    settings = settings_or_exit(err, config, data_dir)
    journal = Journal.in_data_dir(settings.data_dir)
    try:
        events = journal.events(resource, limit=limit)
    finally:
        journal.close()
    if json_out:
        print_json(events, indent=False)
        return
    for e in events:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e["ts"]))
        out.print(
            f"{when} {e['resource']:<32} {e['kind']:<15} {e['reason']}",
            highlight=False,
            markup=False,
        )


@app.command()
def resume(
    resource: Annotated[str, typer.Argument(help="The escalated resource, e.g. questdb/trades.")],
    config: ConfigFile = None,
    data_dir: DataDir = None,
) -> None:
    """Hand an escalated resource back to the guardian (a running one picks it up next cycle)."""
    from tickvault.guardian.policy import ResourceState

    settings = settings_or_exit(err, config, data_dir)
    journal = Journal.in_data_dir(settings.data_dir)
    try:
        now = time.time()
        journal.request_resume(resource, now)
        if not control.owner_pid(settings.data_dir):  # nobody running: apply it now
            journal.take_requests(now)
            journal.record(now, resource, "resume", "resumed by an operator", state="healthy")
            journal.save_state(resource, ResourceState(resource, changed_at=now).as_dict(), [], now)
    finally:
        journal.close()
    out.print(f"resumed {resource}", highlight=False)


@app.command("discard-wal")
def discard_wal(
    table: Annotated[str, typer.Argument(help="The QuestDB table, e.g. trades.")],
    from_txn: Annotated[
        int, typer.Option("--from-txn", help="Resume applying from this transaction.")
    ],
    confirmed: Annotated[
        bool,
        typer.Option(
            "--discard-unapplied-transactions",
            help="Required: the transactions before --from-txn are skipped for good.",
        ),
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Journal the plan only.")] = False,
    config: ConfigFile = None,
    data_dir: DataDir = None,
    store: StoreUrl = None,
) -> None:
    """QuestDB: ALTER TABLE … RESUME WAL FROM TXN n (what REBASE WAL does elsewhere); an
    operator's explicit act, never the guardian's. Back the table up first."""
    from tickvault.guardian.actions import ActionContext, ActionRunner
    from tickvault.guardian.questdb_actions import DISCARD_FLAG
    from tickvault.stores import open_store

    if not confirmed:
        raise _fail(ConfigError("refused: pass --discard-unapplied-transactions to confirm"))
    settings = settings_or_exit(err, config, data_dir, store=store)

    async def main() -> dict[str, Any]:
        store_ = open_store(settings.store_url)
        journal = Journal.in_data_dir(settings.data_dir)
        try:
            ctx = ActionContext(store=store_, operator_flags=frozenset({DISCARD_FLAG}))
            runner = ActionRunner(ctx, journal, clock=time.time, dry_run=dry_run)
            result = await runner.run(
                "questdb_discard_unapplied_wal",
                f"questdb/{table}",
                {"table": table, "from_txn": from_txn},
            )
            return {"ok": result.ok, "dry_run": result.dry_run, **result.detail}
        finally:
            journal.close()
            await store_.close()

    try:
        report = asyncio.run(main())
    except TickvaultError as exc:
        raise _fail(exc) from None
    print_json(report, indent=False)
    if not report["ok"]:
        raise typer.Exit(1)


@app.command("simulate")
def simulate_command(
    timeline: Annotated[Path, typer.Argument(help="JSON lines: {t, resource, code, ...}.")],
    interval: Annotated[
        float | None, typer.Option(help="Seconds per cycle [default: [guardian] interval_s].")
    ] = None,
    until: Annotated[float | None, typer.Option(help="Simulate until this t.")] = None,
    config: ConfigFile = None,
    data_dir: DataDir = None,
) -> None:
    """Replay a timeline through the real policy (simulated clock); a JSON line per decision.

    Nothing in the data dir is read or changed; ``--data-dir`` is accepted like everywhere."""
    settings = settings_or_exit(err, config, data_dir)
    try:
        lines = parse_timeline(timeline.read_text().splitlines())
        policy = policy_settings(settings.guardian)
        step = interval if interval is not None else settings.guardian.interval_s
        for decision in simulate(lines, policy, step, until):
            print_json(decision.as_dict(), indent=False)
    except (TickvaultError, OSError) as exc:
        raise _fail(exc) from None


def rebuild_command(
    since: Annotated[
        str, typer.Option("--since", help="ISO time, epoch seconds or e.g. 2h (ago).")
    ],
    until: Annotated[
        str | None, typer.Option("--until", help="End (exclusive); default now.")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count only.")] = False,
    json_out: JsonFlag = False,
    config: ConfigFile = None,
    data_dir: DataDir = None,
    bus: BusUrl = None,
    store: StoreUrl = None,
) -> None:
    """Re-write the records the bus still retains (its retention setting) into the store."""
    from tickvault.bus import open_bus
    from tickvault.service.rebuild import parse_time, rebuild
    from tickvault.stores import open_store

    settings = settings_or_exit(err, config, data_dir, bus, store)

    async def main() -> dict[str, Any]:
        start = parse_time(since)
        end = parse_time(until) if until else None
        bus_ = open_bus(settings.bus_url)
        store_ = open_store(settings.store_url)
        try:
            report = await rebuild(bus_, store_, settings.bus.stream, start, end, dry_run=dry_run)
        finally:
            await bus_.close()
            await store_.close()
        return report.as_dict()

    try:
        data = asyncio.run(main())
    except TickvaultError as exc:
        raise _fail(exc) from None
    if json_out:
        print_json(data, indent=False)
        return
    verb = "would write" if dry_run else "inserted"
    out.print(
        f"{data['rows_in_range']:,} retained rows in range from {data['entries_scanned']:,}"
        f" entries; {verb} {data['inserted']:,}, already stored {data['already_stored']:,}",
        highlight=False,
    )
