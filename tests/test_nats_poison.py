"""Delivery counts that survive writer restarts, on a real nats-server (JetStream).

JetStream counts deliveries on the server (``num_delivered``), so a poison entry that kills
every writer reading it is dead-lettered by the writer after ``max_deliveries`` deliveries
even though each writer is new (the same scenario as ``tests/test_kafka_poison.py``).
Redelivery after a crash waits for the group's ``ack_wait`` (1 s here).
"""

from __future__ import annotations

import uuid
from pathlib import Path

from .servers import NatsServer
from .test_kafka_poison import poison_until_dead_lettered


async def test_a_poison_entry_is_dead_lettered_after_max_deliveries_across_restarts(
    nats_session_server: NatsServer, tmp_path: Path
) -> None:
    prefix = f"t{uuid.uuid4().hex[:12]}_"
    url = f"{nats_session_server.url}?prefix={prefix}&ack_wait_ms=1000&max_deliver=20"
    await poison_until_dead_lettered(url, tmp_path)
