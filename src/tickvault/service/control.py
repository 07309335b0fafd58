"""Control socket: how ``tickvault query`` / ``status`` reach a running process.

DuckDB allows one process to open a database file for writing, and no other process may
open it at all meanwhile. So the process that owns the data dir (``run``, ``replay``,
``demo``) listens on a Unix socket and answers read-only requests itself; other commands
find it through ``<data dir>/control.json`` (pid and socket path) and only open the files
directly when no live owner answers.

Protocol: one JSON object per line in each direction. Requests: ``{"op": "status"}`` and
``{"op": "query", "sql": "...", "limit": 1000}``; responses ``{"ok": true, "result": ...}``
or ``{"ok": false, "error": "...", "type": "QueryRejected"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from tickvault.core.errors import (
    QueryLimitExceeded,
    QueryRejected,
    QueryTimeout,
    StoreError,
    StoreUnavailable,
    TickvaultError,
)
from tickvault.core.redact import redact_text

# Errors of a query the owner re-raises as the same class on the asking side.
_QUERY_ERRORS: dict[str, type[StoreError]] = {
    cls.__name__: cls for cls in (QueryRejected, QueryLimitExceeded, QueryTimeout, StoreUnavailable)
}
Request = dict[str, Any]
"""One request as sent: ``op`` plus the op's own fields (parsed JSON, open-ended)."""
Handler = Callable[[Request], Awaitable[object]]
_MAX_SOCKET_PATH = 100


def _socket_path(data_dir: Path) -> Path:
    path = data_dir.resolve() / "control.sock"
    if len(str(path)) <= _MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"tickvault-{digest}.sock"


def _info_path(data_dir: Path) -> Path:
    return data_dir / "control.json"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ControlServer:
    """Serves ``handlers`` on the data dir's control socket while the owner runs."""

    def __init__(self, data_dir: Path, handlers: dict[str, Handler]) -> None:
        self.data_dir = data_dir
        self.handlers = handlers
        self.path = _socket_path(data_dir)
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a stale socket of a dead owner (we hold the store lock)
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        os.chmod(self.path, 0o600)
        info = {"pid": os.getpid(), "socket": str(self.path)}
        tmp = _info_path(self.data_dir).with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(info))
        tmp.replace(_info_path(self.data_dir))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            response: dict[str, object]
            try:
                request = orjson.loads(line)
                handler = self.handlers.get(request.get("op", ""))
                if handler is None:
                    raise TickvaultError(f"unknown control op {request.get('op')!r}")
                response = {"ok": True, "result": await handler(request)}
            except TickvaultError as exc:
                response = {
                    "ok": False,
                    "error": redact_text(str(exc)),
                    "type": type(exc).__name__,
                }
            except orjson.JSONDecodeError:
                response = {"ok": False, "error": "bad request", "type": "TickvaultError"}
            writer.write(orjson.dumps(response, default=str) + b"\n")
            await writer.drain()
        finally:
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            info = orjson.loads(_info_path(self.data_dir).read_bytes())
            if info.get("pid") == os.getpid():
                _info_path(self.data_dir).unlink()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def owner_pid(data_dir: Path) -> int | None:
    """The pid of a live process that owns ``data_dir``, if any."""
    try:
        info = orjson.loads(_info_path(data_dir).read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None
    pid = int(info.get("pid", 0))
    return pid if pid and _pid_alive(pid) else None


def request(data_dir: Path, payload: dict[str, Any], timeout: float = 30.0) -> Any | None:
    """Send one request to the owner of ``data_dir``; None when no live owner answers.

    Errors the owner reports are re-raised as the matching tickvault exception.
    """
    try:
        info = orjson.loads(_info_path(data_dir).read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None
    if not _pid_alive(int(info.get("pid", 0))):
        return None
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(info["socket"])
            sock.sendall(orjson.dumps(payload) + b"\n")
            chunks = []
            while True:
                chunk = sock.recv(1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
    except (FileNotFoundError, ConnectionRefusedError):
        return None
    except OSError as exc:
        raise StoreError(f"the process owning {data_dir} did not answer: {exc}") from None
    response = orjson.loads(b"".join(chunks))
    if response.get("ok"):
        return response["result"]
    kind = _QUERY_ERRORS.get(str(response.get("type")))
    if kind is not None:
        raise kind(response["error"])
    raise StoreError(response.get("error", "unknown error"))
