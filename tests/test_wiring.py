"""``tickvault.service.wiring``: the one place that builds sources from ``[[sources]]``."""

from __future__ import annotations

from pathlib import Path

import pytest

from tickvault.core.config import load_settings
from tickvault.core.errors import ConfigError
from tickvault.service.wiring import build_sources
from tickvault.sources.binance.collector import BinanceSource
from tickvault.sources.polygon.collector import PolygonSource
from tickvault.sources.replay import ReplaySource
from tickvault.sources.synthetic import SyntheticSource

CONFIG = """
[[sources]]
kind = "synthetic"
name = "synth"
symbols = ["BTCUSDT"]
[[sources]]
kind = "replay"
paths = ["{capture}"]
[[sources]]
kind = "binance"
name = "spot"
symbols = ["btcusdt"]
record_dir = "captures"
[[sources]]
kind = "polygon"
tickers = ["C:EURUSD"]
from = "2024-01-02"
to = "2024-01-03"
api_key_env = "TV_TEST_POLYGON_KEY"
"""


async def test_every_configured_source_is_built_in_order(tmp_path: Path) -> None:
    capture = tmp_path / "capture.jsonl"
    capture.write_text("")
    config = tmp_path / "tv.toml"
    config.write_text(CONFIG.replace("{capture}", str(capture)))
    settings = load_settings(config, data_dir=tmp_path / "data")
    settings.data_dir.mkdir()
    sources = build_sources(settings, {"TV_TEST_POLYGON_KEY": "k3y"})
    try:
        kinds = [type(s) for s in sources]
        assert kinds == [SyntheticSource, ReplaySource, BinanceSource, PolygonSource]
        assert [s.name for s in sources][::2] == ["synth", "spot"]
        binance = sources[2]
        assert isinstance(binance, BinanceSource)
        assert binance.options.symbols == ["BTCUSDT"]
        # A relative record dir lives in the data dir.
        assert binance.options.record_dir == str(settings.data_dir / "captures")
    finally:
        for source in sources:
            await source.close()


def test_a_missing_api_key_is_a_config_error_naming_the_variable(tmp_path: Path) -> None:
    capture = tmp_path / "capture.jsonl"
    capture.write_text("")
    config = tmp_path / "tv.toml"
    config.write_text(CONFIG.replace("{capture}", str(capture)))
    settings = load_settings(config, data_dir=tmp_path / "data")
    settings.data_dir.mkdir()
    with pytest.raises(ConfigError, match="TV_TEST_POLYGON_KEY"):
        build_sources(settings, {})
