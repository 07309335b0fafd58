"""Schemathesis against the OpenAPI description of a running ``tickvault run``: generated
requests for every operation (token configured and sent) never get a server error."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from .cli_helpers import cli_env
from .polling import eventually_sync
from .servers import free_port

TOKEN = "openapi-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def service_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("openapi")
    config = tmp / "tv.toml"
    port = free_port()
    config.write_text(
        f'[http]\nlisten = "127.0.0.1:{port}"\n\n'
        '[[sources]]\nkind = "synthetic"\nrate = 1000\nsymbols = ["BTCUSDT"]\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "tickvault", "run", "--config", config, "--data-dir", tmp / "d"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(TICKVAULT_HTTP_TOKEN=TOKEN),
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{url}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        eventually_sync(up, what="tickvault run serving /health")
        yield url
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "Traceback" not in err, err


@pytest.fixture(scope="module")
def api_schema(service_url: str) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{service_url}/openapi.json", headers=AUTH)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case: schemathesis.Case) -> None:
    case.call_and_validate(headers=AUTH, checks=[not_a_server_error], timeout=30)


def test_the_description_covers_the_api(api_schema: schemathesis.BaseSchema) -> None:
    raw = api_schema.raw_schema
    assert {"/health", "/ready", "/status", "/metrics", "/query", "/", "/api/dashboard"} <= set(
        raw["paths"]
    )
    assert raw["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert raw["paths"]["/health"]["get"]["security"] == []
    params = {p["name"]: p for p in raw["paths"]["/query"]["get"]["parameters"]}
    assert params["sql"]["required"] is True
    assert params["limit"]["schema"]["maximum"] == 10_000
