"""The HTTP API of a running pipeline: endpoints, the read-only query guard, the token,
the loopback default, metrics. A real pipeline (SQLite bus, DuckDB) serves a real socket."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tickvault.core.config import HttpSettings, Settings, http_token, load_settings
from tickvault.service.pipeline import Pipeline
from tickvault.sources.synthetic import SyntheticSource
from tickvault.web.server import parse_listen

from .polling import eventually

TOKEN = "s3cret-token"


async def _pipeline(tmp_path: Path, token: str | None = None, **http: object) -> Pipeline:
    settings = Settings(data_dir=tmp_path / "data")
    settings.http = HttpSettings(listen="127.0.0.1:0", **http)  # type: ignore[arg-type]
    source = SyntheticSource(rate=2000, symbols=["BTCUSDT", "ETHUSDT"], seed=3)
    return Pipeline(settings, [source], serve_http=True, http_token=token)


async def _running(p: Pipeline) -> AsyncIterator[tuple[Pipeline, httpx.AsyncClient]]:
    async with p:
        assert p.http is not None
        task = asyncio.create_task(p.run())
        async with httpx.AsyncClient(base_url=p.http.url, timeout=30) as client:
            try:
                await eventually(lambda: p.writer.stats.inserted > 200, what="rows stored")
                yield p, client
            finally:
                p.stop_sources.set()
                for s in p.sources:
                    s.stop()  # type: ignore[attr-defined]
                await task


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[Pipeline, httpx.AsyncClient]]:
    async for pair in _running(await _pipeline(tmp_path)):
        yield pair


@pytest.fixture
async def api_with_token(tmp_path: Path) -> AsyncIterator[tuple[Pipeline, httpx.AsyncClient]]:
    async for pair in _running(await _pipeline(tmp_path, TOKEN)):
        yield pair


async def test_health_ready_status_and_metrics(api: tuple[Pipeline, httpx.AsyncClient]) -> None:
    pipeline, client = api
    r = await client.get("/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    r = await client.get("/ready")
    assert r.status_code == 200, r.text
    assert r.json()["ready"] is True
    assert set(r.json()["checks"]) == {"sources", "bus", "store"}

    status = (await client.get("/status")).json()
    assert status["running"] is True
    assert status["store"]["tables"]["trades"] > 0
    assert status["writer"]["inserted"] > 0
    assert status["writer"]["tick_to_stored"]["count"] > 0
    assert status["http"]["url"] == pipeline.http.url
    assert status["bus"]["streams"][0]["groups"][0]["name"] == "writers"

    r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    samples = {
        line.split(" ")[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert all(name.startswith("tickvault_") for name in samples)
    assert samples['tickvault_stored_records_total{table="trades"}'] > 0
    assert samples['tickvault_source_records_total{kind="synthetic",source="synthetic"}'] > 0
    assert samples['tickvault_table_rows{table="trades"}'] > 0
    assert 'tickvault_bus_backlog{bus="sqlite:///' in text
    assert samples['tickvault_breaker_state{breaker="store"}'] == 0
    count = samples["tickvault_tick_to_stored_seconds_count"]
    assert count > 0
    assert samples['tickvault_tick_to_stored_seconds_bucket{le="+Inf"}'] == count
    assert samples['tickvault_tick_to_stored_seconds_bucket{le="60.0"}'] <= count
    assert samples["tickvault_writer_batch_seconds_count"] >= 1
    assert "tickvault_spool_bytes" in samples
    assert "tickvault_guardian_state" not in text  # no guardian runs: absent, not zero

    dash = (await client.get("/api/dashboard")).json()
    assert dash["sources"][0]["messages"] > 0
    assert dash["latency"]["p99_ms"] is not None


async def test_query_is_read_only_with_row_and_time_limits(
    tmp_path: Path,
) -> None:
    p = await _pipeline(tmp_path, query_max_rows=50, query_timeout_s=0.2)
    async for _, client in _running(p):
        r = await client.get("/query", params={"sql": "SELECT count(*) AS n FROM trades"})
        assert r.status_code == 200, r.text
        assert r.json()["columns"] == ["n"] and r.json()["rows"][0][0] > 0

        r = await client.get("/query", params={"sql": "SELECT * FROM trades", "limit": 7})
        body = r.json()
        assert len(body["rows"]) == 7 and body["truncated"] is True
        over = await client.get("/query", params={"sql": "SELECT 1", "limit": 51})
        assert over.status_code == 422  # above [http] query_max_rows

        for sql in (
            "DELETE FROM trades",
            "DROP TABLE trades",
            "INSERT INTO trades SELECT * FROM trades",
            "SELECT 1; DELETE FROM trades",
            "SELECT 1; SELECT 2",
            "not sql at all",
            "SELECT * FROM no_such_table",
        ):
            r = await client.get("/query", params={"sql": sql})
            assert r.status_code == 400, (sql, r.status_code, r.text)
            assert r.json()["error"]
        stored = (await client.get("/query", params={"sql": "SELECT count(*) FROM trades"})).json()
        assert stored["rows"][0][0] > 0  # nothing was deleted

        slow = "SELECT count(*) FROM range(3000000000) a"
        r = await client.get("/query", params={"sql": slow})
        assert r.status_code == 504, r.text
        # The timed-out statement still holds the store's query thread: refused, not queued.
        r = await client.get("/query", params={"sql": "SELECT 1"})
        assert r.status_code in (200, 503)
        if r.status_code == 503:
            assert r.json()["type"] == "Busy"


async def test_token_protects_everything_but_health(
    api_with_token: tuple[Pipeline, httpx.AsyncClient],
) -> None:
    _, client = api_with_token
    assert (await client.get("/health")).status_code == 200
    for path in ("/status", "/metrics", "/ready", "/query?sql=SELECT%201", "/", "/openapi.json"):
        r = await client.get(path)
        assert r.status_code == 401, path
        assert r.headers["www-authenticate"] == "Bearer"
        r = await client.get(path, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401, path
        r = await client.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200, (path, r.text)
    # Browsers: /?token= sets an HttpOnly cookie once, then the page and its API calls work.
    r = await client.get("/", params={"token": TOKEN})
    assert r.status_code == 303 and "httponly" in r.headers["set-cookie"].lower()
    assert (await client.get("/api/dashboard")).status_code == 200
    client.cookies.clear()
    assert (await client.get("/api/dashboard")).status_code == 401
    assert (await client.get("/", params={"token": "wrong"})).status_code == 401


def test_default_bind_is_loopback_and_token_comes_from_the_named_variable() -> None:
    settings = load_settings(None, env={})
    assert settings.http.listen == "127.0.0.1:8765"
    assert parse_listen(settings.http.listen) == ("127.0.0.1", 8765)
    assert parse_listen("9000") == ("127.0.0.1", 9000)  # a bare port stays on loopback
    assert parse_listen("[::1]:9000") == ("::1", 9000)
    assert http_token(settings, {}) is None
    assert http_token(settings, {"TICKVAULT_HTTP_TOKEN": "abc"}) == "abc"
    settings.http.token_env = "MY_TOKEN"
    assert http_token(settings, {"TICKVAULT_HTTP_TOKEN": "abc"}) is None
    assert http_token(settings, {"MY_TOKEN": "xyz"}) == "xyz"


async def test_a_bare_port_binds_loopback_only(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    settings.http = HttpSettings(listen="0")
    async with Pipeline(settings, [], serve_http=True) as p:
        assert p.http is not None
        assert p.http.host == "127.0.0.1"
        listening = await asyncio.to_thread(Path("/proc/net/tcp").read_text)
        assert f"0100007F:{p.http.port:04X} 00000000:0000 0A" in listening
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{p.http.url}/health")).status_code == 200


async def test_a_taken_port_does_not_stop_the_data_path(tmp_path: Path) -> None:
    first = Settings(data_dir=tmp_path / "a")
    first.http = HttpSettings(listen="127.0.0.1:0")
    async with Pipeline(first, [], serve_http=True) as a:
        assert a.http is not None
        second = Settings(data_dir=tmp_path / "b")
        second.http = HttpSettings(listen=f"127.0.0.1:{a.http.port}")
        async with Pipeline(second, [], serve_http=True) as b:
            assert b.http is None
            assert any(e["kind"] == "http.bind_failed" for e in b.live()["events"])
