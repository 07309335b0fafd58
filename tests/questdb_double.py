"""A wire-level stand-in for QuestDB's HTTP port, for the faults a real server cannot show.

The suite runs against a real QuestDB (``tests/questdb_server.py``). This double remains for
``tests/test_questdb_double.py`` only: the answers of an older server (7.x column names in
``tables()``/``wal_tables()``, no VARCHAR), which the pinned 9.x jar cannot give, and the
exact HTTP 500 body of incident 001 (``fail_writes``), which a real server gives only after
its ``txn_seq`` is deleted. See docs/stores.md.

What it speaks, shaped like QuestDB's documented answers:

* ``POST /write`` — ILP over HTTP, protocol version 1 (text). Every line is parsed and
  checked: table and column names, escaping, field types (``123i`` LONG, ``1.5`` FLOAT,
  ``123t`` TIMESTAMP µs, ``"..."`` STRING, ``t``/``f`` BOOLEAN), casts into the table's
  column types, and the designated timestamp (nanoseconds; before 1970 is refused). One
  request is one transaction: any bad line refuses the whole request with HTTP 400 and
  ``{"code":"invalid","message":"failed to parse line protocol:errors encountered on
  line(s):\\nerror in line N: ...","line":N,"errorId":"..."}``; nothing of it is stored.
  Tables and columns are not auto-created (as with ``line.auto.create.new.*=false``).
* WAL tables: an accepted request is a sequencer transaction; a separate applier thread
  applies transactions in order, deduplicating on the table's UPSERT KEYS (last row wins).
  Tests can make ``/write`` fail like a damaged WAL.
* ``GET /exec`` — ``{"query","columns","timestamp","dataset","count"}`` for queries,
  ``{"ddl":"OK"}`` for DDL, HTTP 400 ``{"query","error","position"}`` for errors.
  ``tables()``, ``wal_tables()`` and ``build()`` answer from the double's own state, with the
  column names of the emulated version (``table_name``/``bufferedTxnSize`` on 8.x+,
  ``name``/``writerLagTxnCount`` on 7.x). Table directories are named ``<table>~<id>`` and
  the id changes when a table is re-created.
* ``GET /ping`` (204) and ``GET /settings``.

Other SELECTs run on an in-memory DuckDB holding the applied rows: the double is faithful
about the protocol and response shapes, not about QuestDB's SQL dialect.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import socket
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import duckdb
import pyarrow as pa

_DUCK = {"SYMBOL": "VARCHAR", "VARCHAR": "VARCHAR", "STRING": "VARCHAR", "LONG": "BIGINT",
         "INT": "INTEGER", "DOUBLE": "DOUBLE", "BOOLEAN": "BOOLEAN",
         "TIMESTAMP": "TIMESTAMP"}  # fmt: skip
_ARROW = {"SYMBOL": pa.string(), "VARCHAR": pa.string(), "STRING": pa.string(),
          "LONG": pa.int64(), "INT": pa.int32(), "DOUBLE": pa.float64(), "BOOLEAN": pa.bool_(),
          "TIMESTAMP": pa.timestamp("us")}  # fmt: skip
# ILP protocol type -> column types it may be written into.
_CASTS = {
    "TAG": {"SYMBOL", "VARCHAR", "STRING"},
    "LONG": {"LONG", "INT", "DOUBLE", "TIMESTAMP"},
    "FLOAT": {"DOUBLE"},
    "STRING": {"VARCHAR", "STRING", "SYMBOL"},
    "BOOLEAN": {"BOOLEAN"},
    "TIMESTAMP": {"TIMESTAMP"},
}
_PROTOCOL_NAMES = {"TAG": "SYMBOL", "LONG": "LONG", "FLOAT": "FLOAT", "STRING": "STRING",
                   "BOOLEAN": "BOOLEAN", "TIMESTAMP": "TIMESTAMP"}  # fmt: skip
_CREATE = re.compile(
    r"^\s*CREATE\s+TABLE\s+(IF\s+NOT\s+EXISTS\s+)?(\w+)\s*\((.*)\)\s*TIMESTAMP\((\w+)\)"
    r"\s*PARTITION\s+BY\s+(\w+)\s*(WAL)?\s*(DEDUP\s+UPSERT\s+KEYS\(([^)]*)\))?\s*;?\s*$",
    re.IGNORECASE | re.DOTALL,
)
_DROP = re.compile(r"^\s*DROP\s+TABLE\s+(IF\s+EXISTS\s+)?(\w+)\s*;?\s*$", re.IGNORECASE)
_META = re.compile(r"^\s*(SELECT\s+\*\s+FROM\s+)?(tables|wal_tables)\(\)\s*;?\s*$", re.IGNORECASE)
_BUILD = re.compile(r"^\s*SELECT\s+build\(\)\s*;?\s*$", re.IGNORECASE)


class LineError(Exception):
    """A refused ILP line; the message is QuestDB's text after ``error in line N: ``."""


