"""Binance's public historical dumps (data.binance.vision): trades and aggTrades CSVs.

Layouts (zipped or not, with or without a header line):

- trades: ``id,price,qty,quote_qty,time,is_buyer_maker[,is_best_match]`` (spot files have
  no header and seven columns; futures files a header and six);
- aggTrades: ``agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,
  is_buyer_maker[,is_best_match]``.

The layout comes from the header when there is one, else from the file name
(``BTCUSDT-trades-2024-01.zip``, ``BTCUSDT-aggTrades-2024-01-02.csv``), else from the
shape of the first row. The symbol comes from the file name unless the user names it; the
market (``exchange``) always comes from the user, because the files do not say it. Times
are ms in older files and µs in newer ones: each value's unit is taken from its magnitude
(16 digits = µs). Files carry no receive time: ``ts_recv`` = ``ts_event``.

Chunks of lines are converted by pyarrow's CSV reader (typed columns, vectorised checks);
only a chunk the reader rejects (a malformed row) is read again row by row with the
``csv`` module, so that each bad row is dead-lettered with its reason and its neighbours
are kept.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from tickvault.core.errors import ConfigError

if TYPE_CHECKING:
    import pyarrow as pa

TRADE_COLUMNS = ("id", "price", "qty", "quote_qty", "time", "is_buyer_maker", "is_best_match")
AGG_COLUMNS = (
    "agg_trade_id",
    "price",
    "quantity",
    "first_trade_id",
    "last_trade_id",
    "transact_time",
    "is_buyer_maker",
    "is_best_match",
)
_TYPES: dict[str, str] = {
    "id": "i64",
    "agg_trade_id": "i64",
    "first_trade_id": "i64",
    "last_trade_id": "i64",
    "price": "f64",
    "qty": "f64",
    "quantity": "f64",
    "quote_qty": "f64",
    "time": "i64",
    "transact_time": "i64",
    "is_buyer_maker": "bool",
    "is_best_match": "bool",
}
"""Column types of the venue's CSVs (Arrow is imported only once a CSV is read)."""
_NAME = re.compile(r"^(?P<symbol>[A-Z0-9_]+)-(?P<kind>trades|aggTrades)-")
_BOOLS = {"true": True, "false": False, "1": True, "0": False}
_US_FROM = 10**15  # a time at or above this is in µs (16 digits), below it in ms


def is_csv(path: Path) -> bool:
    """True for a zip archive or a text file whose first line is a CSV row, not JSON."""
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if head.startswith(b"PK\x03\x04"):
        return True
    if head.startswith(b"\x1f\x8b"):
        with gzip.open(path, "rb") as gz:
            try:
                head = gz.read(4096)
            except (OSError, EOFError):
                return False
    first = head.split(b"\n", 1)[0].strip()
    return bool(first) and b"{" not in first and first.count(b",") >= 5


def open_csv(path: Path) -> IO[bytes]:
    """The CSV bytes of ``path``: the first ``.csv`` member of a zip, else the file."""
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if magic != b"PK\x03\x04":
        return open(path, "rb")
    archive = zipfile.ZipFile(path)
    members = [n for n in archive.namelist() if n.lower().endswith(".csv")]
    if not members:
        archive.close()
        raise ConfigError(f"replay: {path} holds no .csv file")
    return archive.open(members[0])


@dataclass(frozen=True)
class CsvLayout:
    kind: str  # "trade" or "agg_trade"
    columns: tuple[str, ...]
    header: bool
    symbol: str


def detect_layout(path: Path, first_line: bytes, symbol: str | None) -> CsvLayout:
    """Work out what ``path`` holds from its first line and name; raise ConfigError."""
    cells = [c.strip() for c in first_line.decode("utf-8", "replace").strip().split(",")]
    named = _NAME.match(path.name)
    header = bool(cells) and not cells[0].lstrip("-").isdigit()
    if header:
        kind = "agg_trade" if cells[0] in ("agg_trade_id", "a") else "trade"
    elif named is not None:
        kind = "agg_trade" if named["kind"] == "aggTrades" else "trade"
    elif len(cells) == 8 or (len(cells) == 7 and cells[5].isdigit()):
        kind = "agg_trade"
    else:
        kind = "trade"
    names = AGG_COLUMNS if kind == "agg_trade" else TRADE_COLUMNS
    if not len(names) - 2 <= len(cells) <= len(names):
        raise ConfigError(f"replay: {path.name}: {len(cells)} columns is not a trades CSV")
    name = symbol or (named["symbol"] if named is not None else None)
    if not name:
        raise ConfigError(
            f"replay: {path.name} does not say its symbol (data.binance.vision names files"
            " SYMBOL-trades-...): pass --symbol"
        )
    return CsvLayout(kind, names[: len(cells)], header, name.upper())


def _reason(row: dict[str, Any], names: list[str]) -> str:
    missing = [n for n in names if row[n] is None]
    if missing:
        return f"missing {missing[0]}"
    price, qty = row[names[1]], row[names[2]]
    if not math.isfinite(price):
        return "non-finite price"
    if price <= 0:
        return "non-positive price"
    return "non-finite qty" if not math.isfinite(qty) else "negative qty"


