"""``tickvault streams inspect|recover`` and ``tickvault systemd`` against a real redis-server."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tickvault.bus.redis.bus import RedisBus
from tickvault.cli.root import app
from tickvault.core.errors import ConfigError
from tickvault.delivery.upkeep import format_duration_ms, parse_duration_ms

from .servers import RedisServer, free_port
from .stream_helpers import consumer_idle_at_least, pending_idle_at_least

S, G = "trade.intent", "execution"
runner = CliRunner()


@pytest.fixture
def url(redis_session_server: RedisServer) -> str:
    return f"{redis_session_server.url}?prefix=cli{uuid.uuid4().hex[:8]}:"


async def _incident_state(url: str, *, live: bool = True) -> dict[str, str]:
    """A zombie, a crashed consumer holding entries, a crash-looping entry, a live consumer."""
    bus = RedisBus.from_url(url)
    try:
        await bus.ensure_group(S, G)
        ids = await bus.append(S, [b"done", b"stuck-1", b"stuck-2", b"poison", b"fresh"])
        (done,) = await bus.read(S, G, "zombie", 1, 100)
        await bus.ack(S, G, [done.id])
        await bus.read(S, G, "crashed", 2, 100)
        await bus.read(S, G, "looping", 1, 100)
        for _ in range(2):
            await bus.read_own_pending(S, G, "looping", 1)  # 3 deliveries so far
        for name in ("zombie", "crashed", "looping"):
            await consumer_idle_at_least(bus, S, G, name, 1000)
        await pending_idle_at_least(bus, S, G, 800)
        if live:
            await bus.read(S, G, "live", 1, 100)  # active right now
        return {"poison": ids[3], "fresh": ids[4]}
    finally:
        await bus.close()


async def _state(url: str) -> tuple[list[tuple[str, str, int]], list[str], int]:
    bus = RedisBus.from_url(url)
    try:
        pending = [(p.entry_id, p.consumer, p.delivery_count) for p in await bus.pending(S, G)]
        names = [c.name for c in await bus.consumers(S, G)]
        return pending, names, len(await bus.dead_letters(S))
    finally:
        await bus.close()


def _recover(url: str, *extra: str) -> Any:
    result = runner.invoke(
        app,
        [
            "streams", "recover", "--bus", url, "--stream", S, "--group", G,
            "--consumer", "svc", "--min-idle", "800ms", "--zombie-idle", "1s",
            "--max-deliveries", "3", "--json", *extra,
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_recover_claims_dead_letters_and_deletes_only_safe_zombies(url: str) -> None:
    ids = asyncio.run(_incident_state(url))
    report = _recover(url)

    assert report["claimed"] == 3
    assert report["dead_lettered"] == 1
    assert report["deleted_consumers"] == ["crashed", "looping", "zombie"]
    assert "live" in report["kept_consumers"] and "svc" in report["kept_consumers"]
    pending, names, letters = asyncio.run(_state(url))
    # The stuck entries now wait for the service's consumer; the live one kept its entry.
    assert sorted(c for _, c, _ in pending) == ["live", "svc", "svc"]
    assert (ids["fresh"], "live", 1) in pending
    assert ids["poison"] not in {i for i, _, _ in pending}
    assert sorted(names) == ["live", "svc"]
    assert letters == 1


def test_recover_dry_run_reports_and_changes_nothing(url: str) -> None:
    asyncio.run(_incident_state(url))
    before = asyncio.run(_state(url))
    report = _recover(url, "--dry-run")

    assert report["dry_run"] is True
    assert report["claimed"] == 3 and report["dead_lettered"] == 1
    assert report["deleted_consumers"] == ["crashed", "looping", "zombie"]
    assert asyncio.run(_state(url)) == before


def test_recover_on_a_missing_group_exits_zero(url: str) -> None:
    result = runner.invoke(
        app, ["streams", "recover", "--bus", url, "--stream", S, "--group", "nope", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["group_exists"] is False and report["claimed"] == 0


def test_recover_exits_3_when_redis_cannot_be_reached() -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0?retry_s=0.2"
    result = runner.invoke(app, ["streams", "recover", "--bus", dead, "--stream", S, "--group", G])
    assert result.exit_code == 3
    assert "cannot reach the bus" in result.output


def test_recover_rejects_a_duration_without_unit(url: str) -> None:
    result = runner.invoke(
        app,
        ["streams", "recover", "--bus", url, "--stream", S, "--group", G, "--min-idle", "60"],
    )
    assert result.exit_code == 2


def test_recover_from_the_installed_command_line(url: str) -> None:
    asyncio.run(_incident_state(url, live=False))  # a process start may take longer than 800 ms
    proc = subprocess.run(
        [
            sys.executable, "-m", "tickvault", "streams", "recover", "--bus", url,
            "--stream", S, "--group", G, "--consumer", "svc", "--min-idle", "500ms",
            "--zombie-idle", "1s", "--max-deliveries", "3",
        ],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "[CLEAN] deleted_consumer=zombie" in proc.stdout
    assert "[SUMMARY] claimed=3 dead_lettered=1 deleted=3" in proc.stdout


def test_inspect_shows_groups_consumers_lag_and_oldest_pending_age(url: str) -> None:
    asyncio.run(_incident_state(url))
    result = runner.invoke(app, ["streams", "inspect", "--bus", url, "--json"])
    assert result.exit_code == 0, result.output
    (stream,) = json.loads(result.stdout)["streams"]
    assert stream["stream"] == S and stream["length"] == 5
    (group,) = stream["groups"]
    assert group["name"] == G and group["lag"] == 0 and group["pending"] == 4
    assert group["oldest_pending_age_ms"] >= 800
    consumers = {c["name"]: c for c in group["consumers"]}
    assert {n: c["pending"] for n, c in consumers.items()} == {
        "crashed": 2, "live": 1, "looping": 1, "zombie": 0,
    }  # fmt: skip
    assert consumers["zombie"]["idle_ms"] >= 1000 > consumers["live"]["idle_ms"]
    text = runner.invoke(app, ["streams", "inspect", "--bus", url, "--stream", S])
    assert text.exit_code == 0 and "zombie" in text.stdout and "lag 0" in text.stdout


@pytest.mark.parametrize(
    ("text", "ms"),
    [("500ms", 500), ("60s", 60_000), ("1h", 3_600_000), ("1.5s", 1500), ("2m", 120_000)],
)
def test_durations(text: str, ms: int) -> None:
    assert parse_duration_ms(text) == ms
    assert parse_duration_ms(format_duration_ms(ms)) == ms


@pytest.mark.parametrize("text", ["60", "1 hour", "", "-5s"])
def test_invalid_durations(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_duration_ms(text)


def test_systemd_units_run_recover_before_the_service_and_on_a_timer(tmp_path: Path) -> None:
    bus = "redis://10.0.0.5:6379/2"
    result = runner.invoke(app, ["systemd", "--bus", bus, "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    out = result.stdout
    pre = next(line for line in out.splitlines() if line.startswith("ExecStartPre="))
    assert " streams recover --bus redis://10.0.0.5:6379/2 --stream ticks --group writers" in pre
    assert "--min-idle 1m --zombie-idle 1h --max-deliveries 5 --consumer %H-writer" in pre
    assert f"run --bus {bus} --data-dir {tmp_path}" in out
    assert "OnUnitActiveSec=120" in out and "Type=oneshot" in out

    written = runner.invoke(
        app, ["systemd", "--bus", bus, "--every", "5m", "--output-dir", str(tmp_path / "u")]
    )
    assert written.exit_code == 0, written.output
    files = sorted(p.name for p in (tmp_path / "u").iterdir())
    assert files == ["tickvault-recover.service", "tickvault-recover.timer", "tickvault.service"]
    assert "OnUnitActiveSec=300" in (tmp_path / "u" / "tickvault-recover.timer").read_text()
