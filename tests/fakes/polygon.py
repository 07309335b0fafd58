"""A fake Polygon aggregates API on loopback, in a thread.

``GET /v2/aggs/ticker/{ticker}/range/{multiplier}/{timespan}/{from}/{to}`` answers with the
venue's response shape (``status``, ``resultsCount``, ``results`` with ``o h l c v vw t n``)
and paginates with an absolute ``next_url`` carrying a ``cursor`` (on ``next_url_base``
when set, as the real API names its public host there whatever host was asked). Bars exist
for every minute of every weekday (every day for ``X:`` crypto tickers; 14:00-21:00 UTC for
stocks, indices and options) except ``missing_days``; values are a function of the ticker
and the time, so reruns see the same bars. The API key is checked (``Authorization:
Bearer`` or ``apiKey=``); ``faults`` answer 429 / 5xx / 403; ``refusals`` (matched on the
start of path + query) answer HTTP 200 with a refusal body, as Polygon does. ``recorded``
serves captured pages per ticker (``tests/data/polygon``): the first page for a request
without ``cursor``, then the page whose predecessor's ``next_url`` names the cursor.
"""

from __future__ import annotations

import datetime as dt
import itertools
import time
import urllib.parse
import zlib
from typing import Any

from .binance import Fault
from .http import HttpServer, LoopThread, Request, Response

_SPAN_MS = {"minute": 60_000, "hour": 3_600_000, "day": 86_400_000}


def bar_at(ticker: str, t: int) -> dict[str, Any]:
    k = zlib.crc32(f"{ticker}:{t}".encode()) % 1000
    o = round(1.08 + k * 0.00001, 5)
    return {
        "v": 10 + k % 7,
        "vw": o,
        "o": o,
        "c": round(o + 0.0001, 5),
        "h": round(o + 0.0003, 5),
        "l": round(o - 0.0002, 5),
        "t": t,
        "n": 1 + k % 5,
    }


class FakePolygon:
    def __init__(
        self,
        *,
        api_key: str = "poly-key",
        page_size: int = 5000,
        missing_days: set[str] | None = None,
    ) -> None:
        self.api_key = api_key
        self.page_size = page_size
        self.missing_days = missing_days or set()
        self.faults: list[Fault] = []
        self.refusals: list[tuple[str, dict[str, Any]]] = []
        self.recorded: dict[str, list[dict[str, Any]]] = {}
        self.next_url_base: str | None = None
        self.scale = 1.0  # prices times this (a split re-adjusts all earlier bars)
        self.requests: list[tuple[str, dict[str, str], dict[str, str]]] = []
        self.request_times: list[tuple[float, int]] = []
        self._thread: LoopThread | None = None
        self._http: HttpServer | None = None

    def start(self) -> FakePolygon:
        self._thread = LoopThread("fake-polygon")
        self._http = HttpServer(self._handle)
        self._thread.call(self._http.start())
        return self

    def stop(self) -> None:
        if self._thread is not None and self._http is not None:
            self._thread.call(self._http.stop())
            self._thread.close()
            self._thread = None

    @property
    def url(self) -> str:
        assert self._http is not None
        return self._http.url

    def expected_bars(self, ticker: str, first: str, last: str, timespan: str = "minute") -> int:
        return len(self._bars(ticker, 1, timespan, first, last))

    def _days(self, ticker: str, first: str, last: str) -> list[dt.date]:
        day, end = dt.date.fromisoformat(first), dt.date.fromisoformat(last)
        out = []
        while day <= end:
            if (
                ticker.startswith("X:") or day.weekday() < 5
            ) and day.isoformat() not in self.missing_days:
                out.append(day)
            day += dt.timedelta(days=1)
        return out

    def _bars(
        self, ticker: str, mult: int, timespan: str, first: str, last: str
    ) -> list[dict[str, Any]]:
        step = _SPAN_MS[timespan] * mult
        bars = []
        for day in self._days(ticker, first, last):
            start = int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp() * 1000)
            first, end = start, start + 86_400_000
            if not ticker.startswith(("X:", "C:")):
                # Stocks, indices, options: session hours; day bars at New York midnight.
                first, end = start + 14 * 3_600_000, start + 21 * 3_600_000
                if timespan == "day":
                    first, end = start + 5 * 3_600_000, start + 5 * 3_600_000 + 1
            bars += [self._scaled(bar_at(ticker, t)) for t in range(first, end, step)]
        return bars

    def _scaled(self, bar: dict[str, Any]) -> dict[str, Any]:
        if self.scale != 1.0:
            for k in ("o", "h", "l", "c", "vw"):
                bar[k] = round(bar[k] * self.scale, 6)
        return bar

    async def _handle(self, req: Request) -> Response:
        resp = await self._answer(req)
        self.request_times.append((time.monotonic(), resp.status))
        return resp

    async def _answer(self, req: Request) -> Response:
        self.requests.append((req.path, dict(req.query), dict(req.headers)))
        for fault in self.faults:
            if fault.times > 0 and req.path.startswith(fault.path):
                fault.times -= 1
                return Response(fault.status, b'{"status":"ERROR","error":"fault"}', fault.headers)
        auth = req.headers.get("authorization", "")
        if auth != f"Bearer {self.api_key}" and req.query.get("apiKey") != self.api_key:
            return Response.json({"status": "ERROR", "error": "Unknown API Key"}, 401)
        target = req.path + ("?" + urllib.parse.urlencode(req.query) if req.query else "")
        for i, (prefix, refusal) in enumerate(self.refusals):
            if target.startswith(prefix):
                del self.refusals[i]
                return Response.json(refusal)
        parts = req.path.strip("/").split("/")
        if len(parts) > 3 and parts[3] in self.recorded:
            return self._replay(self.recorded[parts[3]], req.query.get("cursor"))
        if len(parts) != 9 or parts[:3] != ["v2", "aggs", "ticker"] or parts[4] != "range":
            return Response.json({"status": "NOT_FOUND"}, 404)
        ticker, mult, timespan, first, last = parts[3], int(parts[5]), parts[6], parts[7], parts[8]
        bars = self._bars(ticker, mult, timespan, first, last)
        offset = int(req.query.get("cursor", 0))
        page = bars[offset : offset + self.page_size]
        body: dict[str, Any] = {
            "ticker": ticker,
            "status": "OK",
            "queryCount": len(page),
            "resultsCount": len(page),
            "adjusted": True,
            "request_id": f"r{len(self.requests)}",
        }
        if page:
            body["results"] = page
        if offset + self.page_size < len(bars):
            base = self.next_url_base or self.url
            body["next_url"] = f"{base}{req.path}?cursor={offset + self.page_size}"
        return Response.json(body)

    @staticmethod
    def _replay(pages: list[dict[str, Any]], cursor: str | None) -> Response:
        if cursor is None:
            return Response.json(pages[0])
        for before, page in itertools.pairwise(pages):
            if f"cursor={cursor}" in str(before.get("next_url", "")):
                return Response.json(page)
        return Response.json({"status": "NOT_FOUND", "message": "unknown cursor"}, 404)
