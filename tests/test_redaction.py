"""Secrets never shown: ``status``, ``/status``, ``/metrics``, the dashboard, error
messages and log lines mask passwords and tokens in URLs (:mod:`tickvault.core.redact`)."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from typer.testing import CliRunner

from tickvault.cli.root import app
from tickvault.core.config import HttpSettings, Settings
from tickvault.core.redact import install_log_redaction, redact_text, redact_value, register_secret
from tickvault.guardian.alerts import Alert, Dispatcher, Message, TelegramChannel, WebhookChannel
from tickvault.service.pipeline import Pipeline

from .alert_receiver import Receiver
from .polling import eventually
from .servers import ClickHouseServer, RedisServer


def test_redaction_rules() -> None:
    register_secret("registered-secret-value")
    cases = {
        "redis://:pw1@127.0.0.1:6379/0": "redis://:***@127.0.0.1:6379/0",
        "clickhouse://tv:pw2@h:8123/db?secure=1": "clickhouse://tv:***@h:8123/db?secure=1",
        "https://api.telegram.org/bot123456:AAH-x_y/sendMessage": (
            "https://api.telegram.org/bot***/sendMessage"
        ),
        "http://h/hook?token=abc&chat=1&api_key=k": "http://h/hook?token=***&chat=1&api_key=***",
        "https://only-a-key@h/x": "https://***@h/x",
        "sqlite:///var/lib/tv/bus.sqlite3": "sqlite:///var/lib/tv/bus.sqlite3",
        "duckdb:///d/t.duckdb?query_timeout_s=5": "duckdb:///d/t.duckdb?query_timeout_s=5",
        "text with registered-secret-value inside": "text with *** inside",
    }
    for raw, shown in cases.items():
        assert redact_text(raw) == shown
        assert redact_text(f"error for url '{raw}' (x)") == f"error for url '{shown}' (x)"
    doc = redact_value({"bus": {"url": "redis://u:pw3@h/0"}, "list": ["nats://a:pw4@h:4222"]})
    assert doc == {"bus": {"url": "redis://u:***@h/0"}, "list": ["nats://a:***@h:4222"]}


@pytest.fixture
def redis_with_password(tmp_path: Path) -> Iterator[tuple[RedisServer, str]]:
    server = RedisServer(tmp_path / "redis").start()
    password = f"pw-{secrets.token_hex(8)}"
    redis.Redis(port=server.port).config_set("requirepass", password)
    yield server, password
    server.stop()


async def test_status_metrics_and_dashboard_mask_the_bus_password(
    tmp_path: Path, redis_with_password: tuple[RedisServer, str]
) -> None:
    server, password = redis_with_password
    settings = Settings(data_dir=tmp_path / "data")
    settings.bus.url = f"redis://:{password}@127.0.0.1:{server.port}/0"
    settings.http = HttpSettings(listen="127.0.0.1:0")
    async with Pipeline(settings, [], serve_http=True) as p:
        assert p.http is not None
        async with httpx.AsyncClient(base_url=p.http.url, timeout=30) as client:
            shown = {
                route: (await client.get(route)).text
                for route in ("/status", "/metrics", "/api/dashboard")
            }
        # the CLI in a thread: it asks this process's control socket, served by this loop
        cli, human = [
            await asyncio.to_thread(
                CliRunner().invoke,
                app,
                [*args, "--data-dir", str(settings.data_dir)],
                env={"COLUMNS": "400"},
            )
            for args in (["status", "--json"], ["status"])
        ]
    assert cli.exit_code == 0 and human.exit_code == 0, cli.output + human.output
    shown["status --json"] = cli.output
    shown["status"] = human.output
    for where, text in shown.items():
        assert password not in text, f"the Redis password is shown by {where}"
    assert json.loads(shown["/status"])["bus"]["url"] == f"redis://:***@127.0.0.1:{server.port}/0"
    assert json.loads(cli.stdout)["bus"]["url"].startswith("redis://:***@")
    assert ":***@" in shown["/metrics"]  # the bus label, masked


def test_errors_mask_the_store_password(
    tmp_path: Path, clickhouse_server: ClickHouseServer
) -> None:
    password = f"pw-{secrets.token_hex(8)}"
    url = f"clickhouse://default:{password}@127.0.0.1:{clickhouse_server.http_port}/tv_redact"
    for args in (["status", "--json"], ["query", "SELECT 1"]):
        result = CliRunner().invoke(
            app,
            [*args, "--data-dir", str(tmp_path / "d"), "--store", url],
            env={"COLUMNS": "400"},
        )
        assert result.exit_code == 2, result.output
        assert "Wrong password" in result.output and password not in result.output, args
    # errors (and the status picture) that quote the URL itself show it masked
    for command, option, bad in (
        (["query", "SELECT 1"], "--store", "mystore"),
        (["status"], "--store", "mystore"),
        (["status"], "--bus", "mybus"),
    ):
        result = CliRunner().invoke(
            app,
            [*command, "--data-dir", str(tmp_path / "d"), option, f"{bad}://u:{password}@h/x"],
            env={"COLUMNS": "400"},
        )
        flat = "".join(result.output.split())
        assert f"{bad}://u:***@h/x" in flat and password not in flat, result.output


async def test_alert_delivery_failures_log_no_token_or_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    install_log_redaction()
    token = f"123456:{secrets.token_hex(12)}"
    hook_password = f"pw-{secrets.token_hex(8)}"
    with Receiver(fail=100) as receiver:
        host = receiver.url.removeprefix("http://")
        channels = [
            TelegramChannel(token, "42", api_url=receiver.url, min_interval_s=0.0),
            WebhookChannel(f"http://hook:{hook_password}@{host}/alert?token={token}"),
        ]
        dispatcher = Dispatcher(channels, attempts=2, retry_base_s=0.01)
        dispatcher.start()
        with caplog.at_level(logging.WARNING):
            dispatcher.submit(Message("firing", "r", (Alert("r", "c", "warning", "x"),), (), 1.0))
            await eventually(
                lambda: sum(dispatcher.failed.values()) == 2, what="both channels gave up"
            )
        for channel in channels:
            await channel.close()
        await dispatcher.drain(timeout=5)
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) >= 4, lines  # two failed attempts per channel, each logged
    assert any("/bot***/sendMessage" in line for line in lines), lines
    for line in lines:
        assert token not in line and token.split(":")[1] not in line
        assert hook_password not in line
