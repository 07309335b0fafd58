"""Hostile soak: a large recording with a share of poison lines through ``tickvault replay``.

Measured in one run, each through the real command line (a fresh data dir each):

* **hostile**: ``lines`` lines, ``hostile_share`` of them poison (every kind in
  :data:`tickvault.sources.binance.hostile.HOSTILE_KINDS`, the very large ones a few times only);
* **reference**: the same valid lines without the poison.

Checks (the script exits 1 when one fails): exit code 0, every valid trade stored exactly
once, every hostile line dead-lettered with its expected reason. Prints one
``name value`` line per figure: wall time, lines/s, peak RSS of the replay and of its
producer process (bounded memory: the ratio to the reference should stay near 1), and
the ratios hostile / reference. Not part of CI.

Usage: ``python bench/hostile_soak.py [--lines 1000000] [--hostile-share 0.1]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from tickvault.sources.binance.hostile import write_hostile

_MEASURE = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[1:]).returncode\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def replay(path: Path, data: Path) -> tuple[dict[str, object], float, float]:
    """Run ``tickvault replay --json``; return its summary, seconds and peak RSS (MiB) of
    the largest process of the run (the replay or its producer), measured by a wrapper
    process of its own so that the runs do not mix."""
    started = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _MEASURE,
            sys.executable,
            "-m",
            "tickvault",
            "replay",
            str(path),
            "--json",
            "--data-dir",
            str(data),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        print(proc.stderr[-4000:], file=sys.stderr)
        raise SystemExit(f"replay exited {proc.returncode}")
    peak_kib = int(proc.stderr.strip().splitlines()[-1])
    return json.loads(proc.stdout), seconds, peak_kib / 1024


def stored(data: Path) -> tuple[int, int]:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tickvault",
            "query",
            "--json",
            "--data-dir",
            str(data),
            "SELECT count(*) AS n, count(DISTINCT trade_id) AS d FROM trades",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    row = json.loads(proc.stdout)[0]
    return int(row["n"]), int(row["d"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--hostile-share", type=float, default=0.1)
    args = parser.parse_args()
    hostile = int(args.lines * args.hostile_share)
    valid = args.lines - hostile
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="tv-soak-") as tmp:
        work = Path(tmp)
        ref = write_hostile(work / "reference.jsonl", valid=valid, hostile=0)
        rec = write_hostile(work / "hostile.jsonl", valid=valid, hostile=hostile)
        ref_summary, ref_s, ref_rss = replay(ref.path, work / "ref-data")
        summary, hostile_s, hostile_rss = replay(rec.path, work / "hostile-data")
        n, distinct = stored(work / "hostile-data")
        if n != valid or distinct != valid or summary["stored"] != valid:
            failures.append(f"stored {n} ({distinct} distinct), expected {valid}")
        letters = Counter(summary["dead_letters"])  # type: ignore[arg-type]
        if letters != rec.reasons:
            failures.append(f"dead letters {dict(letters)} != expected {dict(rec.reasons)}")
        if not summary["drained"]:
            failures.append("not drained")
        size_mb = os.path.getsize(rec.path) / 2**20
        print(f"lines {rec.lines}")
        print(f"hostile_lines {rec.hostile_lines}")
        print(f"hostile_kinds {len(rec.kinds)}")
        print(f"file_mib {size_mb:.1f}")
        print(f"reference_seconds {ref_s:.1f}")
        print(f"hostile_seconds {hostile_s:.1f}")
        print(f"reference_lines_per_s {ref.lines / ref_s:,.0f}")
        print(f"hostile_lines_per_s {rec.lines / hostile_s:,.0f}")
        print(f"ratio_seconds {hostile_s / ref_s:.2f}")
        print(f"reference_peak_rss_mib {ref_rss:.0f}")
        print(f"hostile_peak_rss_mib {hostile_rss:.0f}")
        print(f"ratio_peak_rss {hostile_rss / ref_rss:.2f}")
        print(f"stored {summary['stored']}")
        print(f"dead_letters {sum(letters.values())}")
        print(f"reference_stored {ref_summary['stored']}")
    if failures:
        for failure in failures:
            print(f"FAILED {failure}", file=sys.stderr)
        raise SystemExit(1)
    print("ok")


if __name__ == "__main__":
    main()
