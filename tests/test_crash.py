"""Crash test: SIGKILL ``tickvault replay`` at random instants, rerun, compare exactly.

The process is killed at least five times at random points (during start-up, parsing,
publishing, writing, acknowledging), then run to completion. The store must then hold
every unique key of the input exactly once, and the dead-letter queue exactly the
malformed lines.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from tickvault.sources.binance.sample import write_recording

from .cli_helpers import tv, tv_json
from .crash_helpers import kill_when, published_lines


def test_sigkill_at_random_points_then_rerun_gives_exact_contents(tmp_path: Path) -> None:
    rec = write_recording(
        tmp_path / "in.jsonl", 320_000, malformed_every=997, duplicate_share=0.01, seed=11
    )
    assert rec.lines >= 300_000
    data = tmp_path / "data"
    args: list[str | Path] = ["replay", rec.path, "--data-dir", data, "--json"]
    rng = random.Random(20261122)
    # Kill points: once during start-up, then at random fractions of the input published
    # (parsing, publishing and writing overlap there), then while the writer drains.
    fractions = sorted(rng.uniform(0.05, 0.95) for _ in range(5))
    plans: list[tuple[Callable[[], bool], float]] = [(lambda: True, rng.uniform(0.2, 0.6))]
    plans += [
        (lambda f=f: published_lines(data) >= f * rec.lines, rng.uniform(0.0, 0.05))
        for f in fractions
    ]
    plans.append((lambda: published_lines(data) >= rec.lines, rng.uniform(0.0, 0.02)))
    kills = sum(kill_when(args, ready, jitter) for ready, jitter in plans)
    assert kills >= 5
    summary = tv_json(*args[:-1])
    assert summary["drained"] is True

    counts = tv_json(
        "query",
        "SELECT (SELECT count(*) FROM trades) AS trades, (SELECT count(*) FROM quotes) AS quotes,"
        " (SELECT count(*) FROM agg_trades) AS aggs,"
        " (SELECT count(*) FROM (SELECT symbol, trade_id FROM trades GROUP BY ALL"
        "  HAVING count(*) > 1)) AS dup_trades",
        "--data-dir",
        data,
    )[0]
    assert counts["trades"] == len(rec.trade_keys)
    assert counts["quotes"] == len(rec.quote_keys)
    assert counts["aggs"] == len(rec.agg_keys)
    assert counts["dup_trades"] == 0
    letters = tv_json("dlq", "list", "--data-dir", data, "--limit", "100000")
    assert len(letters) == rec.malformed_lines
    status = tv_json("status", "--data-dir", data)
    (group,) = status["bus"]["streams"][0]["groups"]
    assert group["pending"] == 0 and group["lag"] == 0
    # A final rerun changes nothing.
    tv(*args)
    again = tv_json("query", "SELECT count(*) AS n FROM trades", "--data-dir", data)
    assert again[0]["n"] == len(rec.trade_keys)
