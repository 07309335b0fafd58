"""Polygon aggregates pages: accepting a page, following its cursor, turning bars into rows.

- :func:`accepted_results`: a page counts only when its body's ``status`` is ``OK`` or
  ``DELAYED``; any other (``ERROR``, ``NOT_AUTHORIZED``, ... sent with HTTP 200) is a
  refusal, raised as :class:`~tickvault.sources.rest.VenueError` with the venue's words.
- :func:`cursor_request`: ``next_url`` is taken as a cursor only (path and query), and only
  when its path is the same series' aggregates; the caller sends it to its own host.
- :func:`bar_rows`: one ``bar`` row per valid bar; ``v``/``vw``/``n`` become NULL when the
  venue does not report them (index bars), never 0. Invalid bars become dead letters.
"""

from __future__ import annotations

import math
import urllib.parse
from typing import Any

import orjson

from tickvault.bus.base import NewDeadLetter
from tickvault.sources.rest import VenueError

SOURCE = "polygon"
ACCEPTED_STATUSES = frozenset({"OK", "DELAYED"})


def accepted_results(page: Any) -> tuple[list[Any], bool]:
    """The page's results and whether it was ``DELAYED``; VenueError for a refusal."""
    if not isinstance(page, dict):
        raise VenueError("answer is not a JSON object")
    status = page.get("status")
    if status not in ACCEPTED_STATUSES:
        said = page.get("error") or page.get("message") or ""
        detail = f": {str(said)[:200]}" if said else ""
        raise VenueError(f"refused with status {str(status)[:40]!r}{detail}")
    results = page.get("results")
    if results is None:
        return [], status == "DELAYED"
    if not isinstance(results, list):
        raise VenueError("results is not a list")
    return results, status == "DELAYED"


def cursor_request(next_url: Any, series_path: str) -> tuple[str, dict[str, str]]:
    """Path and query of ``next_url`` (without any ``apiKey``), for the caller's own host.

    Raises VenueError when ``next_url`` is not a string or leads away from ``series_path``
    (``/v2/aggs/ticker/{ticker}/range/{multiplier}/{timespan}/``).
    """
    if not isinstance(next_url, str):
        raise VenueError("next_url is not a string")
    parts = urllib.parse.urlsplit(next_url)
    decoded = urllib.parse.unquote(parts.path)
    if not decoded.startswith(series_path) or "/.." in decoded or "?" in decoded:
        raise VenueError(f"next_url leads away from {series_path}: {decoded[:200]}")
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    return parts.path, {k: v for k, v in query if k.lower() != "apikey"}


def _reported(value: Any) -> float | None:
    """A reported ``v``/``vw``/``n`` as a number; None when absent (or not a number)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _bar_reason(o: float, h: float, lo: float, c: float, v: float | None) -> str | None:
    for name, x in (("open", o), ("high", h), ("low", lo), ("close", c)):
        if not math.isfinite(x):
            return f"non-finite {name}"
        if x <= 0:
            return f"non-positive {name}"
    if v is not None and not math.isfinite(v):
        return "non-finite volume"
    if v is not None and v < 0:
        return "negative volume"
    if h < lo:
        return "high below low"
    return None


def bar_rows(
    ticker: str,
    timeframe: str,
    adjusted: bool,
    results: list[Any],
    rejects: list[NewDeadLetter],
    stamps: list[int],
) -> list[tuple[Any, ...]]:
    """``bar`` rows (column order of :data:`tickvault.core.records.KINDS`) for ``results``;
    invalid bars are appended to ``rejects``, each valid bar's ``t`` (ms) to ``stamps``."""
    rows: list[tuple[Any, ...]] = []
    for bar in results:
        try:
            t = int(bar["t"])
            o, h, lo, c = (float(bar[k]) for k in ("o", "h", "l", "c"))
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            reason = f"missing field {exc}" if isinstance(exc, KeyError) else "bad value"
            key = f"polygon:{ticker}:{timeframe}:{bar.get('t') if isinstance(bar, dict) else ''}"
            rejects.append(NewDeadLetter("raw", reason, orjson.dumps(bar), key))
            continue
        v = _reported(bar.get("v"))
        refused = _bar_reason(o, h, lo, c, v)
        if refused is not None:
            key = f"polygon:{ticker}:{timeframe}:{t}:{refused}"
            rejects.append(NewDeadLetter("raw", refused, orjson.dumps(bar), key))
            continue
        vw = _reported(bar.get("vw"))
        vwap = vw if vw is not None and 0 < vw < math.inf else None
        n = _reported(bar.get("n"))
        count = int(n) if n is not None and 0 <= n < 2**63 else None
        rows.append((SOURCE, ticker, timeframe, t * 1000, o, h, lo, c, v, vwap, count, adjusted))
        stamps.append(t)
    return rows
