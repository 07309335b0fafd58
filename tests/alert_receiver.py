"""A real local HTTP server standing in for a webhook receiver or Telegram's Bot API."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Receiver:
    """Records every POST (path, JSON body, monotonic time). ``throttle`` answers the next N
    requests with 429 and ``retry_after``, as the Bot API does."""

    def __init__(self, *, throttle: int = 0, retry_after: int = 1, fail: int = 0) -> None:
        self.requests: list[tuple[str, dict[str, Any], float]] = []
        self.accepted: list[tuple[str, dict[str, Any], float]] = []
        self.throttle = throttle
        self.retry_after = retry_after
        self.fail = fail
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                now = time.monotonic()
                with owner._lock:
                    owner.requests.append((self.path, body, now))
                    if owner.fail > 0:
                        owner.fail -= 1
                        status, doc = 500, {"ok": False}
                    elif owner.throttle > 0:
                        owner.throttle -= 1
                        status = 429
                        doc = {"ok": False, "error_code": 429,
                               "description": "Too Many Requests: retry after 1",
                               "parameters": {"retry_after": owner.retry_after}}  # fmt: skip
                    else:
                        owner.accepted.append((self.path, body, now))
                        status, doc = 200, {"ok": True, "result": {}}
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def json_bodies(self) -> list[dict[str, Any]]:
        with self._lock:
            return [b for _, b, _ in self.accepted]

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
