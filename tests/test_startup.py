"""Start-up stays light: what the command line imports, and the lazily loaded commands.

Structural, not timed (timings are in ``bench/startup.py``): a fresh interpreter that imports
``tickvault.cli`` must not have loaded Arrow, NumPy, DuckDB, the HTTP stack, the guardian or
the position book; every lazily loaded command still runs and is listed with its real help.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tickvault.cli.lazy import LAZY_COMMANDS, load_command

from .cli_helpers import tv

HEAVY = (
    "pyarrow",
    "numpy",
    "duckdb",
    "fastapi",
    "uvicorn",
    "httpx",
    "tickvault.guardian",
    "tickvault.positions",
    "tickvault.service.pipeline",
)


def loaded_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint('\\n'.join(sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120
    ).stdout
    return set(out.split())


@pytest.mark.parametrize("statement", ["import tickvault.cli", "import tickvault"])
def test_import_loads_no_heavy_module(statement: str) -> None:
    loaded = loaded_after(statement)
    assert "tickvault.cli" in loaded or statement == "import tickvault"
    assert sorted(m for m in loaded if m.split(".")[0] in HEAVY or m in HEAVY) == []


def test_public_names_still_import_on_access() -> None:
    import tickvault
    from tickvault.core.records import Trade

    assert tickvault.Trade is Trade
    assert {"ReliableConsumer", "Entry", "Quote"} <= set(dir(tickvault)) | set(tickvault.__all__)
    assert tickvault.ReliableConsumer.__name__ == "ReliableConsumer"
    with pytest.raises(AttributeError):
        _ = tickvault.no_such_name  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", sorted(LAZY_COMMANDS))
def test_lazy_command_help_is_the_real_one(name: str) -> None:
    command = load_command(name, LAZY_COMMANDS[name])
    assert command.name == name
    real = " ".join((command.help or "").split("\n\n")[0].split())
    assert real == LAZY_COMMANDS[name].help


def test_top_level_help_lists_lazy_commands_without_importing_them() -> None:
    code = (
        "import sys\nfrom tickvault.cli.root import app\nfrom typer.testing import CliRunner\n"
        "r = CliRunner().invoke(app, ['--help'])\nassert r.exit_code == 0, r.output\n"
        "print(r.output)\nprint('MODULES', ' '.join(sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120,
        env={**__import__("os").environ, "COLUMNS": "200"},
    ).stdout  # fmt: skip
    help_text, modules = out.split("MODULES", 1)
    for name, entry in LAZY_COMMANDS.items():
        assert name in help_text and entry.help.split(":")[0] in help_text
    assert "tickvault.guardian" not in modules.split()
    assert "tickvault.positions" not in modules.split()


def test_lazy_commands_run_through_the_real_command_line() -> None:
    guardian = tv("guardian", "--help")
    assert "check" in guardian.stdout and "--install-completion" not in guardian.stdout
    rebuild = tv("rebuild", "--help")
    assert "--since" in rebuild.stdout
    wrong = tv("guardian", "no-such-command", check=False)
    assert wrong.returncode == 2 and "no-such-command" in wrong.stderr


SCRIPT = """
import multiprocessing as mp, pathlib, sys
sys.path.insert(0, {root!r})
if __name__ == "__mp_main__":
    pathlib.Path({marker!r}).write_text("main module imported in the child")
if __name__ == "__main__":
    from tests.spawn_probe import report_modules
    from tickvault.core.spawning import without_main_reimport
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=report_modules, args=(send,))
    if sys.argv[1] == "lean":
        with without_main_reimport():
            proc.start()
    else:
        proc.start()
    send.close()
    print("\\n".join(recv.recv()))
    proc.join()
"""


@pytest.mark.parametrize("mode", ["lean", "stock"])
def test_producer_child_imports_only_what_parsing_needs(tmp_path: Path, mode: str) -> None:
    marker = tmp_path / "marker"
    script = tmp_path / "main_script.py"
    root = str(Path(__file__).resolve().parents[1])
    script.write_text(SCRIPT.format(root=root, marker=str(marker)))
    out = subprocess.run(
        [sys.executable, str(script), mode], check=True, capture_output=True, text=True,
        timeout=120,
    ).stdout.split()  # fmt: skip
    assert "tickvault.sources.replay" in out and "tickvault.delivery.producer" in out
    heavy = sorted(m for m in out if m.split(".")[0] in HEAVY or m in HEAVY)
    assert not [m for m in heavy if not m.startswith(("pyarrow", "numpy"))], heavy
    # Without the guard, spawn runs the parent's main module again in the child.
    assert marker.exists() == (mode == "stock")


# ``status`` and ``query`` open the store themselves when no owner runs: they need DuckDB,
# but not Arrow, NumPy, pandas, pydantic (typer's converters), the writer's conflict and
# frame code, the pipeline or the HTTP stack.
NOT_FOR_STATUS_OR_QUERY = (
    *(m for m in HEAVY if m != "duckdb"),
    "pandas",
    "pydantic",
    "tickvault.core.codec",
    "tickvault.core.conflicts",
)

RUN_COMMAND = """
import sys
from tickvault.cli import main
sys.argv = ["tickvault", *sys.argv[1:]]
try:
    main()
except SystemExit as exc:
    assert not exc.code, exc.code
print("MODULES", " ".join(sys.modules))
"""


@pytest.fixture(scope="module")
def small_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tickvault.sources.binance.sample import write_recording

    work = tmp_path_factory.mktemp("startup")
    recording = write_recording(work / "small.jsonl", 200, duplicate_share=0.0, seed=3)
    tv("replay", str(recording.path), "--data-dir", str(work / "data"), "--json")
    return work / "data"


@pytest.mark.parametrize(
    ("args", "shown"),
    [
        (["status"], "trades"),
        (["status", "--json"], '"conflicts": 0'),
        (["query", "SELECT count(*) AS n FROM trades"], "n"),
        (["query", "SELECT count(*) AS n FROM trades", "--json", "--limit", "5"], '"n":'),
    ],
)
def test_status_and_query_skip_heavy_modules(
    small_data_dir: Path, args: list[str], shown: str
) -> None:
    out = subprocess.run(
        [sys.executable, "-c", RUN_COMMAND, *args, "--data-dir", str(small_data_dir)],
        check=True, capture_output=True, text=True, timeout=120,
        env={**__import__("os").environ, "COLUMNS": "200"},
    ).stdout  # fmt: skip
    printed, modules = out.split("MODULES", 1)
    assert shown in printed
    loaded = set(modules.split())
    assert "duckdb" in loaded and "tickvault.stores.duckdb.store" in loaded  # the store was opened
    unwanted = sorted(
        m
        for m in loaded
        if m in NOT_FOR_STATUS_OR_QUERY or m.split(".")[0] in NOT_FOR_STATUS_OR_QUERY
    )
    assert unwanted == []
