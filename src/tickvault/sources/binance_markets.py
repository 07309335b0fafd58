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
"""

from __future__ import annotations

from urllib.parse import urlsplit

from tickvault.errors import ConfigError

SPOT = "binance"
USDM = "binance-usdm"
COINM = "binance-coinm"
US = "binance-us"
TR = "binance-tr"
MARKETS = (SPOT, USDM, COINM, US, TR)
FUTURES = frozenset({USDM, COINM})

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


def foreign_fields(exchange: str, kind: str, line: bytes) -> bool:
    """True when a parsed message of ``kind`` carries fields that only another market sends.

    Spot-family markets never send an event time on book tickers, ``pu`` on depth diffs or
    a trade type ``X``; futures always send the first two. A byte search, cheap enough to
    run on every replayed line.
    """
    if exchange in FUTURES:
        if kind == "quote":
            return b'"E":' not in line
        if kind == "depth":
            return b'"pu":' not in line
        return False
    if kind == "quote":
        return b'"E":' in line
    if kind == "depth":
        return b'"pu":' in line
    if kind == "trade":
        return b'"X":' in line
    return False
