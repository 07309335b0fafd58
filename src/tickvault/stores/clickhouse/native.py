"""Arrow tables to ClickHouse's ``Native`` format, column by column, without a per-row loop.

``Native`` is ClickHouse's own columnar block format and the cheapest input format it has:
every server version from 18.x to today reads it over HTTP (``INSERT ... FORMAT Native``),
and because it is columnar it maps straight onto Arrow buffers. One block is::

    varint(columns) varint(rows) then per column: string(name) string(type) data

where ``string`` is a varint length plus bytes, and ``data`` is:

* fixed-width numbers (``Int64``, ``UInt32``, ``Float64``, ``UInt8``, ``DateTime64(6)``):
  the little-endian values back to back (a ``DateTime64(6)`` is Int64 microseconds);
* ``String``: per value a varint length plus the UTF-8 bytes;
* ``Nullable(T)``: one byte per row (1 = NULL), then the ``T`` column with NULLs as zero;
* ``Array(T)``: per row the cumulative end offset as UInt64, then the flattened ``T`` column.

Strings are built with Arrow compute: a lookup table maps each length to its varint bytes,
and ``binary_join_element_wise`` glues prefix and value, so the values buffer of the result
is exactly the Native encoding. Only strings longer than 65535 bytes take a Python path.
"""

from __future__ import annotations

import re
import sys

import pyarrow as pa
import pyarrow.compute as pc

from tickvault.core.errors import StoreError

_MAX_TABLE_LEN = 1 << 16
_NULLABLE = re.compile(r"^Nullable\((.+)\)$")
_ARRAY = re.compile(r"^Array\((.+)\)$")
_FIXED: dict[str, pa.DataType] = {
    "Int64": pa.int64(),
    "UInt64": pa.uint64(),
    "Int32": pa.int32(),
    "UInt32": pa.uint32(),
    "UInt8": pa.uint8(),
    "Float64": pa.float64(),
}

assert sys.byteorder == "little", "the Native encoder writes the host's byte order"


def varint(n: int) -> bytes:
    """Unsigned LEB128, as ClickHouse writes lengths and counts."""
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _native_string(value: str) -> bytes:
    raw = value.encode()
    return varint(len(raw)) + raw


_VARINTS = pa.array([varint(i) for i in range(_MAX_TABLE_LEN)], type=pa.binary())


def _fixed_bytes(arr: pa.Array, dtype: pa.DataType) -> bytes:
    """The values buffer of ``arr`` cast to ``dtype`` (NULLs written as zero)."""
    if arr.type != dtype:
        arr = pc.cast(arr, dtype)
    if arr.null_count:
        arr = pc.fill_null(arr, pa.scalar(0, dtype))
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    width = dtype.bit_width // 8
    buf = arr.buffers()[1]
    return bytes(buf.slice(arr.offset * width, len(arr) * width).to_pybytes())


def _string_bytes(arr: pa.Array) -> bytes:
    if arr.null_count:
        arr = pc.fill_null(arr, "")
    arr = arr.cast(pa.large_binary()) if arr.type != pa.large_binary() else arr
    lengths = pc.binary_length(arr)
    if len(arr) and pc.max(lengths).as_py() >= _MAX_TABLE_LEN:
        return b"".join(varint(len(v)) + v for v in arr.to_pylist())
    prefixes = pc.take(_VARINTS, lengths).cast(pa.large_binary())
    joined = pc.binary_join_element_wise(prefixes, arr, pa.scalar(b"", pa.large_binary()))
    joined = joined.combine_chunks() if isinstance(joined, pa.ChunkedArray) else joined
    offsets = joined.buffers()[1]
    first = int.from_bytes(offsets.slice(joined.offset * 8, 8).to_pybytes(), "little")
    last_at = (joined.offset + len(joined)) * 8
    last = int.from_bytes(offsets.slice(last_at, 8).to_pybytes(), "little")
    return bytes(joined.buffers()[2].slice(first, last - first).to_pybytes())


def encode_column(arr: pa.Array, ch_type: str) -> bytes:
    """The Native data of one column of ClickHouse type ``ch_type``."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    nullable = _NULLABLE.match(ch_type)
    if nullable:
        is_null = pc.cast(pc.is_null(arr), pa.uint8())
        return _fixed_bytes(is_null, pa.uint8()) + encode_column(arr, nullable.group(1))
    if ch_type == "String":
        return _string_bytes(arr)
    array = _ARRAY.match(ch_type)
    if array:
        if arr.null_count:
            raise StoreError("Array columns cannot hold NULL rows")
        offsets = pc.subtract(arr.offsets[1:], arr.offsets[0])
        return _fixed_bytes(offsets, pa.uint64()) + encode_column(arr.flatten(), array.group(1))
    if ch_type.startswith("DateTime64(6"):
        return _fixed_bytes(_as_micros(arr), pa.int64())
    if ch_type == "UInt8" and arr.type == pa.bool_():
        return _fixed_bytes(pc.cast(arr, pa.uint8()), pa.uint8())
    if ch_type == "Int64" and pa.types.is_timestamp(arr.type):
        return _fixed_bytes(_as_micros(arr), pa.int64())
    dtype = _FIXED.get(ch_type)
    if dtype is None:
        raise StoreError(f"tickvault cannot encode ClickHouse type {ch_type} for insertion")
    return _fixed_bytes(arr, dtype)


def _as_micros(arr: pa.Array) -> pa.Array:
    if pa.types.is_timestamp(arr.type):
        return arr.cast(pa.timestamp("us")).cast(pa.int64())
    return arr


def encode_block(table: pa.Table, types: dict[str, str]) -> bytes:
    """One Native block holding every column of ``table`` (typed by ``types``)."""
    parts = [varint(table.num_columns), varint(table.num_rows)]
    for name in table.column_names:
        ch_type = types[name]
        parts.append(_native_string(name))
        parts.append(_native_string(ch_type))
        parts.append(encode_column(table.column(name).combine_chunks(), ch_type))
    return b"".join(parts)
