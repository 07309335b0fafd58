"""The crash test over NATS JetStream: SIGKILL ``tickvault replay --bus nats://...`` at random
instants, rerun, and compare the store with the input exactly (see ``test_crash.py``).

Entries a killed writer held unacknowledged are redelivered by the server after
``ack_wait`` (3 s here) to the next run's writer: that replaces claiming on this bus.
"""

from __future__ import annotations

import random
from pathlib import Path

from tickvault.sources.binance.sample import write_recording

from .cli_helpers import tv_json
from .crash_helpers import kill_when, published_lines
from .servers import NatsServer


def test_sigkill_replay_over_nats_then_rerun_gives_exact_contents(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats").start()
    try:
        rec = write_recording(
            tmp_path / "in.jsonl", 120_000, malformed_every=997, duplicate_share=0.01, seed=12
        )
        data = tmp_path / "data"
        bus = f"{server.url}?ack_wait_ms=3000&retry_s=2"
        args: list[str | Path] = ["replay", rec.path, "--data-dir", data, "--bus", bus, "--json"]
        rng = random.Random(20021123)
        fractions = sorted(rng.uniform(0.1, 0.9) for _ in range(3))
        plans = [(lambda: True, rng.uniform(0.3, 0.8))]
        plans += [
            (lambda f=f: published_lines(data) >= f * rec.lines, rng.uniform(0.0, 0.05))
            for f in fractions
        ]
        plans.append((lambda: published_lines(data) >= rec.lines, rng.uniform(0.0, 0.02)))
        kills = sum(kill_when(args, ready, jitter) for ready, jitter in plans)
        assert kills >= 4
        summary = tv_json(*args[:-1])
        assert summary["drained"] is True

        counts = tv_json(
            "query",
            "SELECT (SELECT count(*) FROM trades) AS trades, (SELECT count(*) FROM quotes) AS"
            " quotes, (SELECT count(*) FROM agg_trades) AS aggs, (SELECT count(*) FROM (SELECT"
            " symbol, trade_id FROM trades GROUP BY ALL HAVING count(*) > 1)) AS dup_trades",
            "--data-dir",
            data,
        )[0]
        assert counts["trades"] == len(rec.trade_keys)
        assert counts["quotes"] == len(rec.quote_keys)
        assert counts["aggs"] == len(rec.agg_keys)
        assert counts["dup_trades"] == 0
        letters = tv_json("dlq", "list", "--data-dir", data, "--bus", bus, "--limit", "100000")
        assert len(letters) == rec.malformed_lines
        status = tv_json("status", "--data-dir", data, "--bus", bus)
        (group,) = status["bus"]["streams"][0]["groups"]
        assert group["pending"] == 0 and group["lag"] == 0
    finally:
        server.stop()