@dataclass
class Table:
    name: str
    columns: dict[str, str]  # name -> QuestDB type, in order
    timestamp: str
    partition_by: str
    wal: bool
    upsert_keys: list[str]
    table_id: int
    sequencer_txn: int = 0
    writer_txn: int = 0
    pending: list[list[dict[str, Any]]] = field(default_factory=list)
    suspended: bool = False
    error_tag: str = ""
    error_message: str = ""


@dataclass
class ParsedLine:
    table: str
    values: dict[str, tuple[str, Any]]  # column -> (protocol type, value)
    timestamp_ns: int | None


class QuestDBDouble:
    """Serves QuestDB's HTTP endpoints on 127.0.0.1 (``start()`` / ``stop()``)."""

    def __init__(self, version: str = "8.2.3") -> None:
        self.version = version
        self.modern = int(version.split(".")[0]) >= 8
        self.tables: dict[str, Table] = {}
        self.write_bodies: list[bytes] = []
        self.fail_writes: tuple[int, dict[str, Any]] | None = None
        self._next_id = 1
        self._errors = 0
        self._lock = threading.RLock()
        self._applied = threading.Condition(self._lock)
        self._stopping = False
        self._duck = duckdb.connect()
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"questdb://127.0.0.1:{self.port}"

    def start(self) -> QuestDBDouble:
        double = self

        class Handler(_Handler):
            owner = double

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        serve = self._server.serve_forever
        for target in (lambda: serve(poll_interval=0.02), self._apply_loop):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._applied.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._duck.close()

    # -- controls for tests -----------------------------------------------------------------

    def lines(self) -> list[str]:
        """Every ILP line received so far (accepted or not)."""
        return [ln for body in self.write_bodies for ln in body.decode().splitlines() if ln]

    # -- WAL apply --------------------------------------------------------------------------

    def _apply_loop(self) -> None:
        with self._lock:
            while not self._stopping:
                work = [t for t in self.tables.values() if t.pending and not t.suspended]
                if not work:
                    self._applied.wait(timeout=0.5)
                    continue
                for t in work:
                    self._apply(t, t.pending.pop(0))
                    t.writer_txn += 1

    def _apply(self, table: Table, rows: list[dict[str, Any]]) -> None:
        schema = pa.schema([(n, _ARROW[t]) for n, t in table.columns.items()])
        arrow = pa.Table.from_pylist(rows, schema=schema)
        self._duck.register("_batch", arrow)
        try:
            target = "INSERT OR REPLACE" if table.upsert_keys else "INSERT"
            self._duck.execute(f"{target} INTO {table.name} SELECT * FROM _batch")
        finally:
            self._duck.unregister("_batch")

    # -- /write -----------------------------------------------------------------------------

    def handle_write(self, body: bytes) -> tuple[int, dict[str, Any] | None]:
        with self._lock:
            self.write_bodies.append(body)
            if self.fail_writes is not None:
                return self.fail_writes
            batches: dict[str, list[dict[str, Any]]] = {}
            for number, raw in enumerate(body.decode().split("\n"), start=1):
                if not raw.strip():
                    continue
                try:
                    table, row = self._check_line(parse_line(raw))
                except LineError as exc:
                    return 400, self._write_error(number, str(exc))
                batches.setdefault(table.name, []).append(row)
            for name, rows in batches.items():
                t = self.tables[name]
                t.pending.append(rows)
                t.sequencer_txn += 1
            self._applied.notify_all()
        return 204, None

    def _write_error(self, line: int, message: str) -> dict[str, Any]:
        self._errors += 1
        return {
            "code": "invalid",
            "message": "failed to parse line protocol:errors encountered on line(s):\n"
            f"error in line {line}: {message}",
            "line": line,
            "errorId": f"5f3a9c0b7e21-{self._errors}",
        }

    def _check_line(self, line: ParsedLine) -> tuple[Table, dict[str, Any]]:
        table = self.tables.get(line.table)
        if table is None:
            raise LineError(
                f"table does not exist, creating new tables is disabled [table={line.table}]"
            )
        row: dict[str, Any] = dict.fromkeys(table.columns)
        for column, (ptype, value) in line.values.items():
            ctype = table.columns.get(column)
            if ctype is None or column == table.timestamp:
                raise LineError(
                    f"table: {table.name}; column does not exist, creating new columns is"
                    f" disabled [columnName={column}]"
                )
            if ctype not in _CASTS[ptype]:
                raise LineError(
                    f"table: {table.name}, column: {column}; cast error from protocol type:"
                    f" {_PROTOCOL_NAMES[ptype]} to column type: {ctype}"
                )
            if ctype == "TIMESTAMP":
                value = _from_micros(value)
            elif ctype == "DOUBLE" and isinstance(value, float) and math.isnan(value):
                value = None
            row[column] = value
        if line.timestamp_ns is None:
            raise LineError(
                f"table: {table.name}; the double refuses server-assigned timestamps"
                " (tickvault must send every designated timestamp)"
            )
        micros = line.timestamp_ns // 1000
        if micros < 0:
            raise LineError(
                f"table: {table.name}, timestamp: {micros}; designated timestamp before"
                " 1970-01-01 is not allowed"
            )
        row[table.timestamp] = _from_micros(micros)
        return table, row

    # -- /exec ------------------------------------------------------------------------------

    def handle_exec(self, sql: str, limit: str | None) -> tuple[int, dict[str, Any]]:
        with self._lock:
            try:
                doc = self._exec(sql)
            except QueryError as exc:
                return 400, {"query": sql, "error": str(exc), "position": exc.position}
        if limit and "dataset" in doc:
            lo, _, hi = limit.partition(",")
            rows = doc["dataset"][: int(lo)] if not hi else doc["dataset"][int(lo) : int(hi)]
            doc["dataset"], doc["count"] = rows, len(rows)
        return 200, doc

    def _exec(self, sql: str) -> dict[str, Any]:
        create = _CREATE.match(sql)
        if create:
            return self._create(sql, create)
        drop = _DROP.match(sql)
        if drop:
            name = drop.group(2)
            if name not in self.tables:
                if drop.group(1):
                    return {"ddl": "OK"}
                raise QueryError(f"table does not exist [table={name}]", sql.find(name))
            del self.tables[name]
            self._duck.execute(f"DROP TABLE {name}")
            return {"ddl": "OK"}
        meta = _META.match(sql)
        if meta:
            return self._meta(sql, meta.group(2).lower())
        if _BUILD.match(sql):
            text = f"Build Information: QuestDB {self.version}, JDK 17.0.9, Commit Hash 0"
            return _dataset(sql, [("build", "STRING")], [[text]])
        if not re.match(r"^\s*(SELECT|WITH)\b", sql, re.IGNORECASE):
            raise QueryError("the double only runs CREATE TABLE, DROP TABLE and SELECT", 0)
        return self._select(sql)

    def _create(self, sql: str, m: re.Match[str]) -> dict[str, Any]:
        name = m.group(2)
        if name in self.tables:
            if m.group(1):
                return {"ddl": "OK"}
            raise QueryError(f"table already exists [table={name}]", sql.find(name))
        columns: dict[str, str] = {}
        for part in m.group(3).split(","):
            col, ctype = part.split()
            if ctype.upper() not in _DUCK:
                raise QueryError(f"unsupported column type: {ctype}", sql.find(ctype))
            columns[col] = ctype.upper()
        ts = m.group(4)
        if columns.get(ts) != "TIMESTAMP":
            raise QueryError("TIMESTAMP column expected", sql.find(ts))
        keys = [k.strip() for k in (m.group(8) or "").split(",") if k.strip()]
        if keys and ts not in keys:
            raise QueryError(
                "deduplicate key column list must include dedicated timestamp column",
                sql.upper().find("UPSERT"),
            )
        if keys and not m.group(6):
            raise QueryError("deduplication is possible only on WAL tables", sql.find("DEDUP"))
        ddl = ", ".join(f'"{c}" {_DUCK[t]}' for c, t in columns.items())
        pk = f", PRIMARY KEY ({', '.join(keys)})" if keys else ""
        self._duck.execute(f"CREATE TABLE {name} ({ddl}{pk})")
        self.tables[name] = Table(
            name, columns, ts, m.group(5).upper(), bool(m.group(6)), keys, self._next_id
        )
        self._next_id += 1
        return {"ddl": "OK"}

    def _meta(self, sql: str, which: str) -> dict[str, Any]:
        if which == "tables":
            name_col = "table_name" if self.modern else "name"
            columns = [("id", "INT"), (name_col, "STRING"), ("designatedTimestamp", "STRING"),
                       ("partitionBy", "STRING"), ("walEnabled", "BOOLEAN"),
                       ("dedup", "BOOLEAN"), ("directoryName", "STRING")]  # fmt: skip
            rows = [
                [
                    t.table_id,
                    t.name,
                    t.timestamp,
                    t.partition_by,
                    t.wal,
                    bool(t.upsert_keys),
                    f"{t.name}~{t.table_id}",
                ]
                for t in self.tables.values()
            ]
            return _dataset(sql, columns, rows)
        lag_col = "bufferedTxnSize" if self.modern else "writerLagTxnCount"
        columns = [("name", "STRING"), ("suspended", "BOOLEAN"), ("writerTxn", "LONG"),
                   (lag_col, "LONG"), ("sequencerTxn", "LONG"), ("errorTag", "STRING"),
                   ("errorMessage", "STRING")]  # fmt: skip
        rows = [
            [
                t.name,
                t.suspended,
                t.writer_txn,
                t.sequencer_txn - t.writer_txn,
                t.sequencer_txn,
                t.error_tag,
                t.error_message,
            ]
            for t in self.tables.values()
            if t.wal
        ]
        return _dataset(sql, columns, rows)

    def _select(self, sql: str) -> dict[str, Any]:
        try:
            cur = self._duck.execute(sql.rstrip().rstrip(";"))
            rows = cur.fetchall()
            desc = cur.description or []
        except duckdb.Error as exc:
            text = str(exc)
            missing = re.search(r"Table with name (\w+) does not exist", text)
            if missing:
                name = missing.group(1)
                raise QueryError(f"table does not exist [table={name}]", sql.find(name)) from None
            raise QueryError(text.splitlines()[0], 0) from None
        declared: dict[str, str] = {}
        for t in self.tables.values():
            for c, ctype in t.columns.items():
                declared.setdefault(c, ctype)
        columns = []
        for name, dtype, *_ in desc:
            qtype = _questdb_type(str(dtype))
            if declared.get(name) and _DUCK[declared[name]] == str(dtype):
                qtype = declared[name]
            columns.append((name, qtype))
        return _dataset(sql, columns, [list(r) for r in rows])


