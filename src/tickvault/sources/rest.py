"""A small async REST client for venue history endpoints, with the venues' retry rules.

Contract of :meth:`RestClient.get_json`:

- 200 → the decoded JSON body.
- 429 (rate limited) and 418 (IP banned for ignoring 429s) → wait what ``Retry-After`` says
  (capped by ``retry_after_max_s``; capped exponential backoff with jitter when the header
  is absent or unreadable), then retry.
- 5xx, timeouts and connection errors → capped exponential backoff with jitter, retry.
- any other status → :class:`VenueError` at once, with the status and the start of the body.
- after ``max_attempts`` attempts → :class:`VenueError` naming the last failure.

Secrets travel in headers only, never in URLs, so nothing that logs a URL can leak them, and
requests go only to the configured ``base_url``'s origin (:meth:`RestClient.url`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from tickvault.core.backoff import Backoff
from tickvault.core.errors import TickvaultError

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]


class VenueError(TickvaultError):
    """A venue REST call failed for good (a client error, or retries exhausted)."""

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


def backoff_delay(attempt: int, initial: float, cap: float, rng: random.Random) -> float:
    """Capped exponential backoff with jitter: attempt 1 waits about ``initial``.

    The jitter draws from the upper half of the window (``[d/2, d]``), so many clients that
    lost the venue at the same moment do not come back at the same moment, and no delay is
    ever near zero.
    """
    return Backoff(initial=initial, cap=cap, jitter="equal", rng=rng.random).delay(attempt - 1)


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None  # an HTTP date: rare for these venues, back off instead
    return max(seconds, 0.0)


@dataclass
class RestStats:
    requests: int = 0
    retries: int = 0
    throttled: int = 0
    server_errors: int = 0
    last_error: str = ""


class RestClient:
    """GET JSON from one venue; ``base_url`` is overridable for mirrors, testnets and tests."""

    def __init__(
        self,
        base_url: str,
        *,
        headers: Mapping[str, str] | None = None,
        max_attempts: int = 8,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        retry_after_max_s: float = 120.0,
        timeout_s: float = 15.0,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.max_attempts = max(1, max_attempts)
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.retry_after_max_s = retry_after_max_s
        self.stats = RestStats()
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._backoff = Backoff(
            initial=backoff_initial_s, cap=backoff_max_s, jitter="equal", rng=self._rng.random
        )
        self._client = httpx.AsyncClient(
            headers=dict(headers or {}),
            timeout=httpx.Timeout(timeout_s),
            follow_redirects=False,
            trust_env=True,
        )

    def url(self, path_or_url: str) -> str:
        """``base_url`` + a path; an absolute URL only when it is on ``base_url``'s origin.

        Raises :class:`VenueError` (before any request) for an absolute URL on another
        scheme, host or port: the client's headers carry credentials, which must never go
        to a host the user did not configure.
        """
        if "://" not in path_or_url:
            return self.base_url + path_or_url
        if _origin(path_or_url) != _origin(self.base_url):
            raise VenueError(
                f"refusing to send a request to {_origin(path_or_url)}: the configured"
                f" host is {_origin(self.base_url)}"
            )
        return path_or_url

    async def get_json(
        self,
        path_or_url: str,
        params: Mapping[str, Any] | None = None,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """GET and decode JSON following the contract in the module docstring."""
        url = self.url(path_or_url)
        last = "no attempt"
        for attempt in range(1, self.max_attempts + 1):
            self.stats.requests += 1
            wait: float | None = None
            try:
                resp = await self._client.get(url, params=params, headers=headers)
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            else:
                status = resp.status_code
                if status == 200:
                    try:
                        return orjson.loads(resp.content)
                    except orjson.JSONDecodeError:
                        raise VenueError(
                            f"HTTP 200 with malformed JSON from {_path(url)}", status
                        ) from None
                if status in (429, 418):
                    self.stats.throttled += 1
                    last = f"HTTP {status} (rate limited)"
                    hinted = _retry_after(resp.headers.get("Retry-After"))
                    if hinted is not None:
                        wait = min(hinted, self.retry_after_max_s)
                elif status >= 500:
                    self.stats.server_errors += 1
                    last = f"HTTP {status}"
                else:
                    body = resp.text[:200].replace("\n", " ")
                    raise VenueError(f"HTTP {status} from {_path(url)}: {body}", status)
            self.stats.last_error = last
            if attempt == self.max_attempts:
                break
            if wait is None:
                wait = self._backoff.delay(attempt - 1)
            self.stats.retries += 1
            log.info("%s from %s; retry %d in %.2fs", last, _path(url), attempt, wait)
            await self._sleep(wait)
        raise VenueError(f"{last} from {_path(url)} after {self.max_attempts} attempts")

    async def aclose(self) -> None:
        await self._client.aclose()


def _origin(url: str) -> str:
    """``scheme://host:port`` of ``url``, lower-cased, with the scheme's default port."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or {"http": 80, "https": 443}.get(scheme)
    except ValueError:
        port = None
    return f"{scheme}://{(parts.hostname or '').lower()}:{port}"


def _path(url: str) -> str:
    """The URL without its query (queries may carry cursors; never log more than needed)."""
    return url.split("?", 1)[0]
