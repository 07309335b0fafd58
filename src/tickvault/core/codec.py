"""Frames: a batch of records of one kind, the unit that travels on every bus.

Wire format (msgpack, via msgspec)::

    {"v": 1, "kind": "trade", "cols": {"exchange": <column>, "symbol": <column>, ...}}

Columnar on purpose: a bus entry carries thousands of records, and the writer turns each
column into an Arrow array without touching the values one by one. A ``<column>`` is either
a plain msgpack list (any producer can write that) or, as :class:`FrameBuilder` writes
them, a packed form: ``{"t": "f8"|"i8", "data": <little-endian bytes>}`` for numbers and
timestamps, ``{"t": "b1", "data": <one byte per value>}`` for booleans, ``{"t": "const",
"value": .., "n": ..}`` and ``{"t": "dict", "values": [..], "index": <int32 bytes>}`` for
strings. Packed columns become Arrow arrays zero-copy; a column with nulls or odd values
stays a plain list. Timestamps are integer microseconds.

Contract of :func:`split_valid`: every row of a decodable frame ends up either in the
returned valid table or in the returned rejects with a reason; nothing is dropped, and one
bad value never takes a neighbour with it (a value that fits no Arrow column is found row
by row). A frame that cannot be decoded at all raises :class:`DecodeError` and the caller
dead-letters the whole entry.

Producers check too: :meth:`FrameBuilder.take_checked` runs the same rules (vectorised when
every row passes) before a frame is encoded, so a record that could never be stored, or
could not even be encoded (an integer beyond 64 bits), is refused on its own with its rule
instead of spoiling the frame it would have travelled in.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from tickvault.core.errors import DecodeError, RecordError
from tickvault.core.records import KINDS, ColumnType, KindSpec, Record, kind_of, spec_for, validate
from tickvault.core.rejects import Reject, make_reject
from tickvault.core.rules import (
    FITS,
    HISTORY,
    Bounds,
    check_value,
    columns_valid,
    rows_valid,
    values_valid,
)

if TYPE_CHECKING:
    import pyarrow as pa

FRAME_VERSION = 1


class Const(msgspec.Struct, frozen=True, tag_field="t", tag="const"):
    value: str
    n: int


class Dict(msgspec.Struct, frozen=True, tag_field="t", tag="dict"):
    values: list[str]
    index: bytes


class F64(msgspec.Struct, frozen=True, tag_field="t", tag="f8"):
    data: bytes


class I64(msgspec.Struct, frozen=True, tag_field="t", tag="i8"):
    data: bytes


class B1(msgspec.Struct, frozen=True, tag_field="t", tag="b1"):
    data: bytes


Column = list[Any] | Const | Dict | F64 | I64 | B1
_LITTLE = sys.byteorder == "little"


def _le(values: array[Any]) -> bytes:
    if not _LITTLE:
        values.byteswap()
    return values.tobytes()


def _from_le(code: str, data: bytes) -> list[Any]:
    values = array(code)
    values.frombytes(data)
    if not _LITTLE:
        values.byteswap()
    return values.tolist()


def column_length(col: Column) -> int:
    if isinstance(col, list):
        return len(col)
    if isinstance(col, Const):
        return col.n
    if isinstance(col, Dict):
        return len(col.index) // 4
    if isinstance(col, B1):
        return len(col.data)
    return len(col.data) // 8


def column_values(col: Column) -> list[Any]:
    """The column as a plain list of Python values (the slow path, for rejected rows)."""
    if isinstance(col, list):
        return col
    if isinstance(col, Const):
        return [col.value] * col.n
    if isinstance(col, Dict):
        return [col.values[i] for i in _from_le("i", col.index)]
    if isinstance(col, F64):
        return _from_le("d", col.data)
    if isinstance(col, I64):
        return _from_le("q", col.data)
    return [bool(b) for b in col.data]


def pack_column(values: list[Any], column_type: ColumnType) -> Column:
    """Pack a column for the wire when every value fits the packed form; else keep the list."""
    n = len(values)
    try:
        if column_type == "f64":
            return F64(_le(array("d", values)))
        if column_type == "i64" or column_type == "ts":
            return I64(_le(array("q", values)))
        if column_type == "bool":
            if set(values) <= {True, False}:
                return B1(bytes(values))
            return values
    except (TypeError, OverflowError):
        return values
    if column_type == "str" and n:
        first = values[0]
        if isinstance(first, str) and values.count(first) == n:
            return Const(first, n)
        uniques = list(dict.fromkeys(values))
        if all(isinstance(u, str) for u in uniques):
            position = {u: i for i, u in enumerate(uniques)}
            return Dict(uniques, _le(array("i", [position[v] for v in values])))
    return values


class Frame(msgspec.Struct, frozen=True):
    """A decoded frame: the record kind and one column per field."""

    kind: str
    cols: dict[str, Column]
    v: int = FRAME_VERSION

    def __len__(self) -> int:
        for col in self.cols.values():
            return column_length(col)
        return 0


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Frame)


def encode_frame(kind: str, cols: dict[str, Column]) -> bytes:
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
    if missing and frame.cols and all(c in spec.added_columns for c in missing):
        n = column_length(next(iter(frame.cols.values())))
        filled = {c: [spec.added_columns[c]] * n for c in missing}
        frame = Frame(frame.kind, {**frame.cols, **filled}, frame.v)
        missing = []
    if missing:
        raise DecodeError(f"frame lacks column(s) {', '.join(missing)}")
    lengths = {column_length(frame.cols[c]) for c in spec.columns}
    if len(lengths) > 1:
        raise DecodeError("frame columns differ in length")
    return frame


_ENCODE_ERRORS = (TypeError, ValueError, OverflowError, UnicodeError)


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

    def _columns(self, rows: list[tuple[Any, ...]]) -> dict[str, Column]:
        if not rows:
            return {name: [] for name in self.spec.columns}
        transposed = zip(*rows, strict=True)
        return {
            f.name: pack_column(list(values), f.type)
            for f, values in zip(self.spec.fields, transposed, strict=True)
        }

    def _suspects(self, rows: list[tuple[Any, ...]], bounds: Bounds) -> list[bool] | None:
        """Per row: may it break a rule? Found with a quick type pass (values Arrow cannot
        hold) and the vectorised rules on the others, so that a frame with a few bad rows
        does not send every row through the per-row checks. None: check every row."""
        spec = self.spec
        if spec.list_rules or spec.kind == "bar":
            return None
        checks = [FITS[f.type] for f in spec.fields]
        nullable = [f.nullable for f in spec.fields]
        width = len(checks)
        fits = [
            len(r) == width
            and all(
                (v is None and n) or check(v)
                for check, n, v in zip(checks, nullable, r, strict=True)
            )
            for r in rows
        ]
        plain = [r for r, ok in zip(rows, fits, strict=True) if ok]
        table = fast_table(Frame(self.kind, self._columns(plain))) if plain else None
        if plain and table is None:
            return None
        passed = iter(rows_valid(spec.rules, table, bounds) if table is not None else [])
        return [not ok or not next(passed) for ok in fits]

    def take(self) -> bytes:
        """The buffered rows as one frame, unchecked (the caller validated them)."""
        rows, self.rows = self.rows, []
        return encode_frame(self.kind, self._columns(rows))

    def take_checked(self, bounds: Bounds | None = None) -> tuple[bytes | None, list[Reject]]:
        """The buffered rows that pass the kind's rules as one frame (None when no row
        does), and the others as rejects with their reasons; resets the builder.

        Every row passing costs one vectorised check over the packed columns; otherwise
        each row is checked on its own, so only the bad ones are refused.
        """
        rows, self.rows = self.rows, []
        if not rows:
            return None, []
        spec = self.spec
        bounds = bounds or HISTORY.bounds()
        try:
            lists = [list(values) for values in zip(*rows, strict=True)]
        except (ValueError, TypeError):  # a row of the wrong width
            lists = None
        if lists is not None:
            cols = {
                f.name: pack_column(values, f.type)
                for f, values in zip(spec.fields, lists, strict=True)
            }
            ok = _packed_valid(spec, cols, lists, bounds)
            if ok is None:  # a column stayed a plain list: ask Arrow
                table = fast_table(Frame(self.kind, cols))
                ok = table is not None and _all_valid(spec, table, bounds)
            if ok:
                try:
                    return encode_frame(self.kind, cols), []
                except _ENCODE_ERRORS:
                    pass
        good: list[tuple[Any, ...]] = []
        rejects: list[Reject] = []
        names = spec.columns
        suspects = self._suspects(rows, bounds)
        for i, values in enumerate(rows):
            if suspects is not None and not suspects[i]:
                good.append(values)
                continue
            if len(values) != len(names):
                rejects.append(
                    make_reject(spec, {"values": list(values)}, "wrong number of fields")
                )
                continue
            row = dict(zip(names, values, strict=True))
            reason = _row_reason(spec, row, bounds)
            if reason is None:
                good.append(values)
            else:
                rejects.append(make_reject(spec, row, reason))
        if not good:
            return None, rejects
        try:
            return encode_frame(self.kind, self._columns(good)), rejects
        except _ENCODE_ERRORS:  # a value no rule foresaw: find it, refuse its row only
            pass
        encodable = []
        for values in good:
            try:
                encode_frame(self.kind, self._columns([values]))
            except _ENCODE_ERRORS:
                row = dict(zip(names, values, strict=True))
                rejects.append(make_reject(spec, row, "value cannot be encoded"))
                continue
            encodable.append(values)
        frame = encode_frame(self.kind, self._columns(encodable)) if encodable else None
        return frame, rejects


def _to_arrow(col: Column, arrow_type: pa.DataType, n: int) -> pa.Array:
    import pyarrow as pa

    if isinstance(col, list):
        return pa.array(col, type=arrow_type)
    if isinstance(col, Const):
        return pa.repeat(pa.scalar(col.value, type=arrow_type), n)
    if isinstance(col, Dict):
        index = pa.Array.from_buffers(pa.int32(), n, [None, pa.py_buffer(col.index)])
        return pa.DictionaryArray.from_arrays(index, pa.array(col.values, pa.string())).cast(
            arrow_type
        )
    if isinstance(col, B1):
        raw = pa.Array.from_buffers(pa.uint8(), n, [None, pa.py_buffer(col.data)])
        return raw.cast(arrow_type)
    if len(col.data) != 8 * n:
        raise ValueError("packed column has the wrong size")
    return pa.Array.from_buffers(arrow_type, n, [None, pa.py_buffer(col.data)])


def _row_reason(spec: KindSpec, row: dict[str, Any], bounds: Bounds | None = None) -> str | None:
    bounds = bounds or HISTORY.bounds()
    for name, rules in spec.rules.items():
        for rule in rules:
            try:
                check_value(name, row.get(name), rule, bounds)
            except RecordError as err:
                return err.reason
    try:
        record = msgspec.convert(row, spec.record_type)
    except msgspec.ValidationError as exc:
        return f"bad value: {exc}"
    try:
        validate(record, bounds)  # type: ignore[arg-type]
    except RecordError as exc:
        return exc.reason
    except Exception as exc:  # a value no check foresaw refuses its own row only
        return f"bad value: {type(exc).__name__}"
    return None


def _packed_valid(
    spec: KindSpec, cols: dict[str, Column], lists: list[list[Any]], bounds: Bounds
) -> bool | None:
    """:func:`_all_valid` on freshly packed columns, without building Arrow arrays (the
    producer's common case: no Arrow conversion, no pyarrow.compute). A nullable column
    that stayed a plain list because of its nulls is checked on the values it has. None
    when a column holds values of another type: then only Arrow can tell."""
    if spec.list_rules or spec.kind == "bar":
        return False
    for f, values in zip(spec.fields, lists, strict=True):
        col = cols[f.name]
        if isinstance(col, list):  # nulls or values of another type: check what is there
            if not f.nullable:
                return None
            fits = FITS[f.type]
            values = [v for v in values if v is not None]
            if not all(fits(v) for v in values):
                return None
        rule_set = spec.rules.get(f.name)
        integer = f.type in ("i64", "ts")
        if rule_set and not values_valid(rule_set, values, integer, bounds):
            return False
    return True


def _all_valid(spec: KindSpec, table: pa.Table, bounds: Bounds | None = None) -> bool:
    """Vectorised rule check (:func:`tickvault.core.rules.columns_valid`): True when every row
    passes, False also when unsure. Kinds with list columns or cross-column rules always
    take the per-row path."""
    if spec.list_rules or spec.kind == "bar":
        return False
    return columns_valid(spec.rules, table, bounds or HISTORY.bounds())


def fast_table(frame: Frame) -> pa.Table | None:
    """The frame as an Arrow table, unchecked; None when a column does not convert."""
    import pyarrow as pa

    spec = KINDS[frame.kind]
    n = len(frame)
    try:
        return pa.table(
            [_to_arrow(frame.cols[f.name], f.type, n) for f in spec.schema], schema=spec.schema
        )
    except (pa.ArrowException, TypeError, ValueError, OverflowError, IndexError):
        return None


def split_valid_many(
    frames: Sequence[Frame], bounds: Bounds | None = None
) -> list[tuple[pa.Table, list[Reject]]]:
    """:func:`split_valid` for many frames of one kind, checking the rules once for all.

    The common case (nothing wrong anywhere) costs one vectorised check per writer batch
    instead of one per frame; any doubt sends every frame through :func:`split_valid`.
    """
    if not frames:
        return []
    import pyarrow as pa

    bounds = bounds or HISTORY.bounds()
    tables = [fast_table(f) for f in frames]
    ready = [t for t in tables if t is not None]
    if len(ready) == len(frames) and _all_valid(
        KINDS[frames[0].kind], pa.concat_tables(ready) if len(ready) > 1 else ready[0], bounds
    ):
        return [(t, []) for t in ready]
    return [split_valid(f, bounds) for f in frames]


def _table_from_rows(spec: KindSpec, rows: list[dict[str, Any]], rejects: list[Reject]) -> pa.Table:
    """The rows as a table; a row Arrow cannot take (no rule foresaw it) is moved to
    ``rejects`` on its own instead of failing the whole frame."""
    import pyarrow as pa

    arrow_errors = (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError)
    if not rows:
        return spec.schema.empty_table()
    try:
        return pa.Table.from_pylist(rows, schema=spec.schema)
    except arrow_errors:
        pass
    fitting: list[dict[str, Any]] = []
    for row in rows:
        try:
            pa.Table.from_pylist([row], schema=spec.schema)
        except arrow_errors:
            rejects.append(make_reject(spec, row, f"value does not fit the {spec.kind} schema"))
            continue
        fitting.append(row)
    return (
        pa.Table.from_pylist(fitting, schema=spec.schema) if fitting else spec.schema.empty_table()
    )


def split_valid(frame: Frame, bounds: Bounds | None = None) -> tuple[pa.Table, list[Reject]]:
    """Turn a decoded frame into an Arrow table of valid rows plus the rejected rows.

    Fast path: one Arrow array per column and a vectorised rule check. Slow path (a column
    of the wrong type, list-valued kinds, or any rule broken): per-row checks, so one bad
    value never takes its neighbours down with it.
    """
    spec = KINDS[frame.kind]
    n = len(frame)
    bounds = bounds or HISTORY.bounds()
    table = fast_table(frame)
    if table is not None and _all_valid(spec, table, bounds):
        return table, []
    good: list[dict[str, Any]] = []
    rejects: list[Reject] = []
    try:
        columns = {c: column_values(frame.cols[c]) for c in spec.columns}
    except (ValueError, IndexError) as exc:
        raise DecodeError(f"corrupt packed column: {exc}") from None
    for i in range(n):
        row = {c: columns[c][i] for c in spec.columns}
        reason = _row_reason(spec, row, bounds)
        if reason is None:
            good.append(row)
        else:
            rejects.append(make_reject(spec, row, reason))
    return _table_from_rows(spec, good, rejects), rejects