class QueryError(Exception):
    def __init__(self, message: str, position: int) -> None:
        super().__init__(message)
        self.position = max(position, 0)


def _questdb_type(duck_type: str) -> str:
    return {"BIGINT": "LONG", "INTEGER": "INT", "DOUBLE": "DOUBLE", "BOOLEAN": "BOOLEAN",
            "TIMESTAMP": "TIMESTAMP", "VARCHAR": "STRING", "HUGEINT": "LONG256"}.get(
        duck_type, duck_type
    )  # fmt: skip


def _json_value(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _dataset(sql: str, columns: list[tuple[str, str]], rows: list[list[Any]]) -> dict[str, Any]:
    ts_index = next((i for i, (_, t) in enumerate(columns) if t == "TIMESTAMP"), -1)
    return {
        "query": sql,
        "columns": [{"name": n, "type": t} for n, t in columns],
        "timestamp": ts_index,
        "dataset": [[_json_value(v) for v in row] for row in rows],
        "count": len(rows),
    }


def _from_micros(micros: int) -> dt.datetime:
    return dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=micros)


# -- ILP text parsing ------------------------------------------------------------------------

_NAME_BAD = set(".?,'\"\\/:)(+*%~\r\n\0")


def _split_unescaped(text: str, sep: str, *, quotes: bool = False) -> list[str]:
    parts, cur, i, in_quote = [], [], 0, False
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            cur.append(text[i : i + 2])
            i += 2
            continue
        if quotes and c == '"':
            in_quote = not in_quote
        if c == sep and not in_quote:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    if in_quote:
        raise LineError("unterminated string")
    parts.append("".join(cur))
    return parts


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def _check_name(name: str, what: str, table: str | None) -> str:
    if not name or any(c in _NAME_BAD for c in name):
        where = f"table: {table}; " if table else ""
        raise LineError(f"{where}invalid {what} name: {name}")
    return name


