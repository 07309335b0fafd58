"""The dashboard in a real headless Chromium (Debian's, through its chromedriver) while
``tickvault demo`` runs: the page loads its own assets, polls, and its charts update."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from .cli_helpers import cli_env
from .polling import eventually_sync
from .servers import free_port, wait_for_port

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
DOCS_SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "dashboard.png"


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    args = [
        sys.executable, "-m", "tickvault", "demo", "--seconds", "90", "--rate", "3000",
        "--data-dir", tmp_path / "data", "--http-listen", f"127.0.0.1:{port}",
    ]  # fmt: skip
    proc = subprocess.Popen(
        args,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=cli_env(),
    )
    try:
        wait_for_port(port, timeout=30)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=60)


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    assert shutil.which("chromium") and Path(CHROMEDRIVER).exists(), (
        "chromium and chromium-driver are installed by scripts/ci-deps.sh"
    )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,1000",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _js(driver: webdriver.Chrome, script: str) -> Any:
    return driver.execute_script(script)


def test_dashboard_charts_update_during_a_demo(
    demo: str, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    browser.get(f"{demo}/")
    assert browser.title == "tickvault"
    eventually_sync(
        lambda: (_js(browser, "return window.tickvault && window.tickvault.polls") or 0) >= 3,
        timeout=30,
        what="the dashboard polled /api/dashboard",
    )

    def points(chart: str) -> int:
        return int(browser.find_element("id", f"chart-{chart}").get_attribute("data-points"))

    def pixels(chart: str) -> str:
        return str(_js(browser, f"return document.getElementById('chart-{chart}').toDataURL()"))

    before = {c: points(c) for c in ("ingest", "backlog", "latency")}
    image_before = pixels("ingest")
    eventually_sync(
        lambda: all(points(c) > before[c] for c in before), timeout=30, what="charts gained points"
    )
    eventually_sync(lambda: pixels("ingest") != image_before, timeout=30, what="chart redrawn")

    state = _js(browser, "return window.tickvault.last")
    assert state["sources"][0]["messages"] > 0
    assert _js(browser, "return window.tickvault.errors") == 0
    rates = _js(browser, "return window.tickvault.charts.ingest.series.synthetic.map(p => p[1])")
    assert max(rates) > 500  # ~3000 records/s generated
    latest_p99 = _js(browser, "return window.tickvault.charts.latency.series.p99.at(-1)[1]")
    assert 0 < latest_p99 < 60_000
    tables = browser.find_element("id", "tables").text
    assert "trades" in tables and "quotes" in tables
    assert "live" in browser.find_element("id", "conn").text
    assert "breaker store" in browser.find_element("id", "breakers").text

    shot = tmp_path / "dashboard.png"
    assert browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("TICKVAULT_UPDATE_DOCS_SCREENSHOT"):
        shutil.copyfile(shot, DOCS_SCREENSHOT)
