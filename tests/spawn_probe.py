"""Run in spawned children by tests/test_startup.py: reports what the child imported.

Imports nothing at module level, so that what it reports is what the child needed.
"""

from __future__ import annotations

from typing import Any


def report_modules(conn: Any) -> None:
    """Import what a replay producer imports to parse and publish, then send sys.modules."""
    import sys

    import tickvault.bus.sqlite.bus
    import tickvault.delivery.checkpoints
    import tickvault.delivery.producer
    import tickvault.delivery.publisher
    import tickvault.sources.replay  # noqa: F401 - imported for its import cost only

    conn.send(sorted(sys.modules))
    conn.close()
