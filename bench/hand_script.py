"""The script a user writes instead of tickvault: one thread, orjson → Arrow → DuckDB.

Reads a recorded Binance trade file (bare and combined-stream messages), parses every line
with orjson, builds Arrow batches of ``--batch`` rows and inserts them with ``INSERT OR
IGNORE`` into a ``trades`` table whose primary key is the natural key (exchange, symbol,
trade id) — the same table and key tickvault writes. No bus, no acknowledgements, no
validation beyond what orjson and ``float`` do. It imports nothing from tickvault, so
running it as ``python bench/hand_script.py FILE DB`` pays its own interpreter start-up,
exactly as a user's script would. It is the reference of ``bench/vs_script.py``.
"""

from __future__ import annotations

import sys

import duckdb
import orjson
import pyarrow as pa

SCHEMA = pa.schema(
    [
        pa.field("exchange", pa.string(), nullable=False),
        pa.field("symbol", pa.string(), nullable=False),
        pa.field("trade_id", pa.int64(), nullable=False),
        pa.field("price", pa.float64(), nullable=False),
        pa.field("qty", pa.float64(), nullable=False),
        pa.field("buyer_is_maker", pa.bool_(), nullable=False),
        pa.field("ts_event", pa.timestamp("us"), nullable=False),
        pa.field("ts_recv", pa.timestamp("us"), nullable=False),
    ]
)
DDL = (
    "CREATE TABLE IF NOT EXISTS trades (exchange VARCHAR NOT NULL, symbol VARCHAR NOT NULL,"
    " trade_id BIGINT NOT NULL, price DOUBLE NOT NULL, qty DOUBLE NOT NULL,"
    " buyer_is_maker BOOLEAN NOT NULL, ts_event TIMESTAMP NOT NULL, ts_recv TIMESTAMP NOT NULL,"
    " PRIMARY KEY (exchange, symbol, trade_id))"
)


def main(path: str, db: str, batch: int) -> int:
    con = duckdb.connect(db)
    con.execute(DDL)
    cols: list[list[object]] = [[] for _ in SCHEMA.names]
    stored = 0

    def flush() -> int:
        table = pa.Table.from_arrays(
            [pa.array(c, type=f.type) for c, f in zip(cols, SCHEMA, strict=True)], schema=SCHEMA
        )
        con.register("batch", table)
        n = con.execute("INSERT OR IGNORE INTO trades SELECT * FROM batch").fetchone()
        con.unregister("batch")
        for c in cols:
            c.clear()
        return int(n[0]) if n else 0

    with open(path, "rb") as fh:
        for line in fh:
            msg = orjson.loads(line)
            msg = msg.get("data", msg)
            row = ("binance", msg["s"], msg["t"], float(msg["p"]), float(msg["q"]), msg["m"])
            for c, v in zip(cols, row, strict=False):
                c.append(v)
            cols[6].append(msg["T"] * 1000)
            cols[7].append(msg["E"] * 1000)
            if len(cols[0]) >= batch:
                stored += flush()
    if cols[0]:
        stored += flush()
    con.close()
    return stored


if __name__ == "__main__":
    print(main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 100_000))
