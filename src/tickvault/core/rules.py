"""Validation rules of record fields: per value (slow path) and per column (vectorised).

Every field of a record kind declares its rules on its Struct field
(:mod:`tickvault.core.records`; :data:`~tickvault.core.records.KINDS` lists them). A value
that breaks one is refused with a short, stable reason that names the rule and the field
(dead letters are grouped by it, so a reason never contains the offending value):

============  ===================================================  =========================
rule          holds when                                           reasons
============  ===================================================  =========================
required      the value is present                                 ``missing <f>``
positive      a finite number > 0 (prices; trade quantities)       ``non-positive <f>``,
                                                                   ``non-finite <f>``,
                                                                   ``non-numeric <f>``
non_negative  a finite number >= 0 (sizes that may be 0)           ``negative <f>``, ...
id            an integer in ``[0, 2**63)`` (ids, sequence numbers) ``negative <f>``,
                                                                   ``<f> out of range``
timestamp     integer microseconds inside the :class:`TimeWindow`  ``<f> outside the time
                                                                   window``
name          1-64 characters of ``A-Z a-z 0-9 . _ : / @ + -``     ``empty <f>``,
              (symbols, venues, channels: no spaces, no control    ``<f> too long``,
              characters, no NUL)                                  ``bad characters in <f>``
text          a non-empty string of at most 4,096 characters       ``empty <f>``,
                                                                   ``<f> too long``
============  ===================================================  =========================

A :class:`TimeWindow` says which event times are plausible: never before ``earliest``
(a venue's first day for replays; 1990 by default for everything), never more than
``future_s`` ahead of the local clock, and for live sources never more than ``max_age_s``
behind it.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any, Literal

from tickvault.core.errors import RecordError

if TYPE_CHECKING:
    import pyarrow as pa

Rule = Literal["required", "positive", "non_negative", "id", "timestamp", "name", "text"]

NAME_MAX = 64
TEXT_MAX = 4096
ID_LIMIT = 1 << 63
_NAME_CHARS = r"A-Za-z0-9._:/@+\-"
_NAME_RE = re.compile(f"[{_NAME_CHARS}]+")
_NAME_PATTERN = f"^[{_NAME_CHARS}]+$"

DEFAULT_EARLIEST = date(1990, 1, 1)
BINANCE_EARLIEST = date(2017, 7, 1)
"""Binance spot opened on 2017-07-14: no recorded Binance message can be older."""


def day_us(day: date) -> int:
    """Microseconds since the epoch at the start of ``day`` (UTC)."""
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) * 1_000_000


@dataclass(frozen=True)
class TimeWindow:
    """The plausible range of timestamps, relative to the local clock at check time."""

    earliest_us: int = day_us(DEFAULT_EARLIEST)
    future_s: float = 86_400.0
    max_age_s: float | None = None
    """Live data only: how far behind the local clock a timestamp may be."""

    def bounds(self, now_us: int | None = None) -> tuple[int, int]:
        """``(lowest, highest)`` allowed microseconds, both inclusive, as of ``now_us``."""
        now = time.time_ns() // 1000 if now_us is None else now_us
        low = self.earliest_us
        if self.max_age_s is not None:
            low = max(low, now - int(self.max_age_s * 1_000_000))
        return low, now + int(self.future_s * 1_000_000)


_INT64 = 1 << 63


def _fits_int(v: Any) -> bool:
    return type(v) is int and -_INT64 <= v < _INT64


def _fits_float(v: Any) -> bool:
    return type(v) is float or _fits_int(v)


FITS: dict[str, Callable[[Any], bool]] = {
    "i64": _fits_int,
    "ts": _fits_int,
    "f64": _fits_float,
    "bool": lambda v: type(v) is bool,
    "str": lambda v: type(v) is str,
}
"""Per column type (:data:`tickvault.core.records.ColumnType`, list columns excepted): can a
Python value become it (the frame builder's quick pass)?"""


HISTORY = TimeWindow()
"""The default window: anything from 1990 up to a day ahead (the writer's last check)."""

Bounds = tuple[int, int]


def check_value(name: str, value: Any, rule: Rule, bounds: Bounds | None = None) -> None:
    """Raise :class:`RecordError` when ``value`` of field ``name`` breaks ``rule``."""
    if value is None:
        if rule == "required":
            raise RecordError(f"missing {name}")
        return
    if rule in ("text", "name"):
        if not isinstance(value, str) or not value:
            raise RecordError(f"empty {name}")
        if len(value) > (NAME_MAX if rule == "name" else TEXT_MAX):
            raise RecordError(f"{name} too long")
        if rule == "name" and _NAME_RE.fullmatch(value) is None:
            raise RecordError(f"bad characters in {name}")
    elif rule in ("id", "timestamp"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecordError(f"non-integer {name}")
        if rule == "id":
            if value < 0:
                raise RecordError(f"negative {name}")
            if value >= ID_LIMIT:
                raise RecordError(f"{name} out of range")
        else:
            low, high = bounds if bounds is not None else HISTORY.bounds()
            if not low <= value <= high:
                raise RecordError(f"{name} outside the time window")
    elif rule in ("positive", "non_negative"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RecordError(f"non-numeric {name}")
        if isinstance(value, int) and not -ID_LIMIT <= value < ID_LIMIT:
            raise RecordError(f"{name} out of range")
        if not math.isfinite(value):
            raise RecordError(f"non-finite {name}")
        if rule == "positive" and value <= 0:
            raise RecordError(f"non-positive {name}")
        if value < 0:
            raise RecordError(f"negative {name}")


def _good(col: Any, rules: tuple[Rule, ...], bounds: Bounds) -> Any:
    """The column's "passes its rules" mask (null where the value is null), or None."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if "positive" in rules:
        return pc.and_(pc.greater(col, 0), pc.less(col, math.inf))
    if "non_negative" in rules:
        if pa.types.is_integer(col.type):
            return pc.greater_equal(col, 0)
        return pc.and_(pc.greater_equal(col, 0), pc.less(col, math.inf))
    if "id" in rules:
        return pc.greater_equal(col, 0)
    if "timestamp" in rules:
        low = pa.scalar(bounds[0], col.type)
        high = pa.scalar(bounds[1], col.type)
        return pc.and_(pc.greater_equal(col, low), pc.less_equal(col, high))
    if "name" in rules:
        return pc.and_(
            pc.less_equal(pc.utf8_length(col), NAME_MAX),
            pc.match_substring_regex(col, _NAME_PATTERN),
        )
    if "text" in rules:
        length = pc.utf8_length(col)
        return pc.and_(pc.greater(length, 0), pc.less_equal(length, TEXT_MAX))
    if "required" in rules:
        return pc.is_valid(col)
    return None


def rows_valid(rules: dict[str, tuple[Rule, ...]], table: pa.Table, bounds: Bounds) -> list[bool]:
    """Per row: does it pass every column rule (vectorised; see :func:`columns_valid`)."""
    import pyarrow.compute as pc

    good = None
    for name, field_rules in rules.items():
        col = table.column(name)
        ok = _good(col, field_rules, bounds)
        if ok is None:
            continue
        if "required" not in field_rules:
            ok = pc.or_kleene(ok, pc.is_null(col))
        good = ok if good is None else pc.and_kleene(good, ok)
    if good is None:
        return [True] * table.num_rows
    return pc.fill_null(good, False).to_pylist()  # type: ignore[no-any-return]


def columns_valid(rules: dict[str, tuple[Rule, ...]], table: pa.Table, bounds: Bounds) -> bool:
    """Vectorised rule check: True when every row passes every column rule.

    One "good" mask per column (a null compares to null and is filled as bad unless the
    column is optional), and-ed together; NaN fails ``> 0`` and infinity fails ``< inf``,
    so finiteness needs no call of its own. Values that do not fit an Arrow column at all
    (integers beyond 64 bits) never reach here: building the table fails first.
    """
    import pyarrow.compute as pc

    good = None
    for name, field_rules in rules.items():
        col = table.column(name)
        ok = _good(col, field_rules, bounds)
        if ok is None:
            continue
        if "required" not in field_rules:
            ok = pc.or_kleene(ok, pc.is_null(col))
        good = ok if good is None else pc.and_kleene(good, ok)
    return good is None or bool(pc.all(pc.fill_null(good, False)).as_py())


def values_valid(
    rule_set: tuple[Rule, ...], values: list[Any], integer: bool, bounds: Bounds
) -> bool | None:
    """Does every value of a column pass its rules, without Arrow (the producer's check)?

    ``values`` are the column's values after they packed into a typed column (see
    :func:`tickvault.core.codec.pack_column`): no nulls, and numbers that fit 64 bits;
    ``integer`` says the column packed as 64-bit integers. Returns what
    :func:`columns_valid` would say of that column. Loops run in C (``min``, ``max``)
    where the rule allows it; names and texts are checked once per distinct value.
    """
    if not values:
        return True
    if "positive" in rule_set or "non_negative" in rule_set:
        # A NaN or an infinity anywhere makes the sum non-finite (so does an overflow of
        # huge finite values: a false "no" only sends the rows to the per-row check);
        # with the sum finite, min() compares real numbers only.
        if not integer and not math.isfinite(sum(values)):
            return False
        low = min(values)
        return bool(low > 0 if "positive" in rule_set else low >= 0)
    if "id" in rule_set:
        return bool(min(values) >= 0)
    if "timestamp" in rule_set:
        return bool(bounds[0] <= min(values) and max(values) <= bounds[1])
    if "name" in rule_set or "text" in rule_set:
        limit = NAME_MAX if "name" in rule_set else TEXT_MAX
        for value in dict.fromkeys(values):
            if not isinstance(value, str) or not 0 < len(value) <= limit:
                return False
            if "name" in rule_set and _NAME_RE.fullmatch(value) is None:
                return False
    return True  # "required" alone: a packed column holds no null
