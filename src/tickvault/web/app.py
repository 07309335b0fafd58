"""The HTTP API and dashboard of a running pipeline (``tickvault run`` / ``demo``).

Why FastAPI: the OpenAPI description is generated from the same route declarations that
serve the requests, so the description cannot drift from the API (a schemathesis run
against it is part of the test suite), and it runs on uvicorn inside the pipeline's own
asyncio loop (:mod:`tickvault.web.server`), reading the pipeline's live objects directly
through :class:`tickvault.web.ports.ServedPipeline` (the web layer never imports the
pipeline; ``/status`` is its :class:`~tickvault.core.snapshot.StatusSnapshot`).

Endpoints (see ``docs/http.md``):

* ``GET /health`` liveness: 200 while the process serves requests. Never needs the token.
* ``GET /ready`` 200 when every source is connected and the bus and store answer, else 503.
* ``GET /status`` the same JSON as ``tickvault status --json``.
* ``GET /metrics`` Prometheus text (:mod:`tickvault.web.metrics`).
* ``GET /query?sql=&limit=`` one read-only statement through ``Store.query`` (the store's
  query sandbox): 400 for refused or failing SQL and for a query stopped by the store's
  memory limit, 503 while the store is unavailable or a previous query is still running,
  504 past the store's time limit or ``[http] query_timeout_s``.
* ``GET /api/dashboard`` the compact snapshot the dashboard polls.
* ``GET /`` the dashboard; ``/static/*`` its assets (package data, no CDN).
* ``GET /openapi.json`` this description.

Request contract (:mod:`tickvault.web.guard`): a ``Host`` that does not name this server,
a cross-site ``Sec-Fetch-Site`` or a foreign ``Origin`` gets 403 on every route, before
the token is looked at. Everything shown (``/status``, ``/metrics``, the dashboard, error
messages) passes through :mod:`tickvault.core.redact`.

Auth contract: when a token is configured, every request except ``/health`` needs
``Authorization: Bearer <token>``, or the ``tickvault_token`` cookie that ``/?token=<token>``
sets for browsers (HttpOnly, SameSite=Strict); anything else gets 401. The token is
compared in constant time and never logged.
"""

import asyncio
import hmac
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Annotated, Any

import msgspec
import orjson
from fastapi import FastAPI, Query, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import RedirectResponse, Response
from pydantic import BaseModel

from tickvault.core.config import HttpSettings
from tickvault.core.errors import (
    QueryLimitExceeded,
    QueryRejected,
    QueryTimeout,
    StoreError,
    StoreUnavailable,
)
from tickvault.core.redact import redact_text, redact_value
from tickvault.core.snapshot import LatencySummary
from tickvault.stores.base import QueryResult, Store
from tickvault.web.guard import RequestGuard, parse_listen
from tickvault.web.metrics import (
    CONTENT_TYPE,
    PipelineMetrics,
    gather_snapshot,
    guardian_view,
    table_name,
)
from tickvault.web.ports import ServedPipeline

COOKIE = "tickvault_token"
OPEN_PATHS = frozenset({"/health"})
STATIC_FILES = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
CHECK_TIMEOUT_S = 2.0


class Health(BaseModel):
    status: str
    uptime_s: float


class ReadyCheck(BaseModel):
    ok: bool
    detail: str = ""


class Ready(BaseModel):
    ready: bool
    checks: dict[str, ReadyCheck]


class QueryResponse(BaseModel):
    columns: list[str]
    rows: list[list[Any]]  # SQL values of any column type, as the store returns them
    truncated: bool
    elapsed_ms: float


class ErrorResponse(BaseModel):
    error: str
    type: str


def _json(value: object, status: int = 200) -> Response:
    return Response(
        orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS),
        status_code=status,
        media_type="application/json",
    )


def _error(status: int, message: str, kind: str) -> Response:
    return _json({"error": redact_text(message), "type": kind}, status)


def _asset(name: str) -> bytes:
    return resources.files("tickvault.web").joinpath("static", name).read_bytes()