def _to_us(values: pa.Array) -> pa.Array:
    import pyarrow.compute as pc

    return pc.if_else(pc.greater_equal(values, _US_FROM), values, pc.multiply(values, 1000))


class CsvChunks:
    """Turns chunks of CSV lines into rows of one kind (see the module docstring)."""

    def __init__(self, layout: CsvLayout, exchange: str) -> None:
        self.layout = layout
        self.exchange = exchange
        self._names = list(layout.columns)
        self._types = {n: _TYPES[n] for n in layout.columns}

    def _arrow_types(self) -> dict[str, pa.DataType]:
        import pyarrow as pa

        arrow = {"i64": pa.int64(), "f64": pa.float64(), "bool": pa.bool_()}
        return {n: arrow[t] for n, t in self._types.items()}

    def parse(
        self, lines: list[tuple[int, bytes]]
    ) -> tuple[list[tuple[Any, ...]], list[tuple[int, str, bytes]]]:
        """Rows of the ``(line number, line)`` pairs given, and ``(number, reason, line)``
        for each line that cannot become a row. Blank lines are not input."""
        import pyarrow as pa
        from pyarrow import csv as pacsv

        lines = [(n, line) for n, line in lines if line.strip()]
        if not lines:
            return [], []
        try:
            table = pacsv.read_csv(
                io.BytesIO(b"".join(line.rstrip(b"\r\n") + b"\n" for _, line in lines)),
                read_options=pacsv.ReadOptions(column_names=self._names),
                convert_options=pacsv.ConvertOptions(column_types=self._arrow_types()),
            )
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return self._parse_slowly(lines)
        if table.num_rows != len(lines):  # quoted newlines or the like: be exact instead
            return self._parse_slowly(lines)
        return self._rows(table, [n for n, _ in lines], [line for _, line in lines])

    def _rows(
        self, table: pa.Table, numbers: list[int], raw: list[bytes]
    ) -> tuple[list[tuple[Any, ...]], list[tuple[int, str, bytes]]]:
        import pyarrow.compute as pc

        c = table.columns
        price, qty = c[1], c[2]
        ok = pc.and_(
            pc.and_(pc.greater(price, 0.0), pc.less(price, math.inf)),
            pc.and_(pc.greater_equal(qty, 0.0), pc.less(qty, math.inf)),
        )
        for column in c:
            if column.null_count:
                ok = pc.and_(ok, pc.is_valid(column))
        ok = pc.fill_null(ok, False)
        rejects: list[tuple[int, str, bytes]] = []
        if not pc.all(ok).as_py():
            flags = ok.to_pylist()
            rows = table.to_pylist()
            rejects = [
                (numbers[i], _reason(rows[i], self._names), raw[i].strip())
                for i, good in enumerate(flags)
                if not good
            ]
            table = table.filter(ok)
            c = table.columns
        n = table.num_rows
        exchange = [self.exchange] * n
        symbol = [self.layout.symbol] * n
        if self.layout.kind == "trade":
            ts = _to_us(c[4]).to_pylist()
            columns = [c[0].to_pylist(), c[1].to_pylist(), c[2].to_pylist(), c[5].to_pylist()]
            rows = list(zip(exchange, symbol, *columns, ts, ts, strict=True))
        else:
            ts = _to_us(c[5]).to_pylist()
            columns = [c[i].to_pylist() for i in (0, 1, 2, 3, 4, 6)]
            rows = list(zip(exchange, symbol, *columns, ts, ts, strict=True))
        return rows, rejects

    def _parse_slowly(
        self, lines: list[tuple[int, bytes]]
    ) -> tuple[list[tuple[Any, ...]], list[tuple[int, str, bytes]]]:
        rows: list[tuple[Any, ...]] = []
        rejects: list[tuple[int, str, bytes]] = []
        for number, line in lines:
            try:
                rows.extend(self._row(line))
            except ValueError as exc:
                rejects.append((number, str(exc), line.strip()))
        return rows, rejects

    def _row(self, line: bytes) -> list[tuple[Any, ...]]:
        cells = next(csv.reader([line.decode("utf-8", "replace")]), [])
        if len(cells) != len(self._names):
            raise ValueError(f"expected {len(self._names)} columns, got {len(cells)}")
        values: list[Any] = []
        for name, cell in zip(self._names, cells, strict=True):
            kind = self._types[name]
            cell = cell.strip()
            try:
                if kind == "i64":
                    if len(cell) > 20:  # longer than any int64: not worth parsing
                        raise ValueError
                    values.append(int(cell))
                elif kind == "f64":
                    values.append(float(cell))
                else:
                    values.append(_BOOLS[cell.lower()])
            except (ValueError, KeyError):
                raise ValueError(f"bad {name}: {cell[:40]!r}") from None
            if kind == "i64" and not -(2**63) <= values[-1] < 2**63:
                raise ValueError(f"{name} out of range: {cell[:40]!r}")
        import pyarrow as pa

        types = self._arrow_types()
        pairs = zip(self._names, values, strict=True)
        table = pa.table({n: pa.array([v], type=types[n]) for n, v in pairs})
        rows, rejects = self._rows(table, [0], [line])
        if rejects:
            raise ValueError(rejects[0][1])
        return rows
