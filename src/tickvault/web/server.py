"""Serving the HTTP API inside the pipeline's asyncio loop (uvicorn as a task).

Contract
--------
* :meth:`HttpServer.start` binds the socket itself first, so a taken port raises
  :class:`OSError` here (uvicorn would ``sys.exit`` instead), then returns once uvicorn
  accepts connections. ``port`` 0 picks a free port; :attr:`HttpServer.port` tells which.
* uvicorn does not touch signal handlers or logging configuration: the pipeline owns
  SIGTERM/SIGINT (drain, then exit) and the CLI owns logging.
* A listen address that is not loopback without a token raises
  :class:`~tickvault.core.errors.ConfigError` when the server is built: the API is not served.
* :meth:`HttpServer.stop` closes the listener and lets requests in flight finish (bounded).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import uvicorn

from tickvault.core.config import HttpSettings
from tickvault.web.app import create_app
from tickvault.web.guard import parse_listen, require_token_off_loopback
from tickvault.web.ports import ServedPipeline

log = logging.getLogger(__name__)


class _InLoopServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Overrides uvicorn's (``Server.serve`` enters it): no signal handlers here."""
        yield  # the pipeline handles SIGTERM/SIGINT


class HttpServer:
    """The API of ``pipeline`` served on ``settings.listen`` (see the module contract)."""

    def __init__(self, pipeline: ServedPipeline, settings: HttpSettings, token: str | None) -> None:
        self.settings = settings
        self.host, self.port = parse_listen(settings.listen)
        require_token_off_loopback(settings.listen, self.host, token, settings.token_env)
        self.app = create_app(pipeline, settings, token)
        self._server: _InLoopServer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, timeout: float = 10.0) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(128)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=5,
            # Room for a long /query?sql=... (h11's default head limit is 16 KiB; 4,000
            # characters of UTF-8 take up to 48 KiB once percent-encoded).
            h11_max_incomplete_event_size=64 * 1024,
        )
        self._server = _InLoopServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        deadline = asyncio.get_running_loop().time() + timeout
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise OSError("HTTP server stopped while starting")
            if asyncio.get_running_loop().time() > deadline:
                raise OSError(f"HTTP server did not start within {timeout} s")
            await asyncio.sleep(0.01)
        log.info("HTTP API on http://%s:%d/", self.host, self.port)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout=10)
        except TimeoutError:
            self._server.force_exit = True
            await self._task
        finally:
            self._server = None
            self._task = None
