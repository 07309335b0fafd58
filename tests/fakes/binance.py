"""A fake Binance venue: combined-stream websocket + REST, on loopback, in a thread.

It speaks the wire formats of ``/work/shared/VENUES.md``: ``/stream?streams=a/b`` with
``{"stream": ..., "data": ...}`` messages, ``/api/v3/depth``, ``/api/v3/aggTrades``,
``/api/v3/historicalTrades``. ``market="usdm"`` (``"coinm"``) makes it a futures venue:
REST under ``/fapi/v1`` (``/dapi/v1``) only, depth snapshots with ``E``/``T``, diffs with
``pu`` and non-consecutive update ids, trades with a type ``X``; non-market trades
(``emit_trades(..., trade_type="ADL")``) reach the stream but, as on Binance, neither REST
trade lists nor aggregates. The test drives the market (``emit_trades``, ``emit_depth``,
``start_flow``) and the faults: dropping or refusing connections, stalling, skipping ids
(``deliver=False``: the trades happen, REST knows them, the stream does not send them),
breaking depth sequences, malformed frames, server pings, a connection age limit, and
REST answers like 429 / 5xx / 401.

Every method that touches the venue is a coroutine that must run on the fake's own loop:
``fake.sync(fake.emit_trades("BTCUSDT", 10))`` from plain code, ``await
fake.run(fake.emit_trades(...))`` from async tests (which keeps the test's loop free for
the collector under test).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request as WsRequest
from websockets.http11 import Response as WsResponse

from .http import HttpServer, LoopThread, Request, Response

T = TypeVar("T")

_FUTURES_PREFIX = {"usdm": "/fapi/v1", "coinm": "/dapi/v1"}


@dataclass
class Fault:
    """Answer the next ``times`` requests whose path starts with ``path`` like this."""

    path: str
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b'{"code":-1003,"msg":"Too many requests."}'
    times: int = 1


@dataclass
class Market:
    symbol: str
    first_trade_id: int = 1_000_000
    first_agg_id: int = 500_000
    price: float = 100.0
    trades: list[dict[str, Any]] = field(default_factory=list)
    aggs: list[dict[str, Any]] = field(default_factory=list)
    pending: list[dict[str, Any]] = field(default_factory=list)
    delivered_trades: set[int] = field(default_factory=set)
    delivered_aggs: set[int] = field(default_factory=set)
    bids: dict[float, float] = field(default_factory=dict)
    asks: dict[float, float] = field(default_factory=dict)
    update_id: int = 10_000
    history: deque[tuple[int, dict[float, float], dict[float, float]]] = field(
        default_factory=lambda: deque(maxlen=50)
    )
    diffs_sent: int = 0
    trades_made: int = 0
    """Trades of every type (non-market trades take ids too)."""

    @property
    def next_trade_id(self) -> int:
        return self.first_trade_id + self.trades_made


class _Conn:
    def __init__(self, ws: ServerConnection, streams: set[str]) -> None:
        self.ws = ws
        self.streams = streams
        self.opened_at = time.monotonic()
        self.sent = 0
        self.pongs = 0


class FakeBinance:
    """See the module docstring. ``api_key``: historicalTrades then requires that key."""

    def __init__(
        self,
        symbols: tuple[str, ...] | list[str] = ("BTCUSDT",),
        *,
        agg_size: int = 1,
        api_key: str | None = None,
        seed: int = 7,
        market: str = "spot",
    ) -> None:
        self.futures = market in _FUTURES_PREFIX
        self.prefix = _FUTURES_PREFIX.get(market, "/api/v3")
        self.markets = {s: Market(s) for s in symbols}
        self.agg_size = agg_size
        self.api_key = api_key
        self.rng = random.Random(seed)
        self.conns: set[_Conn] = set()
        self.connections_total = 0
        self.max_concurrent = 0
        self.handshake_paths: list[str] = []
        self.refused = 0
        self.refuse_next = 0
        self.stalled = False
        self.max_age_s: float | None = None
        self.ping_every_s: float | None = None
        self.ping_timeout_s = 2.0
        self.pongs = 0
        self.ping_failures = 0
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.keyed_paths: list[str] = []
        """Paths of the REST requests that carried an ``X-MBX-APIKEY`` header."""
        self.request_times: list[tuple[float, str, int]] = []
        """(monotonic time, path, status) of every REST answer."""
        self.stale_snapshots = 0
        self._thread: LoopThread | None = None
        self._ws: Server | None = None
        self._http: HttpServer | None = None
        self._flow: asyncio.Task[None] | None = None
        self._housekeeper: asyncio.Task[None] | None = None
        for m in self.markets.values():
            m.bids = {round(99.9 - 0.1 * k, 1): 1.0 for k in range(10)}
            m.asks = {round(100.1 + 0.1 * k, 1): 1.0 for k in range(10)}
            m.history.append((m.update_id, dict(m.bids), dict(m.asks)))

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> FakeBinance:
        self._thread = LoopThread("fake-binance")
        self._thread.call(self._start())
        return self

    async def _start(self) -> None:
        self._ws = await serve(
            self._handler,
            "127.0.0.1",
            0,
            process_request=self._process_request,
            ping_interval=None,
            compression=None,
        )
        self._http = HttpServer(self._rest)
        await self._http.start()
        self._housekeeper = asyncio.create_task(self._housekeeping())

    def stop(self) -> None:
        if self._thread is None:
            return
        self._thread.call(self._stop())
        self._thread.close()
        self._thread = None

    async def _stop(self) -> None:
        for task in (self._flow, self._housekeeper):
            if task is not None:
                task.cancel()
        if self._ws is not None:
            self._ws.close()
            await self._ws.wait_closed()
        if self._http is not None:
            await self._http.stop()

    def sync(self, coro: Coroutine[Any, Any, T]) -> T:
        assert self._thread is not None
        return self._thread.call(coro)

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        assert self._thread is not None
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._thread.loop))

    @property
    def ws_url(self) -> str:
        assert self._ws is not None
        port = self._ws.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}"

    @property
    def rest_url(self) -> str:
        assert self._http is not None
        return self._http.url

    # -- websocket side -------------------------------------------------------------------------

    def _process_request(self, conn: ServerConnection, request: WsRequest) -> WsResponse | None:
        self.handshake_paths.append(request.path)
        if self.refuse_next > 0:
            self.refuse_next -= 1
            self.refused += 1
            return WsResponse(503, "Service Unavailable", Headers(), b"try later\n")
        if not request.path.startswith("/stream?streams="):
            return WsResponse(404, "Not Found", Headers(), b"no such stream path\n")
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        query = parse_qs(urlsplit(ws.request.path).query)
        streams = set(query.get("streams", [""])[0].split("/"))
        conn = _Conn(ws, streams)
        self.conns.add(conn)
        self.connections_total += 1
        self.max_concurrent = max(self.max_concurrent, len(self.conns))
        pinger = asyncio.create_task(self._pinger(conn)) if self.ping_every_s else None
        try:
            await ws.wait_closed()
        finally:
            self.conns.discard(conn)
            if pinger is not None:
                pinger.cancel()

    async def _pinger(self, conn: _Conn) -> None:
        assert self.ping_every_s is not None
        while True:
            await asyncio.sleep(self.ping_every_s)
            try:
                waiter = await conn.ws.ping()
                await asyncio.wait_for(waiter, self.ping_timeout_s)
            except TimeoutError:
                self.ping_failures += 1
                await conn.ws.close(1008, "pong timeout")
                return
            except ConnectionClosed:
                return
            conn.pongs += 1
            self.pongs += 1

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            if self.max_age_s is None:
                continue
            now = time.monotonic()
            for conn in list(self.conns):
                if now - conn.opened_at >= self.max_age_s:
                    await conn.ws.close(1000, "connection age limit")

    async def _send(self, stream: str, text: str) -> bool:
        if self.stalled:
            return False
        delivered = False
        for conn in list(self.conns):
            if stream in conn.streams:
                try:
                    await conn.ws.send(text)
                except ConnectionClosed:
                    continue
                conn.sent += 1
                delivered = True
        return delivered

    @staticmethod
    def _wrap(stream: str, payload: dict[str, Any]) -> str:
        return orjson.dumps({"stream": stream, "data": payload}).decode()

    # -- the market ----------------------------------------------------------------------------

    async def emit_trades(
        self, symbol: str, n: int = 1, *, deliver: bool = True, trade_type: str = "MARKET"
    ) -> list[int]:
        """``n`` trades (and their aggregates); ``deliver=False`` keeps them off the stream.

        ``trade_type`` other than ``MARKET`` (futures only): the trades take ids and are
        streamed, but are neither aggregated nor listed by REST."""
        if trade_type != "MARKET":
            return await self._emit_non_market(symbol, n, trade_type)
        m = self.markets[symbol]
        ids: list[int] = []
        low = symbol.lower()
        for _ in range(n):
            if not m.pending:
                m.price = round(max(1.0, m.price * (1 + self.rng.gauss(0, 0.0005))), 2)
            now = int(time.time() * 1000)
            tid = m.next_trade_id
            m.trades_made += 1
            trade = {
                "id": tid,
                "price": f"{m.price:.2f}",
                "qty": f"{self.rng.uniform(0.001, 2.0):.5f}",
                "quoteQty": "0",
                "time": now,
                "isBuyerMaker": m.pending[0]["isBuyerMaker"]
                if m.pending
                else self.rng.random() < 0.5,
                "isBestMatch": True,
            }
            m.trades.append(trade)
            m.pending.append(trade)
            ids.append(tid)
            if deliver:
                msg = {
                    "e": "trade",
                    "E": now + 1,
                    "s": symbol,
                    "t": tid,
                    "p": trade["price"],
                    "q": trade["qty"],
                    "T": now,
                    "m": trade["isBuyerMaker"],
                    "M": True,
                }
                if self.futures:
                    del msg["M"]
                    msg["X"] = "MARKET"
                if await self._send(f"{low}@trade", self._wrap(f"{low}@trade", msg)):
                    m.delivered_trades.add(tid)
            if len(m.pending) >= self.agg_size:
                group, m.pending = m.pending, []
                agg = {
                    "a": m.first_agg_id + len(m.aggs),
                    "p": group[0]["price"],
                    "q": f"{sum(float(t['qty']) for t in group):.5f}",
                    "f": group[0]["id"],
                    "l": group[-1]["id"],
                    "T": group[-1]["time"],
                    "m": group[0]["isBuyerMaker"],
                    "M": True,
                }
                m.aggs.append(agg)
                if deliver:
                    msg = {"e": "aggTrade", "E": agg["T"] + 1, "s": symbol, **agg}
                    if await self._send(f"{low}@aggTrade", self._wrap(f"{low}@aggTrade", msg)):
                        m.delivered_aggs.add(int(agg["a"]))
        return ids

    async def _emit_non_market(self, symbol: str, n: int, trade_type: str) -> list[int]:
        m = self.markets[symbol]
        low = symbol.lower()
        ids: list[int] = []
        for _ in range(n):
            now = int(time.time() * 1000)
            tid = m.next_trade_id
            m.trades_made += 1
            ids.append(tid)
            msg = {
                "e": "trade",
                "E": now + 1,
                "T": now,
                "s": symbol,
                "t": tid,
                "p": f"{m.price:.2f}",
                "q": "0.500",
                "X": trade_type,
                "m": True,
            }
            await self._send(f"{low}@trade", self._wrap(f"{low}@trade", msg))
        return ids

    async def emit_depth(self, symbol: str, n: int = 1, *, deliver: bool = True) -> int:
        """``n`` diffs; returns the last update id. ``deliver=False`` breaks the sequence."""
        m = self.markets[symbol]
        low = symbol.lower()
        for _ in range(n):
            prev = m.update_id
            # Futures update ids are not consecutive: U may skip past pu + 1.
            first = prev + 1 + (self.rng.randint(0, 3) if self.futures else 0)
            final = first + self.rng.randint(0, 2)
            bids: list[list[str]] = []
            asks: list[list[str]] = []
            for side, levels, base, step in (
                (m.bids, bids, 99.9, -0.1),
                (m.asks, asks, 100.1, 0.1),
            ):
                for _ in range(self.rng.randint(1, 3)):
                    price = round(base + step * self.rng.randint(0, 11), 1)
                    qty = 0.0 if self.rng.random() < 0.3 else round(self.rng.uniform(0.1, 5), 3)
                    if qty == 0:
                        side.pop(price, None)
                    else:
                        side[price] = qty
                    levels.append([f"{price:.1f}", f"{qty:.3f}"])
            m.update_id = final
            m.history.append((final, dict(m.bids), dict(m.asks)))
            if deliver:
                now = int(time.time() * 1000)
                msg = {
                    "e": "depthUpdate",
                    "E": now,
                    "s": symbol,
                    "U": first,
                    "u": final,
                    "b": bids,
                    "a": asks,
                }
                if self.futures:
                    msg.update({"T": now - 1, "pu": prev})
                stream = f"{low}@depth@100ms"
                if await self._send(stream, self._wrap(stream, msg)):
                    m.diffs_sent += 1
        return m.update_id

    async def emit_book_ticker(self, symbol: str) -> None:
        m = self.markets[symbol]
        low = symbol.lower()
        m.update_id += 1
        msg = {"u": m.update_id, "s": symbol, "b": "99.90", "B": "1.5", "a": "100.10", "A": "2"}
        await self._send(f"{low}@bookTicker", self._wrap(f"{low}@bookTicker", msg))

    async def send_raw(self, stream: str, text: str) -> bool:
        return await self._send(stream, text)

    async def book(self, symbol: str) -> tuple[dict[float, float], dict[float, float], int]:
        m = self.markets[symbol]
        return dict(m.bids), dict(m.asks), m.update_id

    async def start_flow(
        self, rate: float, symbols: list[str] | None = None, *, depth: bool = False
    ) -> None:
        """Emit trades (and depth diffs) at ``rate`` per second per symbol until stopped."""
        await self.stop_flow()
        names = symbols or list(self.markets)

        async def flow() -> None:
            interval = 1.0 / rate
            while True:
                for s in names:
                    await self.emit_trades(s, 1)
                    if depth:
                        await self.emit_depth(s, 1)
                await asyncio.sleep(interval)

        self._flow = asyncio.create_task(flow())

    async def stop_flow(self) -> None:
        if self._flow is not None:
            self._flow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flow
            self._flow = None

    # -- faults ----------------------------------------------------------------------------------

    async def drop_connections(self, *, abort: bool = False) -> int:
        """Close every connection (``abort``: cut TCP without a close frame)."""
        conns = list(self.conns)
        for conn in conns:
            if abort:
                conn.ws.transport.abort()
            else:
                await conn.ws.close(1001, "going away")
        return len(conns)

    async def set(self, **values: Any) -> None:
        """Set fault knobs on the loop: ``stalled``, ``refuse_next``, ``max_age_s``..."""
        for name, value in values.items():
            if not hasattr(self, name):
                raise AttributeError(name)
            setattr(self, name, value)

    async def open_connections(self) -> int:
        return len(self.conns)

    async def subscribed(self, stream: str) -> int:
        return sum(1 for c in self.conns if stream in c.streams)

    # -- REST --------------------------------------------------------------------------------------

    async def _rest(self, req: Request) -> Response:
        resp = await self._answer(req)
        self.request_times.append((time.monotonic(), req.path, resp.status))
        return resp

    async def _answer(self, req: Request) -> Response:
        self.requests.append((req.path, dict(req.query)))
        if "x-mbx-apikey" in req.headers:
            self.keyed_paths.append(req.path)
        for fault in self.faults:
            if fault.times > 0 and req.path.startswith(fault.path):
                fault.times -= 1
                return Response(
                    fault.status, fault.body, {"Content-Type": "application/json", **fault.headers}
                )
        q = req.query
        prefix, _, route = req.path.rpartition("/")
        if prefix != self.prefix:
            return Response.json({"code": -1, "msg": "not found"}, 404)
        if route == "ping":
            return Response.json({})
        m = self.markets.get(q.get("symbol", ""))
        if m is None:
            return Response.json({"code": -1121, "msg": "Invalid symbol."}, 400)
        limit = min(int(q.get("limit", 500)), 1000)
        if route == "depth":
            u, bids, asks = m.history[-1]
            if self.stale_snapshots > 0:
                self.stale_snapshots -= 1
                u, bids, asks = m.history[0]
            now = int(time.time() * 1000)
            times = {"E": now, "T": now - 1} if self.futures else {}
            return Response.json(
                {
                    "lastUpdateId": u,
                    **times,
                    "bids": [
                        [f"{p:.1f}", f"{q:.3f}"] for p, q in sorted(bids.items(), reverse=True)
                    ],
                    "asks": [[f"{p:.1f}", f"{q:.3f}"] for p, q in sorted(asks.items())],
                }
            )
        if route == "historicalTrades":
            if self.api_key is not None and req.headers.get("x-mbx-apikey") != self.api_key:
                return Response.json(
                    {"code": -2015, "msg": "Invalid API-key, IP, or permissions for action."}, 401
                )
            if "fromId" not in q:
                return Response.json(self._rest_trades(m.trades[-limit:]))
            from_id = int(q["fromId"])
            return Response.json(
                self._rest_trades([t for t in m.trades if t["id"] >= from_id][:limit])
            )
        if route == "trades":
            return Response.json(self._rest_trades(m.trades[-limit:]))
        if route == "aggTrades":
            if "fromId" in q:
                start = max(int(q["fromId"]) - m.first_agg_id, 0)
                return Response.json(m.aggs[start : start + limit])
            if "startTime" in q:
                lo, hi = int(q["startTime"]), int(q.get("endTime", 1 << 62))
                if hi - lo >= 3_600_000:
                    return Response.json({"code": -1127, "msg": "More than 1 hour."}, 400)
                return Response.json([a for a in m.aggs if lo <= a["T"] <= hi][:limit])
            return Response.json(m.aggs[-limit:])
        return Response.json({"code": -1, "msg": "not found"}, 404)

    def _rest_trades(self, trades: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Futures REST trades have no ``isBestMatch``."""
        if not self.futures:
            return trades
        return [{k: v for k, v in t.items() if k != "isBestMatch"} for t in trades]