def parse_line(raw: str) -> ParsedLine:
    """Parse one ILP line (protocol version 1); raise LineError with QuestDB-like text."""
    sections = _split_unescaped(raw, " ", quotes=True)
    if len(sections) not in (2, 3):
        raise LineError("could not parse line: expected 'table[,tags] fields [timestamp]'")
    head = _split_unescaped(sections[0], ",")
    table = _check_name(_unescape(head[0]), "table", None)
    values: dict[str, tuple[str, Any]] = {}
    for tag in head[1:]:
        key, eq, value = tag.partition("=")
        if not eq:
            raise LineError(f"table: {table}; invalid tag: {tag}")
        values[_check_name(_unescape(key), "column", table)] = ("TAG", _unescape(value))
    for item in _split_unescaped(sections[1], ",", quotes=True):
        key, eq, value = item.partition("=")
        if not eq:
            raise LineError(f"table: {table}; invalid field: {item}")
        name = _check_name(_unescape(key), "column", table)
        if name in values:
            raise LineError(f"table: {table}; duplicate column: {name}")
        values[name] = _field(value, table, name)
    stamp = None
    if len(sections) == 3:
        if not re.fullmatch(r"-?\d+n?", sections[2]):
            raise LineError(f"table: {table}; invalid timestamp: {sections[2]}")
        stamp = int(sections[2].rstrip("n"))
    return ParsedLine(table, values, stamp)


