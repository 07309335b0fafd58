"""Import historical snapshot rows from another system, exactly as they are.

Input: JSON lines, one object per line with the ``position_state`` columns (see
:mod:`tickvault.positions.model`); ``ts`` as ISO-8601 text or an epoch number (unit by
magnitude). Extra keys are kept in the row's ``raw`` text.

Contract: every object line becomes one ``position_state`` row (``origin = 'import'``),
*invalid ones included*, so legacy history can be examined; nothing is validated away.
The only normalisations, all lossless (the original line is stored in ``raw``):

- a parseable ``ts`` is stored as epoch microseconds (an unparseable one as its text);
- values SQLite cannot hold as they are become their JSON text: ``NaN``, ``Infinity``,
  integers beyond 64 bits, booleans, objects and arrays.

Each row is judged as restore would judge it if it were its trade's latest, and the
report lists what was flagged. Re-importing a file skips lines already imported (same
text), so an import interrupted part-way is completed by running it again. Lines that are
not JSON objects cannot be rows and are reported as unparseable.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

from tickvault.core.errors import PositionInputError
from tickvault.positions.model import Malformed, assess_latest, to_epoch_us
from tickvault.positions.store import STATE_COLUMNS, PositionStore

_INT64 = (-(2**63), 2**63 - 1)
_BATCH = 5_000


class ImportFlag(msgspec.Struct, frozen=True, kw_only=True):
    line: int
    trade_id: Any
    reason: str


class ImportReport(msgspec.Struct, kw_only=True):
    """What an import stored and what it flagged (flagged rows are stored too)."""

    file: str
    lines: int = 0
    imported: int = 0
    duplicates: int = 0
    flagged: list[ImportFlag] = msgspec.field(default_factory=list)
    unparseable: list[ImportFlag] = msgspec.field(default_factory=list)
    extra_columns: list[str] = msgspec.field(default_factory=list)


def storable(value: Any) -> Any:
    """``value`` as SQLite keeps it unchanged, or its JSON text when it would not."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return value if _INT64[0] <= value <= _INT64[1] else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else json.dumps(value)
    return json.dumps(value, sort_keys=True)


def _problem(values: dict[str, Any]) -> str | None:
    if values.get("status") == "CLOSED":
        for name in ("trade_id", "ts", "seq"):
            value = values.get(name)
            if value is None or value == "":
                return f"missing {name}"
            if name != "trade_id" and (isinstance(value, bool) or not isinstance(value, int)):
                return f"non-integer {name} {value!r}"
        return None
    verdict = assess_latest(values)
    return verdict.reason if isinstance(verdict, Malformed) else None


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as fh:
        for number, line in enumerate(fh, start=1):
            stripped = line.strip()
            if stripped:
                yield number, stripped


def import_jsonl(store: PositionStore, path: str | Path) -> ImportReport:
    """Append every object line of ``path`` to ``store`` as it is; see the module docstring.

    Raises :class:`PositionInputError` when the file cannot be read.
    """
    path = Path(path)
    if not path.is_file():
        raise PositionInputError(f"no such file: {path}")
    report = ImportReport(file=str(path))
    extras: set[str] = set()
    batch: list[tuple[dict[str, Any], str, str]] = []
    for number, line in _lines(path):
        report.lines += 1
        try:
            obj = json.loads(line)
        except ValueError as exc:
            report.unparseable.append(ImportFlag(line=number, trade_id=None, reason=str(exc)))
            continue
        if not isinstance(obj, dict):
            reason = f"a JSON {type(obj).__name__}, not an object"
            report.unparseable.append(ImportFlag(line=number, trade_id=None, reason=reason))
            continue
        extras.update(k for k in obj if k not in STATE_COLUMNS)
        values = {c: storable(obj.get(c)) for c in STATE_COLUMNS}
        if obj.get("ts") is not None:
            with contextlib.suppress(ValueError):
                values["ts"] = to_epoch_us(obj["ts"])
        problem = _problem(values)
        if problem is not None:
            report.flagged.append(
                ImportFlag(line=number, trade_id=values.get("trade_id"), reason=problem)
            )
        batch.append((values, hashlib.sha1(line).hexdigest(), line.decode("utf-8", "replace")))
        if len(batch) >= _BATCH:
            report.imported += store.insert_raw(batch, origin="import")
            batch.clear()
    if batch:
        report.imported += store.insert_raw(batch, origin="import")
    report.duplicates = report.lines - len(report.unparseable) - report.imported
    report.extra_columns = sorted(extras)
    return report
