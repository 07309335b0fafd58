"""Start-up of the commands a user types often, against a bare interpreter start.

Each command runs as a fresh subprocess (``--rounds`` times, median reported): ``tickvault
--help``, ``tickvault status`` and ``tickvault query 'SELECT count(*) FROM trades'`` on a
small data directory (1,000 replayed records, no owner running, so both open the files
themselves). The reference, measured in the same run, is ``python -c pass`` with the same
interpreter. Also lists which heavy modules ``import tickvault.cli`` loads (none should).
Usage: ``python bench/startup.py [--rounds 5]``.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tickvault.sample import write_recording

HEAVY = ("pyarrow", "numpy", "duckdb", "httpx", "fastapi", "uvicorn", "tickvault.guardian")


def tickvault_cmd() -> list[str]:
    script = Path(sys.executable).with_name("tickvault")
    return [str(script)] if script.exists() else [sys.executable, "-m", "tickvault"]


def timed(args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds user+sys) of one run of ``args``.

    On a quiet machine the two are close; on a loaded one the wall time mostly measures the
    wait for a core, and the CPU time is what the command itself costs."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(args, check=True, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def heavy_modules_of_cli() -> list[str]:
    code = (
        "import sys, tickvault.cli; print(' '.join(sorted({m.split('.')[0] if not"
        " m.startswith('tickvault.') else '.'.join(m.split('.')[:2]) for m in sys.modules})))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout.split()
    return [m for m in HEAVY if m in loaded]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    tv = tickvault_cmd()
    print(f"machine_cpus {os.cpu_count()}")
    print(f"load_average_1m_start {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="tv-startup-") as tmp:
        work = Path(tmp)
        rec = write_recording(work / "small.jsonl", 1_000, duplicate_share=0.0, seed=3)
        env = dict(os.environ, TICKVAULT_DATA_DIR=str(work / "data"))
        subprocess.run([*tv, "replay", str(rec.path), "--json"], check=True, env=env,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        commands = {
            "help": [*tv, "--help"],
            "status": [*tv, "status"],
            "query": [*tv, "query", "SELECT count(*) FROM trades"],
        }
        times: dict[str, list[tuple[float, float]]] = {"python": [], **{k: [] for k in commands}}
        for _ in range(args.rounds):  # interleaved: the machine is shared and noisy
            times["python"].append(timed([sys.executable, "-c", "pass"], env))
            for name, cmd in commands.items():
                times[name].append(timed(cmd, env))

    def median(name: str, which: int) -> float:
        return statistics.median(t[which] for t in times[name])

    base = median("python", 0)
    print(f"python_bare_start_s {base:.3f} (cpu {median('python', 1):.3f})")
    for name in commands:
        wall, cpu = median(name, 0), median(name, 1)
        print(
            f"{name}_s {wall:.3f} (cpu {cpu:.3f}; x{wall / base:.1f} of a bare interpreter;"
            " target <= 0.25 s)"
        )
    print(f"heavy_modules_imported_by_cli {','.join(heavy_modules_of_cli()) or 'none'}")
    print(f"load_average_1m_end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