def _field(value: str, table: str, column: str) -> tuple[str, Any]:
    if value.startswith('"'):
        if len(value) < 2 or not value.endswith('"'):
            raise LineError(f"table: {table}, column: {column}; invalid string")
        return "STRING", re.sub(r"\\(.)", lambda m: m.group(1), value[1:-1])
    if re.fullmatch(r"-?\d+i", value):
        return "LONG", int(value[:-1])
    if re.fullmatch(r"-?\d+t", value):
        return "TIMESTAMP", int(value[:-1])
    if value in ("t", "T", "true", "True", "TRUE"):
        return "BOOLEAN", True
    if value in ("f", "F", "false", "False", "FALSE"):
        return "BOOLEAN", False
    try:
        return "FLOAT", float(value)
    except ValueError:
        raise LineError(f"table: {table}, column: {column}; invalid value: {value}") from None


class _Handler(BaseHTTPRequestHandler):
    owner: QuestDBDouble
    protocol_version = "HTTP/1.1"
    server_version = "questDB/1.0"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        # Headers and body are separate writes: without this, Nagle + delayed ACK add ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _send(self, status: int, doc: dict[str, Any] | None) -> None:
        body = b"" if doc is None else json.dumps(doc, separators=(",", ":")).encode()
        self.send_response(status)
        if doc is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        params = dict(urllib.parse.parse_qsl(url.query))
        if url.path == "/ping":
            self._send(204, None)
        elif url.path == "/settings":
            self._send(200, {"config": {"release.type": "OSS",
                                        "release.version": self.owner.version,
                                        "line.proto.support.versions": [1, 2],
                                        "cairo.max.file.name.length": 127}})  # fmt: skip
        elif url.path == "/exec":
            self._send(*self.owner.handle_exec(params.get("query", ""), params.get("limit")))
        else:
            self._send(404, {"error": "not found"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if urllib.parse.urlsplit(self.path).path in ("/write", "/api/v2/write"):
            self._send(*self.owner.handle_write(body))
        else:
            self._send(404, {"error": "not found"})
