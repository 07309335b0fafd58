"""``tickvault streams`` (inspect, recover) and ``tickvault systemd``.

``streams recover`` is one :class:`~tickvault.delivery.upkeep.StreamUpkeep` pass without a
handler: what it claims stays pending for ``--consumer`` (the service's consumer name), which
re-reads its own pending entries first when it starts; that is why the service runs it as
``ExecStartPre``. It exits 0 whatever it found (a missing group is reported, not an error),
3 when the bus cannot be reached, and 2 for invalid arguments.
"""

from __future__ import annotations

import asyncio
import shlex
import shutil
import socket
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import msgspec
import typer
from rich.console import Console
from rich.table import Table

from tickvault.bus import open_bus
from tickvault.cli.options import (
    ConfigFile,
    DataDir,
    JsonFlag,
    bus_option,
    print_json,
    settings_or_exit,
)
from tickvault.core.errors import BusUnavailable, TickvaultError
from tickvault.delivery.upkeep import (
    StreamUpkeep,
    UpkeepPolicy,
    UpkeepReport,
    format_duration_ms,
    parse_duration_ms,
)

T = TypeVar("T")

app = typer.Typer(
    help="Consumer groups: inspect them, reclaim stuck entries, remove dead consumers.",
    no_args_is_help=True,
)

out = Console()
err = Console(stderr=True)

EXIT_INVALID = 2
EXIT_UNREACHABLE = 3

BusUrl = Annotated[str | None, bus_option("Bus URL, e.g. redis://127.0.0.1:6379/0.")]


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except BusUnavailable as exc:
        err.print(f"[red]error:[/red] cannot reach the bus: {exc}", highlight=False)
        raise typer.Exit(EXIT_UNREACHABLE) from None
    except TickvaultError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(EXIT_INVALID) from None


def _duration(value: str, option: str) -> int:
    try:
        return parse_duration_ms(value)
    except TickvaultError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from None


# -- inspect ----------------------------------------------------------------------------------


async def collect_streams(url: str, stream: str | None, group: str | None) -> dict[str, Any]:
    """Streams, their groups and each group's consumers, lag and oldest pending age."""
    bus = open_bus(url)
    try:
        names = [stream] if stream else await bus.streams()
        streams = []
        for name in names:
            info = await bus.info(name)
            groups = []
            for g in info.groups:
                if group is not None and g.name != group:
                    continue
                data = msgspec.to_builtins(g)
                data["consumer_count"] = data.pop("consumers")
                data["consumers"] = [
                    msgspec.to_builtins(c) for c in await bus.consumers(name, g.name)
                ]
                groups.append(data)
            dead = await bus.dead_letter_counts(name)
            streams.append(
                {
                    "stream": name,
                    "length": info.length,
                    "first_id": info.first_id,
                    "last_id": info.last_id,
                    "dead_letters": sum(dead.values()),
                    "groups": groups,
                }
            )
        return {"bus": url, "generated_at": time.time(), "streams": streams}
    finally:
        await bus.close()


def _age(ms: int | None) -> str:
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms} ms"
    seconds = ms / 1000
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


@app.command()
def inspect(
    bus: BusUrl = None,
    stream: Annotated[str | None, typer.Option(help="Only this stream.")] = None,
    group: Annotated[str | None, typer.Option(help="Only this consumer group.")] = None,
    json_out: JsonFlag = False,
    config: ConfigFile = None,
    data_dir: DataDir = None,
) -> None:
    """Groups, consumers (pending, idle), lag and oldest pending age of each stream."""
    settings = settings_or_exit(err, config, data_dir, bus)
    data = _run(collect_streams(settings.bus_url, stream, group))
    if json_out:
        print_json(data)
        return
    if not data["streams"]:
        out.print(f"no streams on {settings.bus_url}")
    for s in data["streams"]:
        out.print(
            f"[bold]{s['stream']}[/bold]: {s['length']:,} entries, dead letters"
            f" {s['dead_letters']:,}",
            highlight=False,
        )
        for g in s["groups"]:
            out.print(
                f"  group [bold]{g['name']}[/bold]: lag {g['lag']:,}, pending {g['pending']:,},"
                f" oldest pending {_age(g['oldest_pending_age_ms'])},"
                f" last delivered {g['last_delivered_id'] or '-'}",
                highlight=False,
            )
            if g["consumers"]:
                table = Table("consumer", "pending", "idle", box=None, padding=(0, 2))
                for c in g["consumers"]:
                    table.add_row(c["name"], f"{c['pending']:,}", _age(c["idle_ms"]))
                out.print(table)


