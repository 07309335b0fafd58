"""Rejected records: the dead-letter form of a record a rule refused.

A reject keeps the record as JSON whatever it holds (integers beyond 64 bits become exact
strings, very long strings are cut and keep their length), so writing the dead letter can
never fail on the value that was refused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import orjson

from tickvault.core.records import KindSpec

CONFLICT_REASON = "conflicting duplicate"
"""Dead-letter reason of a conflicting duplicate (see :mod:`tickvault.core.conflicts`); kept here,
away from Arrow, so ``tickvault status`` counts them without importing it."""


@dataclass(frozen=True)
class Reject:
    """A record the writer refused, with the reason and the record as JSON."""

    kind: str
    reason: str
    payload: bytes
    key: str


MAX_LETTER_VALUE = 1024
"""Characters of one string value kept in a dead letter's payload (the rest is cut)."""
_KEY_PART = 64


def _short(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_LETTER_VALUE:
        return f"{value[:MAX_LETTER_VALUE]}...[{len(value):,} characters]"
    if isinstance(value, int) and not -(1 << 63) <= value < 1 << 64:
        return str(value)  # exact, where JSON readers would round it to a float
    return value


def letter_json(row: dict[str, Any]) -> bytes:
    """``row`` as JSON for a dead letter, whatever it holds: integers beyond 64 bits and
    odd objects become strings, very long strings are cut (their length is kept)."""
    row = {k: _short(v) for k, v in row.items()}
    try:
        return orjson.dumps(row, default=str, option=orjson.OPT_SERIALIZE_NUMPY)
    except (orjson.JSONEncodeError, TypeError):
        return json.dumps(row, default=str).encode()


def make_reject(spec: KindSpec, row: dict[str, Any], reason: str) -> Reject:
    """A reject keyed by kind, natural key and reason, so a redelivery or a rerun records
    it once. Key values are cut to 64 characters; when one is cut, a digest of the whole
    key is added, so two records whose keys differ only further on never collapse."""
    payload = letter_json(row)
    values = [str(row.get(k)) for k in spec.key]
    key_part = "|".join(v[:_KEY_PART] for v in values)
    if any(len(v) > _KEY_PART for v in values):
        key_part += "#" + hashlib.sha256("|".join(values).encode(errors="replace")).hexdigest()[:16]
    return Reject(spec.kind, reason, payload, f"{spec.kind}:{key_part}:{reason}")