class QueryRunner:
    """Runs one ``/query`` at a time with a time limit, on ``store`` (anything with
    :meth:`tickvault.stores.base.Store.query`).

    The store stops a query at its own time limit (DuckDB interrupts it, ClickHouse's
    ``max_execution_time``); should the answer take longer than ``query_timeout_s`` here,
    the request gets 504 and, until the store has stopped the query, further queries get
    503 instead of queueing behind it: a slow query cannot pile up work.
    """

    def __init__(self, store: Store, settings: HttpSettings) -> None:
        self.store = store
        self.settings = settings
        self._running: asyncio.Task[QueryResult] | None = None

    async def run(self, sql: str, limit: int) -> Response:
        if self._running is not None and not self._running.done():
            return _error(503, "a previous query is still running; try again", "Busy")
        started = time.perf_counter()
        task = asyncio.ensure_future(self.store.query(sql, limit))
        task.add_done_callback(_retrieve)
        self._running = task
        try:
            result = await asyncio.wait_for(asyncio.shield(task), self.settings.query_timeout_s)
        except TimeoutError:
            return _error(
                504, f"query took longer than {self.settings.query_timeout_s:g} s", "Timeout"
            )
        except QueryTimeout as exc:  # the store stopped it at its own limit
            return _error(504, str(exc), "Timeout")
        except QueryLimitExceeded as exc:
            return _error(400, str(exc), "QueryLimitExceeded")
        except QueryRejected as exc:
            return _error(400, str(exc), "QueryRejected")
        except StoreUnavailable as exc:
            return _error(503, str(exc), "StoreUnavailable")
        except StoreError as exc:  # the store ran the statement and it failed: the SQL's fault
            return _error(400, str(exc), "QueryFailed")
        return _json(
            {
                "columns": result.columns,
                "rows": result.rows,
                "truncated": result.truncated,
                "elapsed_ms": round((time.perf_counter() - started) * 1000, 3),
            }
        )


def _retrieve(task: asyncio.Task[QueryResult]) -> None:
    if not task.cancelled():
        task.exception()  # a timed-out query's outcome: nobody awaits it any more


async def readiness(pipeline: ServedPipeline) -> tuple[bool, dict[str, dict[str, bool | str]]]:
    """Sources connected, primary bus and store answering (each bounded in time)."""
    checks: dict[str, dict[str, bool | str]] = {}
    down = [h.name for h in pipeline.live_status().sources if not h.connected]
    checks["sources"] = {
        "ok": not down,
        "detail": f"not connected: {', '.join(down)}" if down else "",
    }
    try:
        await asyncio.wait_for(pipeline.bus.streams(), CHECK_TIMEOUT_S)
        checks["bus"] = {"ok": True, "detail": ""}
    except Exception as exc:
        checks["bus"] = {"ok": False, "detail": str(exc) or type(exc).__name__}
    try:
        # counts(), not health(): the DuckDB store's health() leaves a result open on the
        # writer's connection, which fails the writer's next write once.
        await asyncio.wait_for(pipeline.store.counts(), CHECK_TIMEOUT_S)
        checks["store"] = {"ok": True, "detail": ""}
    except Exception as exc:
        checks["store"] = {"ok": False, "detail": str(exc) or type(exc).__name__}
    return all(c["ok"] for c in checks.values()), checks


async def dashboard_snapshot(pipeline: ServedPipeline) -> dict[str, object]:
    """What the dashboard draws: counters it turns into rates, backlog, latency, states."""
    live = pipeline.live_status()
    snap = await gather_snapshot(pipeline)
    backlog = {
        f"{b.name} {info.stream}/{g.name}": {"lag": g.lag, "pending": g.pending}
        for b in snap.buses
        for info in b.streams
        for g in info.groups
    }
    latency = [
        msgspec.convert(w.stats.tick_to_stored.snapshot(), LatencySummary) for w in pipeline.writers
    ]
    stored: dict[str, int] = {}
    for w in pipeline.writers:
        for kind, n in w.stats.inserted_by_table.items():
            stored[table_name(kind)] = stored.get(table_name(kind), 0) + n
    return {
        "at": time.time(),
        "uptime_s": live.uptime_s,
        "sources": [
            {
                "name": s.name,
                "kind": s.kind,
                "connected": s.connected,
                "messages": s.messages,
                "gaps_open": s.gaps_open,
            }
            for s in live.sources
        ],
        "stored": stored,
        "published": pipeline.publisher.stats.records,
        "backlog": backlog,
        "latency": msgspec.to_builtins(latency[0] if len(latency) == 1 else _worst(latency)),
        "tables": snap.tables,
        "store_up": snap.store_up,
        "breakers": [{"name": b.name, "state": b.state} for b in live.breakers],
        "guardian": guardian_view(pipeline.guardian),
        "spool": msgspec.to_builtins(live.failover.spool),
        "dead_letters": sum((snap.dead_letters or {}).values()),
        "events": live.events,
    }


def _worst(latencies: list[LatencySummary]) -> LatencySummary:
    """Several writers: the one with the most records, which dominates what users see."""
    return max(latencies, key=lambda s: s.count)


