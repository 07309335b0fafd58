"""Frames: a batch of records of one kind, the unit that travels on every bus.

Wire format (msgpack, via msgspec)::

    {"v": 1, "kind": "trade", "cols": {"exchange": [...], "symbol": [...], ...}}

Columnar on purpose: the writer turns each column list into an Arrow array in one C call, so
the per-record cost on the consumer side is a few nanoseconds, and a bus entry carries
hundreds or thousands of records instead of one. Timestamps are integer microseconds.

Contract of :func:`frame_to_table` / :func:`split_valid`: every row of a decodable frame ends
up either in the returned valid table or in the returned rejects with a reason; nothing is
dropped. A frame that cannot be decoded at all raises :class:`DecodeError` and the caller
dead-letters the whole entry.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from tickvault.errors import DecodeError, RecordError
from tickvault.records import KINDS, KindSpec, Record, _check_value, kind_of, spec_for, validate

FRAME_VERSION = 1


class Frame(msgspec.Struct, frozen=True):
    """A decoded frame: the record kind and one list per column."""

    kind: str
    cols: dict[str, list[Any]]
    v: int = FRAME_VERSION

    def __len__(self) -> int:
        for values in self.cols.values():
            return len(values)
        return 0


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Frame)


def encode_frame(kind: str, cols: dict[str, list[Any]]) -> bytes:
    return _encoder.encode(Frame(kind, cols))


def encode_records(records: Sequence[Record]) -> list[bytes]:
    """Encode records of any kinds into one frame per kind (convenience for APIs and tests)."""
    builders: dict[str, FrameBuilder] = {}
    for record in records:
        kind = kind_of(record)
        builders.setdefault(kind, FrameBuilder(kind)).add(record)
    return [b.take() for b in builders.values()]


def decode_frame(payload: bytes) -> Frame:
    """Decode and sanity-check a frame; raise DecodeError with a readable reason."""
    try:
        frame = _decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise DecodeError(f"undecodable frame: {exc}") from None
    if frame.v != FRAME_VERSION:
        raise DecodeError(f"unsupported frame version {frame.v}")
    try:
        spec = spec_for(frame.kind)
    except RecordError as exc:
        raise DecodeError(exc.reason) from None
    missing = [c for c in spec.columns if c not in frame.cols]
    if missing:
        raise DecodeError(f"frame lacks column(s) {', '.join(missing)}")
    lengths = {len(frame.cols[c]) for c in spec.columns}
    if len(lengths) > 1:
        raise DecodeError("frame columns differ in length")
    return frame


class FrameBuilder:
    """Accumulates records of one kind as row tuples; ``take()`` transposes, encodes, resets.

    Rows are kept as tuples in column order and transposed once per frame with ``zip`` (in
    C), which makes adding a row one list append: the parsers' hot path.
    """

    __slots__ = ("kind", "rows", "spec")

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.spec: KindSpec = spec_for(kind)
        self.rows: list[tuple[Any, ...]] = []

    def add(self, record: Record) -> None:
        self.rows.append(msgspec.structs.astuple(record))

    def add_values(self, values: Iterable[Any]) -> None:
        """Append one row given in column order."""
        self.rows.append(tuple(values))

    def __len__(self) -> int:
        return len(self.rows)

    def take(self) -> bytes:
        columns = self.spec.columns
        if self.rows:
            transposed = zip(*self.rows, strict=True)
            cols = {name: list(values) for name, values in zip(columns, transposed, strict=True)}
        else:
            cols = {name: [] for name in columns}
        self.rows = []
        return encode_frame(self.kind, cols)


@dataclass(frozen=True)
class Reject:
    """A record the writer refused, with the reason and the record as JSON."""

    kind: str
    reason: str
    payload: bytes
    key: str


def _row(frame: Frame, spec: KindSpec, i: int) -> dict[str, Any]:
    return {c: frame.cols[c][i] for c in spec.columns}


def _reject(spec: KindSpec, row: dict[str, Any], reason: str) -> Reject:
    key_part = "|".join(str(row.get(k)) for k in spec.key)
    payload = orjson.dumps(row, default=str, option=orjson.OPT_SERIALIZE_NUMPY)
    return Reject(spec.kind, reason, payload, f"{spec.kind}:{key_part}:{reason}")


def _row_reason(spec: KindSpec, row: dict[str, Any]) -> str | None:
    for name, rules in spec.rules.items():
        for rule in rules:
            try:
                _check_value(name, row.get(name), rule)
            except RecordError as err:
                return err.reason
    try:
        record = msgspec.convert(row, spec.record_type)
    except msgspec.ValidationError as exc:
        return f"bad value: {exc}"
    try:
        validate(record)  # type: ignore[arg-type]
    except RecordError as exc:
        return exc.reason
    return None


def _bad_mask(spec: KindSpec, table: pa.Table) -> pa.ChunkedArray | None:
    """Vectorised detection of rows that break a rule (None when the kind needs row checks)."""
    if spec.list_rules or spec.kind == "bar":
        return None
    mask = None
    for name, rules in spec.rules.items():
        col = table.column(name)
        for rule in rules:
            if rule == "required":
                bad = pc.is_null(col)
            elif rule == "text":
                bad = pc.equal(pc.utf8_length(col), 0)
            else:
                finite = pc.is_finite(col)
                sign = pc.less_equal(col, 0) if rule == "positive" else pc.less(col, 0)
                bad = pc.or_(pc.invert(finite), sign)
            bad = pc.fill_null(bad, False)
            mask = bad if mask is None else pc.or_(mask, bad)
    return mask


def _table_from_rows(spec: KindSpec, rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=spec.schema) if rows else spec.schema.empty_table()


def split_valid(frame: Frame) -> tuple[pa.Table, list[Reject]]:
    """Turn a decoded frame into an Arrow table of valid rows plus the rejected rows.

    Fast path: one Arrow array per column and a vectorised rule check. Slow path (a column
    of the wrong type, list-valued kinds, or any rule broken): per-row checks, so one bad
    value never takes its neighbours down with it.
    """
    spec = KINDS[frame.kind]
    try:
        table = pa.table(
            [pa.array(frame.cols[f.name], type=f.type) for f in spec.schema], schema=spec.schema
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
        table = None
    if table is not None:
        mask = _bad_mask(spec, table)
        if mask is not None and not pc.any(mask).as_py():
            return table, []
    good: list[dict[str, Any]] = []
    rejects: list[Reject] = []
    for i in range(len(frame)):
        row = _row(frame, spec, i)
        reason = _row_reason(spec, row)
        if reason is None:
            good.append(row)
        else:
            rejects.append(_reject(spec, row, reason))
    try:
        return _table_from_rows(spec, good), rejects
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError) as exc:
        raise DecodeError(f"frame rows do not fit the {spec.kind} schema: {exc}") from None
