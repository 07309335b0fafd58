"""``tickvault replay --store clickhouse://...`` killed with SIGKILL at random instants, rerun.

The ClickHouse server keeps running (it is the session's real ``clickhouse-server``); the
tickvault process dies mid-parse, mid-publish, mid-insert and mid-acknowledge. After a
final complete run the store must hold every unique key exactly once: counted with
``FINAL`` and also counted raw (the writer inserts only keys the server does not have, so
no duplicate rows should exist even before merges).
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Callable
from pathlib import Path

from tickvault.sources.binance.sample import write_recording
from tickvault.stores.clickhouse.store import ClickHouseStore

from .cli_helpers import tv_json
from .crash_helpers import kill_when, published_lines
from .servers import ClickHouseServer


async def _contents(url: str) -> dict[str, int]:
    store = ClickHouseStore.from_url(url)
    try:
        final = await store.counts()
        raw = await store.query(
            "SELECT (SELECT count() FROM trades) AS trades, (SELECT count() FROM quotes) AS q,"
            " (SELECT count() FROM agg_trades) AS a"
        )
        dups = await store.query(
            "SELECT count() FROM (SELECT symbol, trade_id FROM trades"
            " GROUP BY symbol, trade_id HAVING count() > 1)"
        )
    finally:
        await store.close()
    trades, quotes, aggs = raw.rows[0]
    return final | {
        "raw_trades": trades,
        "raw_quotes": quotes,
        "raw_aggs": aggs,
        "dup_trades": dups.rows[0][0],
    }


def test_replay_into_clickhouse_survives_sigkill_and_rerun(
    tmp_path: Path, clickhouse_server: ClickHouseServer
) -> None:
    rec = write_recording(
        tmp_path / "in.jsonl", 80_000, malformed_every=499, duplicate_share=0.02, seed=7
    )
    url = clickhouse_server.url(f"tv_replay_{uuid.uuid4().hex[:8]}")
    data = tmp_path / "data"
    args: list[str | Path] = ["replay", rec.path, "--store", url, "--data-dir", data, "--json"]
    rng = random.Random(7_2026)
    fractions = sorted(rng.uniform(0.1, 0.9) for _ in range(3))
    plans: list[tuple[Callable[[], bool], float]] = [(lambda: True, rng.uniform(0.3, 0.8))]
    plans += [
        (lambda f=f: published_lines(data) >= f * rec.lines, rng.uniform(0.0, 0.05))
        for f in fractions
    ]
    plans.append((lambda: published_lines(data) >= rec.lines, rng.uniform(0.0, 0.02)))
    kills = sum(kill_when(args, ready, jitter) for ready, jitter in plans)
    assert kills >= 3

    summary = tv_json(*args[:-1])
    assert summary["drained"] is True
    got = asyncio.run(_contents(url))
    assert got["trades"] == len(rec.trade_keys)
    assert got["quotes"] == len(rec.quote_keys)
    assert got["agg_trades"] == len(rec.agg_keys)
    assert got["raw_trades"] == len(rec.trade_keys)
    assert got["raw_quotes"] == len(rec.quote_keys)
    assert got["raw_aggs"] == len(rec.agg_keys)
    assert got["dup_trades"] == 0
    letters = tv_json("dlq", "list", "--data-dir", data, "--limit", "100000")
    assert len(letters) == rec.malformed_lines

    # A complete rerun from the start (checkpoints ignored) inserts nothing new.
    again = tv_json("replay", rec.path, "--store", url, "--data-dir", data, "--restart")
    assert again["stored"] == 0
    assert asyncio.run(_contents(url)) == got
