"""The capital ledger reader: accepts the two shapes seen in the wild, rejects the rest.

Incident 004's ledger file came list-shaped where the code expected a dict
(``'list' object has no attribute 'get'``). Both shapes are legitimate:

- ``dict``: one snapshot, ``{"capital": 10250.5, "ts": "2026-06-11T09:00:00Z", ...}``;
- ``list``: the update history, ``[{"capital": ..., "ts": ...}, ...]``; the latest entry
  (highest ``ts``; the last one when no entry has a ``ts``) is the current capital.

The reading says which shape it saw. Anything else (a number, a string, null, an empty
list, entries without a finite ``capital``, a list mixing objects and other values) raises
:class:`~tickvault.core.errors.LedgerError` with a message naming the problem and the
expected shapes, never an ``AttributeError`` from deep inside.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import msgspec

from tickvault.core.errors import LedgerError
from tickvault.positions.model import to_epoch_us

_EXPECTED = 'expected an object {"capital": <number>, "ts": ...} or a list of such objects'


class LedgerReading(msgspec.Struct, frozen=True, kw_only=True):
    """The current capital and how it was read."""

    shape: Literal["dict", "list"]
    capital: float
    ts: int | None
    """Microseconds since the epoch of the entry used, when it had a timestamp."""
    entries: int
    """1 for the dict shape, the number of entries for the list shape."""
    origin: str


def _entry(item: Any, where: str) -> tuple[float, int | None]:
    if not isinstance(item, dict):
        raise LedgerError(f"{where} is a {type(item).__name__}; {_EXPECTED}")
    if "capital" not in item:
        raise LedgerError(f"{where} has no 'capital' (keys: {', '.join(map(str, item)) or '-'})")
    capital = item["capital"]
    if isinstance(capital, bool) or not isinstance(capital, int | float):
        raise LedgerError(f"{where}: capital {capital!r} is not a number")
    if not math.isfinite(capital):
        raise LedgerError(f"{where}: capital {capital!r} is not finite")
    ts = None
    if item.get("ts") is not None:
        try:
            ts = to_epoch_us(item["ts"])
        except ValueError as exc:
            raise LedgerError(f"{where}: {exc}") from None
    return float(capital), ts


def parse_capital_ledger(data: Any, origin: str = "capital ledger") -> LedgerReading:
    """Read an already-decoded ledger value; see the module docstring for the shapes."""
    if isinstance(data, dict):
        capital, ts = _entry(data, origin)
        return LedgerReading(shape="dict", capital=capital, ts=ts, entries=1, origin=origin)
    if isinstance(data, list):
        if not data:
            raise LedgerError(f"{origin} is an empty list; {_EXPECTED}")
        entries = [_entry(item, f"{origin} entry {i}") for i, item in enumerate(data)]
        stamped = [(ts, i) for i, (_, ts) in enumerate(entries) if ts is not None]
        index = max(stamped)[1] if stamped else len(entries) - 1
        capital, ts = entries[index]
        return LedgerReading(
            shape="list", capital=capital, ts=ts, entries=len(entries), origin=origin
        )
    raise LedgerError(f"{origin} is a {type(data).__name__}; {_EXPECTED}")


def read_capital_ledger(path: str | Path) -> LedgerReading:
    """Read a JSON ledger file; a missing or undecodable file is a :class:`LedgerError`."""
    path = Path(path)
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise LedgerError(f"no capital ledger at {path}") from None
    except ValueError as exc:
        raise LedgerError(f"capital ledger {path} is not JSON: {exc}") from None
    return parse_capital_ledger(data, origin=f"capital ledger {path}")