# -- recover ----------------------------------------------------------------------------------


def _print_report(report: UpkeepReport) -> None:
    """One line per action, never wrapped (these lines end up in logs that people grep)."""
    lines = []
    if report.dry_run:
        lines.append("[DRY-RUN] nothing was changed; the lines below say what a pass would do")
    if not report.group_exists:
        lines.append(f"[SKIP] no group {report.group!r} on stream {report.stream!r}")
    else:
        lines.append(
            f"[RECOVER] claimed={report.claimed} consumer={report.consumer}"
            f" processed={report.processed} acked_missing={report.acked_missing}"
        )
        lines.append(f"[DLQ] dead_lettered={report.dead_lettered}")
        for c in report.consumers:
            tag, key = (
                ("CLEAN", "deleted_consumer")
                if c.action == "deleted"
                else ("KEEP", "kept_consumer")
            )
            lines.append(
                f"[{tag}] {key}={c.name} idle_ms={c.idle_ms} pending={c.pending} ({c.reason})"
            )
        if report.trimmed:
            lines.append(f"[TRIM] trimmed={report.trimmed}")
        lines.append(
            f"[SUMMARY] claimed={report.claimed} dead_lettered={report.dead_lettered}"
            f" deleted={len(report.deleted_consumers)} kept={len(report.kept_consumers)}"
        )
    sys.stdout.write("".join(line + "\n" for line in lines))
    sys.stdout.flush()


async def recover_pass(
    url: str,
    stream: str,
    group: str,
    consumer: str,
    policy: UpkeepPolicy,
    *,
    dry_run: bool = False,
    trim: bool = False,
) -> UpkeepReport:
    """One upkeep pass over ``url`` (what ``tickvault streams recover`` runs)."""
    bus = open_bus(url)
    try:
        upkeep = StreamUpkeep(bus, stream, group, consumer, policy, trim=trim)
        return await upkeep.run_once(dry_run=dry_run)
    finally:
        await bus.close()


@app.command()
def recover(
    stream: Annotated[str, typer.Option(help="Stream to look after.")],
    group: Annotated[str, typer.Option(help="Consumer group to look after.")],
    bus: BusUrl = None,
    consumer: Annotated[
        str | None,
        typer.Option(
            help="Live consumer that receives reclaimed entries [default: <hostname>-writer,"
            " the service's writer]."
        ),
    ] = None,
    min_idle: Annotated[
        str, typer.Option(help="Claim entries pending longer than this (500ms, 60s, 1h).")
    ] = "60s",
    zombie_idle: Annotated[
        str, typer.Option(help="Delete consumers idle longer than this with nothing pending.")
    ] = "1h",
    max_deliveries: Annotated[
        int, typer.Option(min=1, help="Dead-letter entries delivered more often than this.")
    ] = 5,
    dry_run: Annotated[bool, typer.Option(help="Only report what would be done.")] = False,
    trim: Annotated[bool, typer.Option(help="Also trim entries every group acknowledged.")] = False,
    json_out: JsonFlag = False,
    config: ConfigFile = None,
    data_dir: DataDir = None,
) -> None:
    """One upkeep pass: reclaim stale entries, dead-letter poison, delete safe zombies."""
    policy = UpkeepPolicy(
        min_idle_ms=_duration(min_idle, "--min-idle"),
        zombie_idle_ms=_duration(zombie_idle, "--zombie-idle"),
        max_deliveries=max_deliveries,
    )
    settings = settings_or_exit(err, config, data_dir, bus)
    name = consumer or settings.writer.consumer or f"{socket.gethostname()}-writer"
    report = _run(
        recover_pass(settings.bus_url, stream, group, name, policy, dry_run=dry_run, trim=trim)
    )
    if json_out:
        print_json(report.as_dict())
    else:
        _print_report(report)


# -- systemd ----------------------------------------------------------------------------------


def _arg(value: str | Path) -> str:
    """One ExecStart argument: ``%`` escaped for systemd, quoted when needed."""
    text = str(value).replace("%", "%%")
    return shlex.quote(text) if any(c in text for c in " \t\"'\\;") else text


def _cmd(*args: str | Path) -> str:
    return " ".join(_arg(a) for a in args)


