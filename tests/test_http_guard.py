"""Who may talk to the HTTP API: Host (DNS rebinding), Origin / Sec-Fetch-Site (cross-site
browser requests) on every route, and no token-less API off loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from tickvault.core.config import HttpSettings, Settings
from tickvault.core.errors import ConfigError
from tickvault.service.pipeline import Pipeline
from tickvault.web.guard import RequestGuard
from tickvault.web.server import HttpServer

ROUTES = [
    "/health",
    "/ready",
    "/status",
    "/metrics",
    "/query?sql=SELECT%20count(*)%20FROM%20trades",
    "/api/dashboard",
    "/",
    "/static/dashboard.js",
    "/openapi.json",
]


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[Pipeline, httpx.AsyncClient]]:
    settings = Settings(data_dir=tmp_path / "data")
    settings.http = HttpSettings(listen="127.0.0.1:0", allowed_hosts=["tv.proxy.internal"])
    async with Pipeline(settings, [], serve_http=True) as p:
        assert p.http is not None
        async with httpx.AsyncClient(base_url=p.http.url, timeout=30) as client:
            yield p, client


async def test_every_route_refuses_a_host_that_is_not_this_server(
    api: tuple[Pipeline, httpx.AsyncClient],
) -> None:
    pipeline, client = api
    assert pipeline.http is not None
    port = pipeline.http.port
    for route in ROUTES:
        for host in ("attacker.example", f"attacker.example:{port}", "127.0.0.1.nip.io", ""):
            r = await client.get(route, headers={"Host": host})
            assert r.status_code == 403, (route, host, r.text)
            assert r.json()["type"] == "Forbidden"
            assert "Host" in r.json()["error"] and "\n" not in r.json()["error"]
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", "tv.proxy.internal"):
            r = await client.get(route, headers={"Host": host})
            assert r.status_code != 403, (route, host, r.text)


async def test_cross_site_browser_requests_are_refused_on_every_route(
    api: tuple[Pipeline, httpx.AsyncClient],
) -> None:
    pipeline, client = api
    assert pipeline.http is not None
    own = pipeline.http.url
    refused: list[dict[str, str]] = [
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Origin": "http://attacker.example"},
        {"Origin": "null"},
        {"Origin": own.replace("127.0.0.1", "localhost")},  # another origin, same machine
        {"Sec-Fetch-Site": "same-origin", "Origin": "https://attacker.example"},
    ]
    served: list[dict[str, str]] = [
        {},
        {"Sec-Fetch-Site": "same-origin", "Origin": own},
        {"Sec-Fetch-Site": "none"},  # typed into the address bar
    ]
    for route in ROUTES:
        for headers in refused:
            r = await client.get(route, headers=headers)
            assert r.status_code == 403, (route, headers, r.text)
            assert "cross-" in r.json()["error"]
        for headers in served:
            r = await client.get(route, headers=headers)
            assert r.status_code != 403, (route, headers, r.text)
    r = await client.get(
        "/query",
        params={"sql": "SELECT count(*) FROM trades"},
        headers={"Sec-Fetch-Site": "same-origin", "Origin": own},
    )
    assert r.status_code == 200 and r.json()["rows"] == [[0]]


async def test_off_loopback_without_a_token_the_api_is_not_served(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    settings.http = HttpSettings(listen="0.0.0.0:0")
    with pytest.raises(ConfigError, match="not a loopback address and no token is set"):
        HttpServer(cast(Any, None), settings.http, None)
    async with Pipeline(settings, [], serve_http=True) as p:
        assert p.http is None  # the data path runs on, the API is not served
        events = [e for e in p.live()["events"] if e["kind"] == "http.bind_failed"]
        # the event log is the process's: earlier tests may have left bind failures of their own
        assert any("TICKVAULT_HTTP_TOKEN" in e["message"] for e in events), events
    with_token = Settings(data_dir=tmp_path / "data2")
    with_token.http = HttpSettings(listen="0.0.0.0:0")
    async with Pipeline(with_token, [], serve_http=True, http_token="t0ken-t0ken") as p:
        assert p.http is not None
        async with httpx.AsyncClient(timeout=30) as client:
            url = f"http://127.0.0.1:{p.http.port}"
            auth = {"Authorization": "Bearer t0ken-t0ken"}
            assert (await client.get(f"{url}/status", headers=auth)).status_code == 200
            r = await client.get(f"{url}/status", headers={**auth, "Host": "evil.example"})
            assert r.status_code == 403  # a wildcard listener takes IP literals, not names


def test_guard_rules() -> None:
    loop = RequestGuard("127.0.0.1")
    assert loop.host_allowed("127.0.0.1:8765") and loop.host_allowed("[::1]:8765")
    assert loop.host_allowed("LOCALHOST:1") and not loop.host_allowed("10.0.0.5:8765")
    wildcard = RequestGuard("0.0.0.0", ["tv.example.com"])
    assert wildcard.host_allowed("10.0.0.5:8765") and wildcard.host_allowed("[fe80::1]:80")
    assert wildcard.host_allowed("TV.example.com") and not wildcard.host_allowed("a.example")
    fixed = RequestGuard("10.0.0.5")
    assert fixed.host_allowed("10.0.0.5") and not fixed.host_allowed("10.0.0.6")
    assert not fixed.host_allowed("localhost")
    assert loop.refusal({"host": "127.0.0.1:1", "origin": "http://127.0.0.1:1"}) is None
    assert loop.refusal({"host": "127.0.0.1:1", "origin": "http://127.0.0.1:2"}) is not None
