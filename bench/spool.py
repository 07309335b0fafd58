"""The disk spool's append rate against raw ``write`` + ``fsync`` of the same bytes.

Frames are real tickvault frames (trades, ``--frame-records`` records each). Each round
appends ``--batches`` batches of ``--frames`` frames:

* **spool**: :meth:`Spool.append` (record headers + CRC32, one ``fsync`` per batch,
  the default policy), through its I/O thread, from asyncio.
* **raw**: ``os.write`` of the same encoded bytes plus ``os.fsync`` per batch, inline.
* the same two without ``fsync`` (``fsync="never"`` / plain writes).
* **drain**: reading the spool back (CRC checked) and committing the cursor per batch.

Medians of ``--rounds`` interleaved rounds. Prints one ``name value`` line per figure.
Usage: ``python bench/spool.py [--batches N] [--frames N] [--frame-records N] [--rounds N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tickvault.core.codec import FrameBuilder  # noqa: E402
from tickvault.core.records import Trade  # noqa: E402
from tickvault.delivery.spool import FRAME, Spool, _frame_body, encode_record  # noqa: E402


def frame(start: int, n: int) -> bytes:
    b = FrameBuilder("trade")
    for i in range(start, start + n):
        b.add(
            Trade(
                exchange="binance",
                symbol="BTCUSDT",
                trade_id=i,
                price=43000.0 + i % 97,
                qty=0.01,
                buyer_is_maker=i % 2 == 0,
                ts_event=1_700_000_000_000_000 + i,
                ts_recv=1_700_000_000_000_100 + i,
            )
        )
    return b.take()


async def spool_append(directory: Path, batches: list[list[bytes]], fsync: str) -> float:
    spool = Spool(directory, quota_bytes="64GiB", fsync=fsync)  # type: ignore[arg-type]
    await spool.open()
    started = time.perf_counter()
    for batch in batches:
        await spool.append("ticks", batch)
    elapsed = time.perf_counter() - started
    await spool.close()
    return elapsed


async def spool_drain(directory: Path, per_batch: int) -> tuple[float, int]:
    spool = await Spool(directory).open()
    started = time.perf_counter()
    n = 0
    while True:
        records, pos = await spool.read(max_records=per_batch)
        if not records:
            break
        await spool.commit(pos, len(records))
        n += len(records)
    elapsed = time.perf_counter() - started
    await spool.close()
    return elapsed, n


def raw_append(path: Path, blobs: list[bytes], fsync: bool) -> float:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    started = time.perf_counter()
    for blob in blobs:
        os.write(fd, blob)
        if fsync:
            os.fsync(fd)
    elapsed = time.perf_counter() - started
    os.close(fd)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--batches", type=int, default=400)
    parser.add_argument("--frames", type=int, default=4, help="frames per batch")
    parser.add_argument("--frame-records", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    frames = [frame(i * args.frame_records, args.frame_records) for i in range(args.frames)]
    batches = [frames] * args.batches
    # The bytes the spool writes, so the raw reference writes exactly as much.
    blobs = [b"".join(encode_record(FRAME, _frame_body("ticks", p)) for p in b) for b in batches]
    total_bytes = sum(len(b) for b in blobs)
    records = args.batches * args.frames * args.frame_records
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="tv-spool-bench-", dir=ROOT) as tmp:
        for r in range(args.rounds):
            base = Path(tmp) / f"r{r}"
            base.mkdir()
            for fsync in ("batch", "never"):
                t = asyncio.run(spool_append(base / f"spool-{fsync}", batches, fsync))
                results.setdefault(f"spool_{fsync}", []).append(t)
                t = raw_append(base / f"raw-{fsync}.bin", blobs, fsync == "batch")
                results.setdefault(f"raw_{fsync}", []).append(t)
            t, n = asyncio.run(spool_drain(base / "spool-batch", args.frames * 16))
            assert n == args.batches * args.frames, n
            results.setdefault("drain", []).append(t)
    med = {k: statistics.median(v) for k, v in results.items()}
    mb = total_bytes / 2**20
    print(f"machine_cpus {os.cpu_count()}")
    print(f"batches {args.batches} x {args.frames} frames x {args.frame_records} records")
    print(f"bytes_per_round {total_bytes:,} ({total_bytes / records:.1f} per record)")
    for name, label in (
        ("spool_batch", "spool_append_fsync_per_batch"),
        ("raw_batch", "raw_write_fsync_per_batch"),
        ("spool_never", "spool_append_no_fsync"),
        ("raw_never", "raw_write_no_fsync"),
        ("drain", "spool_drain_read_crc_commit"),
    ):
        t = med[name]
        print(f"{label}_records_per_s {records / t:,.0f} ({mb / t:,.0f} MiB/s)")
    print(f"ratio_spool_vs_raw_fsync {med['raw_batch'] / med['spool_batch']:.2f}")
    print(f"ratio_spool_vs_raw_no_fsync {med['raw_never'] / med['spool_never']:.2f}")
    print(f"load_average_1m {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
