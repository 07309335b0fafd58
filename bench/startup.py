"""Start-up of the commands a user types often, against a bare interpreter start.

Each command runs as a fresh subprocess (``--rounds`` times, median reported): ``tickvault
--help``, ``tickvault status`` and ``tickvault query 'SELECT count(*) FROM trades'`` on a
small data directory (1,000 replayed records, no owner running, so both open the files
themselves). The reference, measured in the same run, is ``python -c pass`` with the same
interpreter. Also measured in the same run, as the floor of ``status``/``query``: a bare
interpreter that imports only the libraries those commands cannot do without (asyncio,
typer, rich, msgspec, orjson, DuckDB) and runs the query on the same file with DuckDB
directly. Also lists which heavy modules ``import tickvault.cli`` loads (none should).
Wall and CPU (user+sys) medians are printed: on a shared machine the CPU time is what a
command costs, the wall time adds the wait for a core.

Before timing, tickvault's own modules are compiled to bytecode (``compileall``): an
editable install has no ``.pyc`` files, and with ``PYTHONDONTWRITEBYTECODE`` set (or a
read-only source tree) every start would compile the sources again, which an installed
wheel never does.

``--reference-src DIR`` also times the three commands with another source tree of tickvault
first on ``PYTHONPATH`` (``git archive <commit> src | tar -x -C DIR`` gives ``DIR/src``),
interleaved with the current tree in the same rounds: a before/after under the same load.
Usage: ``python bench/startup.py [--rounds 5] [--reference-src DIR/src]``.
"""

from __future__ import annotations

import argparse
import compileall
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tickvault
from tickvault.sources.binance.sample import write_recording

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
    parser.add_argument("--reference-src", type=Path, help="another tickvault source tree")
    args = parser.parse_args()
    tv = tickvault_cmd()
    compileall.compile_dir(str(Path(tickvault.__file__).parent), quiet=1)
    if args.reference_src is not None:
        compileall.compile_dir(str(args.reference_src / "tickvault"), quiet=1)
    print(f"machine_cpus {os.cpu_count()}")
    print(f"load_average_1m_start {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="tv-startup-") as tmp:
        work = Path(tmp)
        rec = write_recording(work / "small.jsonl", 1_000, duplicate_share=0.0, seed=3)
        env = dict(os.environ, TICKVAULT_DATA_DIR=str(work / "data"))
        subprocess.run([*tv, "replay", str(rec.path), "--json"], check=True, env=env,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        floor = (
            "import asyncio, typer, rich.console, rich.table, msgspec, orjson, duckdb\n"
            f"con = duckdb.connect({str(work / 'data' / 'ticks.duckdb')!r}, read_only=True)\n"
            "con.execute('SELECT count(*) FROM trades').fetchall()"
        )
        commands = {
            "floor": [sys.executable, "-c", floor],
            "help": [*tv, "--help"],
            "status": [*tv, "status"],
            "query": [*tv, "query", "SELECT count(*) FROM trades"],
        }
        envs = {name: env for name in commands}
        if args.reference_src is not None:
            reference_env = dict(env, PYTHONPATH=str(args.reference_src.resolve()))
            for name in ("help", "status", "query"):
                commands[f"reference_{name}"] = commands[name]
                envs[f"reference_{name}"] = reference_env
        times: dict[str, list[tuple[float, float]]] = {"python": [], **{k: [] for k in commands}}
        for _ in range(args.rounds):  # interleaved: the machine is shared and noisy
            times["python"].append(timed([sys.executable, "-c", "pass"], env))
            for name, cmd in commands.items():
                times[name].append(timed(cmd, envs[name]))

    def median(name: str, which: int) -> float:
        return statistics.median(t[which] for t in times[name])

    base = median("python", 0)
    print(f"python_bare_start_s {base:.3f} (cpu {median('python', 1):.3f})")
    floor_wall, floor_cpu = median("floor", 0), median("floor", 1)
    print(f"floor_libraries_and_duckdb_query_s {floor_wall:.3f} (cpu {floor_cpu:.3f})")
    for name in (n for n in commands if n != "floor"):
        wall, cpu = median(name, 0), median(name, 1)
        over = "" if name == "help" else f"; cpu x{cpu / floor_cpu:.2f} of the floor"
        print(
            f"{name}_s {wall:.3f} (cpu {cpu:.3f}; x{wall / base:.1f} of a bare interpreter"
            f"{over}; target <= 0.25 s)"
        )
    print(f"heavy_modules_imported_by_cli {','.join(heavy_modules_of_cli()) or 'none'}")
    print(f"load_average_1m_end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
