"""Run the real ``tickvault`` command line in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TICKVAULT_DATA_DIR", None)
    env["COLUMNS"] = "200"
    env.update(extra)
    return env


def tv(
    *args: str | Path, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "tickvault", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(),
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"tickvault {' '.join(map(str, args))} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


def tv_json(*args: str | Path) -> Any:
    return json.loads(tv(*args, "--json").stdout)


def spawn(*args: str | Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tickvault", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
