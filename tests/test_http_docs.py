"""The user guide's configuration reference is the one generated from the typed settings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tickvault.core.config import settings_reference

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "guide.md"


def _committed_reference() -> str:
    text = GUIDE.read_text()
    start = text.index("<!-- config-reference:start -->\n") + len(
        "<!-- config-reference:start -->\n"
    )
    return text[start : text.index("<!-- config-reference:end -->")]


def test_guide_config_reference_matches_the_typed_settings() -> None:
    generated = settings_reference().split("\n", 2)[2]  # without the "# ..." title
    assert _committed_reference().strip() == generated.strip(), (
        "docs/guide.md is out of date: paste `tickvault config-reference` (without its title)"
        " between the config-reference markers"
    )
    assert "## `[http]`" in generated and "| `listen` | `str` | `'127.0.0.1:8765'` |" in generated


def test_config_reference_command_prints_the_same_sections() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tickvault", "config-reference"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    titles = [line for line in settings_reference().splitlines() if line.startswith("## ")]
    assert titles and all(t in out for t in titles)
