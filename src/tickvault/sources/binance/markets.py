"""Binance markets: each one its own key space.

Trade, aggregate-trade and order-book update ids are per market and per symbol: spot
``BTCUSDT`` and USD-M ``BTCUSDT`` have unrelated id sequences that overlap. Every row
therefore names its market in the ``exchange`` column (``source`` for bars):

=================  =====================================  ==========================
market             websocket host                          ``exchange``
=================  =====================================  ==========================
spot               ``stream.binance.com``                  ``binance``
USD-M futures      ``fstream.binance.com``                 ``binance-usdm``
COIN-M futures     ``dstream.binance.com``                 ``binance-coinm``
Binance.US         ``stream.binance.us``                   ``binance-us``
Binance TR         ``stream-cloud.trbinance.com``          ``binance-tr``
=================  =====================================  ==========================

Live collectors take the market from their endpoint (:func:`market_from_url`); replays
take it from the user (``--exchange``) and count messages that carry fields only another
market sends (:func:`foreign_fields`), so a futures file replayed as spot is noticed.

Each market also has its own REST API (:data:`REST_ROUTES`): a collector on a futures
endpoint fetches depth snapshots and backfills trade gaps from ``/fapi/v1/...`` (USD-M) or
``/dapi/v1/...`` (COIN-M), never from the spot ``/api/v3/...`` paths, whose ids belong to
another key space. The answers have the spot shapes (futures depth snapshots add ``E`` and
``T``, futures historical trades lack ``isBestMatch``; neither is read).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from tickvault.core.errors import ConfigError

SPOT = "binance"
USDM = "binance-usdm"
COINM = "binance-coinm"
US = "binance-us"
TR = "binance-tr"
MARKETS = (SPOT, USDM, COINM, US, TR)
FUTURES = frozenset({USDM, COINM})


@dataclass(frozen=True)
class RestRoutes:
    """One market's REST base URL and the market-data paths the collector calls."""

    base: str
    depth: str
    agg_trades: str
    historical_trades: str


def _routes(base: str, prefix: str) -> RestRoutes:
    return RestRoutes(base, f"{prefix}/depth", f"{prefix}/aggTrades", f"{prefix}/historicalTrades")


REST_ROUTES: dict[str, RestRoutes] = {
    SPOT: _routes("https://api.binance.com", "/api/v3"),
    USDM: _routes("https://fapi.binance.com", "/fapi/v1"),
    COINM: _routes("https://dapi.binance.com", "/dapi/v1"),
    US: _routes("https://api.binance.us", "/api/v3"),
    TR: _routes("https://api.binance.me", "/api/v3"),
}
"""Binance's documented REST API of each market (spot, USD-M and COIN-M futures reference)."""


def rest_routes(market: str) -> RestRoutes:
    """The REST routes of ``market`` (spot's for a name that is not a market)."""
    return REST_ROUTES.get(market, REST_ROUTES[SPOT])


def rest_base(market: str, configured: str) -> str:
    """The REST base URL a collector of ``market`` uses: ``configured`` unless it is the spot
    default left in place for another market (then that market's own base)."""
    if configured.rstrip("/") == REST_ROUTES[SPOT].base and market != SPOT:
        return rest_routes(market).base
    return configured


# Websocket and REST hosts of each market (suffix match on the host name).
_HOSTS = (
    ("fstream.binance.com", USDM),
    ("fapi.binance.com", USDM),
    ("dstream.binance.com", COINM),
    ("dapi.binance.com", COINM),
    ("binance.us", US),
    ("trbinance.com", TR),
    ("binance.me", TR),
    ("binance.com", SPOT),
)


def market_from_url(url: str, default: str = SPOT) -> str:
    """The market an endpoint belongs to; ``default`` for hosts that are not Binance's own
    (testnets, mirrors, local test venues)."""
    host = (urlsplit(url).hostname or "").lower()
    for suffix, market in _HOSTS:
        if host == suffix or host.endswith("." + suffix):
            return market
    return default


def check_market(name: str) -> str:
    """Return ``name`` if it is a known market; raise ConfigError naming the choices."""
    if name not in MARKETS:
        raise ConfigError(f"unknown Binance market {name!r}: choose one of {', '.join(MARKETS)}")
    return name


FOREIGN_RULES: dict[bool, dict[str, tuple[bytes, bool]]] = {
    # futures market: kind -> (field, whether its *presence* marks another market)
    True: {"quote": (b'"E":', False), "depth": (b'"pu":', False)},
    False: {"quote": (b'"E":', True), "depth": (b'"pu":', True), "trade": (b'"X":', True)},
}
"""Spot-family markets never send an event time on book tickers, ``pu`` on depth diffs or
a trade type ``X``; futures always send the first two. Keyed by "is a futures market"."""


def foreign_fields(exchange: str, kind: str, line: bytes) -> bool:
    """True when a parsed message of ``kind`` carries fields that only another market sends
    (:data:`FOREIGN_RULES`). A byte search, cheap enough to run on every replayed line."""
    rule = FOREIGN_RULES[exchange in FUTURES].get(kind)
    return rule is not None and (rule[0] in line) is rule[1]