def create_app(pipeline: ServedPipeline, settings: HttpSettings, token: str | None) -> FastAPI:
    """The API for ``pipeline``; ``token`` (None: open) is checked on all but ``/health``."""
    app = FastAPI(
        title="tickvault",
        version="1",
        description="HTTP API of a running tickvault pipeline.",
        docs_url=None,
        redoc_url=None,
    )
    metrics = PipelineMetrics(pipeline)
    runner = QueryRunner(pipeline.store, settings)
    app.state.metrics = metrics
    guard = RequestGuard(parse_listen(settings.listen)[0], settings.allowed_hosts)

    @app.middleware("http")
    async def require_token(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        refusal = guard.refusal(dict(request.headers))
        if refusal is not None:  # every route, /health included: DNS rebinding, cross-site
            return _error(403, refusal, "Forbidden")
        if token is None or request.url.path in OPEN_PATHS:
            return await call_next(request)
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        candidates = [given.strip() if scheme.lower() == "bearer" else ""]
        candidates.append(request.cookies.get(COOKIE, ""))
        if any(c and hmac.compare_digest(c.encode(), token.encode()) for c in candidates):
            return await call_next(request)
        if request.url.path == "/":
            given_q = request.query_params.get("token", "")
            if given_q and hmac.compare_digest(given_q.encode(), token.encode()):
                redirect = RedirectResponse("/", status_code=303)
                redirect.set_cookie(COOKIE, token, httponly=True, samesite="strict")
                return redirect
        return Response(
            orjson.dumps({"error": "missing or wrong bearer token", "type": "Unauthorized"}),
            status_code=401,
            media_type="application/json",
            headers={"WWW-Authenticate": "Bearer"},
        )

    # FastAPI's ``responses`` argument: its own open-ended OpenAPI fragments.
    errors: dict[int | str, dict[str, Any]] = {401: {"model": ErrorResponse}}

    @app.get("/health", response_model=Health, tags=["operations"])
    async def health() -> Response:
        """Liveness: the process is up and serving (no token needed)."""
        return _json({"status": "ok", "uptime_s": time.time() - pipeline.started_at})

    @app.get(
        "/ready",
        response_model=Ready,
        responses={**errors, 503: {"model": Ready}},
        tags=["operations"],
    )
    async def ready() -> Response:
        """Readiness: every source connected, the bus and the store reachable."""
        ok, checks = await readiness(pipeline)
        return _json({"ready": ok, "checks": checks}, 200 if ok else 503)

    @app.get("/status", responses={**errors, 200: {"content": {"application/json": {}}}})
    async def status() -> Response:
        """The same JSON as ``tickvault status --json``."""
        return _json((await pipeline.status()).to_builtins())  # redacted by collect_status

    @app.get(
        "/metrics",
        responses={**errors, 200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
        tags=["operations"],
    )
    async def prometheus() -> Response:
        """Prometheus text exposition; every name starts with ``tickvault_``."""
        text = redact_text((await metrics.render()).decode())
        return Response(text.encode(), media_type=CONTENT_TYPE)

    @app.get(
        "/query",
        response_model=QueryResponse,
        responses={
            **errors,
            400: {"model": ErrorResponse, "description": "refused or failing SQL"},
            503: {"model": ErrorResponse, "description": "store unavailable or busy"},
            504: {"model": ErrorResponse, "description": "time limit reached"},
        },
    )
    async def query(
        sql: Annotated[str, Query(min_length=1, max_length=4_000)],
        limit: Annotated[int, Query(ge=1, le=settings.query_max_rows)] = min(
            1000, settings.query_max_rows
        ),
    ) -> Response:
        """Run one read-only SELECT; at most ``limit`` rows (``truncated`` says if more)."""
        return await runner.run(sql, limit)

    @app.get("/api/dashboard", responses={**errors, 200: {"content": {"application/json": {}}}})
    async def dashboard_data() -> Response:
        """The snapshot the dashboard polls once a second."""
        return _json(redact_value(await dashboard_snapshot(pipeline)))

    @app.get("/", responses={**errors, 200: {"content": {"text/html": {}}}})
    async def dashboard() -> Response:
        """The live dashboard (HTML; assets under ``/static/``)."""
        return Response(_asset("index.html"), media_type="text/html; charset=utf-8")

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in STATIC_FILES:
            return _error(404, "not found", "NotFound")
        return Response(_asset(name), media_type=STATIC_FILES[name])

    def openapi() -> dict[str, Any]:  # FastAPI's type of ``app.openapi``
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"}
            }
            schema["security"] = [{"bearer": []}] if token is not None else []
            schema["paths"]["/health"]["get"]["security"] = []
            app.openapi_schema = schema
        return app.openapi_schema

    # FastAPI's documented way to customise the description is to replace the method.
    app.openapi = openapi  # type: ignore[method-assign]
    return app
