"""Hostile recordings: valid Binance lines shuffled with every kind of poison we know of.

For the test suite and ``bench/hostile_soak.py``, and for anyone who wants to try a
deployment the way an attacker or an unlucky upstream would. :data:`HOSTILE_KINDS` lists
each kind with the dead-letter reason a correct ingest gives it; :func:`write_hostile`
writes a file and returns what a correct ingest must end up with: every valid record stored
once, every hostile line dead-lettered once with its reason.

Hostile lines never reuse a valid line's key, and no two hostile lines are equal, so every
one of them is its own dead letter.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

UNRECOGNISED = (
    "unrecognised line: expected a JSON object, `<seconds>: {json}` (cryptofeed)"
    " or `<ns> {json}` (hftbacktest)"
)
"""The reason ``replay`` gives a line that is neither JSON nor a known capture format."""

TS_MS = 1_700_000_000_000
"""2023-11-14: the event time of the valid lines (milliseconds, as the venue sends)."""


def _trade(i: int, **changes: object) -> bytes:
    doc: dict[str, object] = {
        "e": "trade",
        "E": TS_MS + 5,
        "s": "BTCUSDT",
        "t": 10**15 + i,
        "p": "43000.5",
        "q": "0.25",
        "T": TS_MS,
        "m": True,
        "M": True,
    }
    doc.update(changes)
    return orjson.dumps(doc)


def _raw_trade(i: int, field_name: str, raw: bytes) -> bytes:
    """A trade whose ``field_name`` is the raw JSON text ``raw`` (numbers orjson refuses)."""
    marker = b'"__raw__"'
    return _trade(i, **{field_name: "__raw__"}).replace(marker, raw)


def _nested(i: int, depth: int) -> bytes:
    return _trade(i).replace(b',"M":true', b',"x":' + b"[" * depth + b"]" * depth)


@dataclass(frozen=True)
class HostileKind:
    name: str
    reason: str
    make: Callable[[int], bytes]
    limit: int | None = None
    """At most this many per file (for the very large ones)."""


HOSTILE_KINDS: tuple[HostileKind, ...] = (
    HostileKind("nested_1000", "nested too deep", lambda i: _nested(i, 1000)),
    HostileKind(
        "nested_array_100k",
        UNRECOGNISED,
        lambda i: b"[" * 100_000 + str(i).encode() + b"]" * 100_000,
        limit=20,
    ),
    HostileKind(
        "wrapped_nested",
        "nested too deep",
        lambda i: b'{"stream":"btcusdt@trade","data":' + _nested(i, 3000) + b"}",
    ),
    HostileKind(
        "id_2_64", "trade_id out of range", lambda i: _raw_trade(i, "t", str(2**64 + i).encode())
    ),
    HostileKind("id_2_63", "trade_id out of range", lambda i: _trade(i, t=2**63 + i)),
    HostileKind("id_negative", "negative trade_id", lambda i: _trade(i, t=-1 - i)),
    HostileKind("id_huge_text", "trade_id out of range", lambda i: _trade(i, t=str(10**30 + i))),
    HostileKind("qty_zero", "non-positive qty", lambda i: _trade(i, q="0")),
    HostileKind("qty_negative", "negative qty", lambda i: _trade(i, q="-0.5")),
    HostileKind("price_nan", "non-finite price", lambda i: _trade(i, p="NaN")),
    HostileKind(
        "price_1e400", "bad value: Number out of range - at `$.p`", lambda i: _trade(i, p="1e400")
    ),
    HostileKind("price_zero", "non-positive price", lambda i: _trade(i, p="0")),
    HostileKind("ts_1969", "ts_event outside the time window", lambda i: _trade(i, T=-1000)),
    HostileKind("ts_1970", "ts_event outside the time window", lambda i: _trade(i, T=5)),
    HostileKind(
        "ts_2262", "ts_event outside the time window", lambda i: _trade(i, T=9_214_646_400_000)
    ),
    HostileKind(
        "ts_1e20_ms",
        "ts_event outside the time window",
        lambda i: _raw_trade(i, "T", str(10**20 + i).encode()),
    ),
    HostileKind(
        "ts_2_70_ms",
        "ts_event outside the time window",
        lambda i: _raw_trade(i, "T", str(2**70).encode()),
    ),
    HostileKind("symbol_nul", "bad characters in symbol", lambda i: _trade(i, s="BTC\x00USDT")),
    HostileKind("symbol_space", "bad characters in symbol", lambda i: _trade(i, s="BTC USDT")),
    HostileKind("symbol_emoji", "bad characters in symbol", lambda i: _trade(i, s="BTC\U0001f680")),
    HostileKind("symbol_empty", "empty symbol", lambda i: _trade(i, s="")),
    HostileKind("symbol_10mb", "symbol too long", lambda i: _trade(i, s="A" * 10_000_000), limit=2),
    HostileKind(
        "invalid_utf8",
        "invalid UTF-8",
        lambda i: _trade(i, s="BTC\x01").replace(b"\\u0001", b"\xff\xfe"),
    ),
    HostileKind("truncated", "malformed JSON", lambda i: _trade(i)[:-7]),
    HostileKind("not_object", UNRECOGNISED, lambda i: orjson.dumps([i, 2, 3])),
    HostileKind("bare_number", UNRECOGNISED, lambda i: str(10**40 + i).encode()),
    HostileKind("nul_bytes", UNRECOGNISED, lambda i: b"\x00" * (i % 7 + 1) + str(i).encode()),
    HostileKind(
        "unknown_event",
        "unknown event type 'mystery'",
        lambda i: orjson.dumps({"e": "mystery", "E": TS_MS, "s": "BTCUSDT", "k": {"i": i}}),
    ),
    HostileKind(
        "id_float",
        "bad value: Expected `int`, got `float` - at `$.t`",
        lambda i: _trade(i, t=i + 0.5),
    ),
    HostileKind(
        "huge_line",
        "message too large",
        lambda i: b'{"e":"trade","junk":"' + b"x" * (2 << 20) + str(i).encode(),
        limit=3,
    ),
    HostileKind(
        "quote_negative_update",
        "negative update_id",
        lambda i: orjson.dumps(
            {"u": -5 - i, "s": "BTCUSDT", "b": "1.0", "B": "1", "a": "1.1", "A": "1"}
        ),
    ),
    HostileKind(
        "agg_id_2_63",
        "agg_id out of range",
        lambda i: orjson.dumps(
            {
                "e": "aggTrade",
                "E": TS_MS,
                "s": "BTCUSDT",
                "a": 2**63 + i,
                "p": "1.5",
                "q": "2",
                "f": 1,
                "l": 2,
                "T": TS_MS,
                "m": False,
                "M": True,
            }
        ),
    ),
)


@dataclass
class HostileRecording:
    path: Path
    lines: int = 0
    valid_trades: set[int] = field(default_factory=set)
    """Trade ids of the valid lines (symbol ``ETHUSDT``)."""
    reasons: Counter[str] = field(default_factory=Counter)
    """Hostile lines per expected dead-letter reason."""
    kinds: Counter[str] = field(default_factory=Counter)

    @property
    def hostile_lines(self) -> int:
        return sum(self.reasons.values())


def valid_trade(tid: int, rng: random.Random) -> bytes:
    return orjson.dumps(
        {
            "e": "trade",
            "E": TS_MS + tid % 1000 + 3,
            "s": "ETHUSDT",
            "t": tid,
            "p": f"{2300 + rng.random():.2f}",
            "q": f"{0.001 + rng.random():.4f}",
            "T": TS_MS + tid % 1000,
            "m": rng.random() < 0.5,
            "M": True,
        }
    )


def write_hostile(
    path: Path, valid: int, hostile: int, *, seed: int = 7, first_id: int = 1
) -> HostileRecording:
    """Write ``valid`` valid trades and ``hostile`` hostile lines, shuffled, to ``path``.

    The hostile lines cycle through :data:`HOSTILE_KINDS` (respecting their limits), so a
    file with at least ``len(HOSTILE_KINDS)`` hostile lines has every kind.
    """
    rng = random.Random(seed)
    rec = HostileRecording(path)
    kinds = list(HOSTILE_KINDS)
    plan: list[int] = [1] * valid + [0] * hostile
    rng.shuffle(plan)
    next_id = first_id
    k = 0
    with open(path, "wb") as fh:
        for is_valid in plan:
            if is_valid:
                line = valid_trade(next_id, rng)
                rec.valid_trades.add(next_id)
                next_id += 1
            else:
                while True:
                    kind = kinds[k % len(kinds)]
                    k += 1
                    if kind.limit is None or rec.kinds[kind.name] < kind.limit:
                        break
                line = kind.make(k)
                rec.kinds[kind.name] += 1
                rec.reasons[kind.reason] += 1
            fh.write(line + b"\n")
            rec.lines += 1
    return rec
