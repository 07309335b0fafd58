"""Recording line formats: what surrounds each Binance message in the files people have.

- ``json``: one message per line (tickvault's own recordings, most hand-made captures).
- ``cryptofeed``: ``<receive time, seconds as a decimal>: <message>``. Its files start with
  a header naming the websocket URL (``wss://… <-> <time>``); its REST files hold
  ``<url> -> <time>: <response>`` lines, of which depth snapshots are market data.
- ``hftbacktest``: ``<receive time, ns since epoch> <message>``.

The prefix is the real receive time and becomes ``ts_recv``. ``auto`` (the default)
recognises each line by its first bytes; naming a format makes a line of another shape an
error that says what was expected. The time unit of a numeric prefix is taken from its
magnitude (seconds, ms, µs or ns), so either tool's files work in either mode.

:func:`split_line` is on the replay hot path: a line starting with ``{`` costs one
comparison.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from tickvault.sources.binance.capture_formats import FORMATS, LineFormat
from tickvault.sources.binance.wire import ParseError, SkippedMessage

__all__ = ["FORMATS", "LineFormat", "split_line"]

_EXPECTED = {
    "json": "a JSON object",
    "cryptofeed": "`<seconds>: {json}` (cryptofeed)",
    "hftbacktest": "`<ns> {json}` (hftbacktest)",
    "auto": ("a JSON object, `<seconds>: {json}` (cryptofeed) or `<ns> {json}` (hftbacktest)"),
}
_DIGITS = frozenset(b"0123456789")


def _unrecognised(fmt: LineFormat) -> ParseError:
    return ParseError(f"unrecognised line: expected {_EXPECTED[fmt]}")


def _time_us(prefix: bytes) -> int:
    """A receive time (s with a fraction, or integer s/ms/µs/ns) → µs since the epoch."""
    whole, dot, frac = prefix.partition(b".")
    if (
        not whole
        or len(whole) > 19
        or not set(whole) <= _DIGITS
        or (dot and (len(whole) > 12 or not set(frac) <= _DIGITS))
    ):
        raise ParseError(f"bad receive time {prefix[:32]!r}")
    value = int(whole)
    if dot:  # seconds with a decimal fraction: exact integer arithmetic, µs rounded half up
        digits = (frac + b"0000000")[:7]
        return value * 1_000_000 + (int(digits) + 5) // 10
    if value >= 10**17:
        return value // 1000  # ns
    if value >= 10**14:
        return value  # µs
    if value >= 10**11:
        return value * 1000  # ms
    return value * 1_000_000  # s


def _rest_line(line: bytes) -> tuple[bytes, int | None, str | None]:
    """``<url> -> <time>: <response>`` (cryptofeed REST capture)."""
    url, sep, rest = line.partition(b" -> ")
    if not sep:
        raise _unrecognised("cryptofeed")
    parts = urlsplit(url.decode("ascii", "replace"))
    if not parts.path.endswith("/depth"):
        raise SkippedMessage("REST response other than a depth snapshot")
    payload, recv_us = _prefixed(rest.lstrip(), "cryptofeed")
    symbols = parse_qs(parts.query).get("symbol")
    return payload, recv_us, symbols[0].upper() if symbols else None


def _prefixed(line: bytes, fmt: LineFormat) -> tuple[bytes, int]:
    brace = line.find(b"{")
    if brace <= 0:
        raise _unrecognised(fmt)
    prefix = line[:brace].rstrip()
    colon = prefix.endswith(b":")
    if colon:
        prefix = prefix[:-1]
    if (fmt == "cryptofeed" and not colon) or (fmt == "hftbacktest" and colon):
        raise _unrecognised(fmt)
    return line[brace:], _time_us(prefix)


def split_line(line: bytes, fmt: LineFormat = "auto") -> tuple[bytes, int | None, str | None]:
    """``(message, receive µs or None, symbol named by the line or None)`` of one line.

    Raises :class:`ParseError` with a reason naming the expected shape, or
    :class:`SkippedMessage` for lines that are valid but not market data (a capture's
    header, a REST response other than a depth snapshot).
    """
    first = line[:1]
    if first == b"{":
        if fmt in ("auto", "json"):
            return line, None, None
        raise _unrecognised(fmt)
    line = line.strip()
    first = line[:1]
    if first == b"{" and fmt in ("auto", "json"):
        return line, None, None
    if fmt == "json":
        raise _unrecognised(fmt)
    if first.isdigit():
        payload, recv_us = _prefixed(line, fmt)
        return payload, recv_us, None
    if fmt in ("auto", "cryptofeed"):
        if line.startswith((b"wss://", b"ws://")) and b" <-> " in line:
            raise SkippedMessage("capture header (websocket URL)")
        if line.startswith((b"https://", b"http://")):
            return _rest_line(line)
    raise _unrecognised(fmt)
