"""Conversion rate of data.binance.vision trades CSVs into rows, against references.

Measured in one run, on the same lines (spot trades layout, 7 columns, no header):

* **pyarrow read_csv alone**: the typed CSV read of the same chunks and nothing else — the
  floor of any Arrow-based reader (the reference).
* **naive csv module**: ``csv.reader`` plus ``int``/``float``/bool conversion per cell and a
  row tuple per line, no validation — what a straightforward importer does.
* **CsvChunks.parse**: :class:`tickvault.sources.binance.vision.CsvChunks` (typed read,
  vectorised checks, µs times, row tuples), in the 10,000-line chunks replay uses.

Prints one ``name value`` line per figure (best of ``--repeat`` runs) and the ratios.
Usage: ``python bench/binance_vision.py [--lines N] [--repeat R]``.
"""

from __future__ import annotations

import argparse
import csv
import io
import random
import time
from collections.abc import Callable
from pathlib import Path

from pyarrow import csv as pacsv

from tickvault.sources.binance.vision import CsvChunks, detect_layout

CHUNK = 10_000


def make_lines(n: int) -> list[bytes]:
    rng = random.Random(7)
    price = 61_837.63
    out = []
    for i in range(n):
        price = max(1.0, price + rng.choice((-0.01, 0.0, 0.01)))
        qty = rng.randint(1, 500_000) / 100_000
        buyer = "True" if rng.random() < 0.5 else "False"
        line = f"{3_735_683_259 + i},{price:.8f},{qty:.8f},{price * qty:.8f},"
        out.append(f"{line}{1_723_161_255_342 + i // 10},{buyer},True\n".encode())
    return out


def chunks(lines: list[bytes]) -> list[list[bytes]]:
    return [lines[i : i + CHUNK] for i in range(0, len(lines), CHUNK)]


def best(fn: Callable[[], int], repeat: int) -> float:
    rates = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        n = fn()
        rates.append(n / (time.perf_counter() - t0))
    return max(rates)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=300_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    lines = make_lines(args.lines)
    parts = chunks(lines)
    layout = detect_layout(Path("BTCUSDT-trades-2024-08-08.csv"), lines[0], None)
    parser = CsvChunks(layout, "binance")
    names = list(layout.columns)

    def arrow_only() -> int:
        n = 0
        for part in parts:
            n += pacsv.read_csv(
                io.BytesIO(b"".join(part)),
                read_options=pacsv.ReadOptions(column_names=names),
            ).num_rows
        return n

    def naive() -> int:
        rows = []
        for part in parts:
            for c in csv.reader(io.StringIO(b"".join(part).decode())):
                rows.append(
                    ("binance", "BTCUSDT", int(c[0]), float(c[1]), float(c[2]),
                     c[5] == "True", int(c[4]) * 1000, int(c[4]) * 1000)
                )  # fmt: skip
        return len(rows)

    def ours() -> int:
        n = 0
        for start, part in zip(range(0, len(lines), CHUNK), parts, strict=True):
            rows, rejects = parser.parse(list(enumerate(part, start=start + 1)))
            assert not rejects
            n += len(rows)
        return n

    ref = best(arrow_only, args.repeat)
    figures = {"pyarrow_read_csv": ref, "naive_csv_module": best(naive, args.repeat)}
    figures["csvchunks_parse"] = best(ours, args.repeat)
    for name, rate in figures.items():
        print(f"{name} {rate:,.0f} rows/s  ratio {rate / ref:.2f}")


if __name__ == "__main__":
    main()