def systemd_units(
    *,
    exe: str,
    bus_url: str,
    stream: str,
    group: str,
    consumer: str | None,
    min_idle_ms: int,
    zombie_idle_ms: int,
    max_deliveries: int,
    every_s: float,
    config: Path | None,
    data_dir: Path,
    user: str,
    name: str,
) -> dict[str, str]:
    """The unit files (file name → text) for the service and its periodic recovery."""
    recover_args = [
        exe, "streams", "recover", "--bus", bus_url, "--stream", stream, "--group", group,
        "--min-idle", format_duration_ms(min_idle_ms),
        "--zombie-idle", format_duration_ms(zombie_idle_ms),
        "--max-deliveries", str(max_deliveries),
    ]  # fmt: skip
    # %H is systemd's host name: the writer's default consumer name is <hostname>-writer.
    consumer_arg = _arg(consumer) if consumer else "%H-writer"
    recover = f"{_cmd(*recover_args)} --consumer {consumer_arg}"
    run_args: list[str | Path] = [exe, "run", "--bus", bus_url, "--data-dir", data_dir]
    if config is not None:
        run_args += ["--config", config]
    every = max(1, int(every_s))
    service = f"""[Unit]
Description=tickvault market-data service
After=network-online.target redis-server.service
Wants=network-online.target
# Self-healing within bounds: at most 5 starts in 10 minutes, then the unit stays failed
# (a crash loop is an incident for a human, not something to repeat forever).
StartLimitIntervalSec=600
StartLimitBurst=5

[Service]
Type=simple
User={user}
# Stream upkeep before consuming (incident 003): claim what crashed consumers left pending
# for this service's consumer, dead-letter poison entries, delete dead consumers that have
# nothing pending. "-": a bus that cannot be reached yet must not keep the service down; the
# service retries the bus itself and runs the same pass when it connects.
ExecStartPre=-{recover}
ExecStart={_cmd(*run_args)}
Restart=on-failure
RestartSec=2
KillSignal=SIGTERM
TimeoutStopSec=60
NoNewPrivileges=true

[Install]
WantedBy=multi-user.target
"""
    recover_service = f"""[Unit]
Description=tickvault stream recovery (reclaim stale entries, remove dead consumers)
After=redis-server.service
Wants=redis-server.service

[Service]
Type=oneshot
User={user}
ExecStart={recover}
NoNewPrivileges=true
PrivateTmp=true
"""
    timer = f"""[Unit]
Description=Run tickvault stream recovery every {every} s

[Timer]
OnBootSec=30
OnUnitActiveSec={every}
Unit={name}-recover.service

[Install]
WantedBy=timers.target
"""
    return {
        f"{name}.service": service,
        f"{name}-recover.service": recover_service,
        f"{name}-recover.timer": timer,
    }


def systemd_command(
    bus: BusUrl = None,
    config: ConfigFile = None,
    data_dir: DataDir = None,
    stream: Annotated[str | None, typer.Option(help="Stream [default: from settings].")] = None,
    group: Annotated[str | None, typer.Option(help="Group [default: from settings].")] = None,
    consumer: Annotated[
        str | None, typer.Option(help="Writer consumer name [default: %H-writer].")
    ] = None,
    every: Annotated[str, typer.Option(help="Recovery timer period.")] = "120s",
    user: Annotated[str, typer.Option(help="User the units run as.")] = "tickvault",
    name: Annotated[str, typer.Option(help="Unit name prefix.")] = "tickvault",
    exe: Annotated[str | None, typer.Option(help="Path of the tickvault executable.")] = None,
    output_dir: Annotated[
        Path | None, typer.Option(help="Write the unit files here instead of printing them.")
    ] = None,
) -> None:
    """Print systemd units: the service (upkeep as ExecStartPre) and a recovery timer."""
    settings = settings_or_exit(err, config, data_dir, bus)
    units = systemd_units(
        exe=exe or shutil.which("tickvault") or str(Path(sys.argv[0]).resolve()),
        bus_url=settings.bus_url,
        stream=stream or settings.bus.stream,
        group=group or settings.bus.group,
        consumer=consumer or settings.writer.consumer,
        min_idle_ms=settings.writer.claim_idle_ms,
        zombie_idle_ms=settings.upkeep.zombie_idle_ms,
        max_deliveries=settings.writer.max_deliveries,
        every_s=_duration(every, "--every") / 1000,
        config=config.resolve() if config is not None else None,
        data_dir=settings.data_dir.resolve(),
        user=user,
        name=name,
    )
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        for file_name, text in units.items():
            (output_dir / file_name).write_text(text)
            err.print(f"wrote {output_dir / file_name}", highlight=False)
        return
    for file_name, text in units.items():
        sys.stdout.write(f"# --- /etc/systemd/system/{file_name} ---\n{text}\n")
    sys.stdout.write(
        f"# then: systemctl daemon-reload && systemctl enable --now {name}.service"
        f" {name}-recover.timer\n"
    )
