"""ILP over HTTP with the official ``questdb`` client: one request per batch, one transaction.

Protocol version 1 (text), ``auto_flush=off``, ``retry_timeout=0`` (the writer retries, with
its own backoff, after :class:`StoreUnavailable`). The client's errors are translated:
``"code":"invalid"`` or another 4xx (but 401/403/408/429) is :class:`BatchRejected`, anything
else :class:`StoreUnavailable`. Everything here runs on the store's single ILP thread.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from tickvault.core.errors import BackendNotAvailable, BatchRejected, StoreError, StoreUnavailable
from tickvault.core.records import KindSpec
from tickvault.stores.keys import event_time

_HTTP_STATUS = re.compile(r"http-status=(\d+)")
# The client's message carries the server's answer: ``{"code":"invalid",...}`` (9.x, the
# JSON body as sent) or ``code: invalid`` (older clients' rendering).
_ERROR_CODE = re.compile(r'"?code"?\s*:\s*"?([^,\]"}]+)')


def _client() -> Any:
    """The ``questdb`` client's names (``Sender``, timestamps, error class), any 2.x+ layout."""
    try:
        module = importlib.import_module("questdb")
    except ImportError:
        raise BackendNotAvailable(
            "the QuestDB store needs the questdb client: install tickvault[questdb]"
        ) from None
    if not hasattr(module, "Sender"):
        module = importlib.import_module("questdb.ingress")
    return module


class ILPWriter:
    """One ``Sender`` to one server, created on first use."""

    def __init__(
        self, host: str, port: int, *, secure: bool, auth: tuple[str, str] | None, timeout: float
    ) -> None:
        self.host, self.port = host, port
        self._secure = secure
        self._auth = auth
        self._timeout = timeout
        self._sender: Any = None

    def send(self, spec: KindSpec, batch: pa.Table) -> None:
        """Build one ILP request for ``batch`` and flush it as one transaction (thread)."""
        client = _client()
        ts = event_time(spec)
        symbols = [f.name for f in spec.schema if f.type == pa.string() and f.name in spec.key]
        fields = [f for f in spec.schema if f.name not in symbols and f.name != ts]
        convert = [(f.name, _converter(f, client)) for f in fields]
        symbol_values = [batch.column(n).to_pylist() for n in symbols]
        field_values = [_python_values(batch.column(n)) for n, _ in convert]
        at_values = pc.cast(batch.column(ts), pa.int64()).to_pylist()
        nanos = client.TimestampNanos
        try:
            sender = self._ensure(client)
            buf = sender.new_buffer()
            for i, at in enumerate(at_values):
                buf.row(
                    spec.table,
                    symbols={n: v[i] for n, v in zip(symbols, symbol_values, strict=True)},
                    columns={
                        n: conv(v[i]) for (n, conv), v in zip(convert, field_values, strict=True)
                    },
                    at=nanos(at * 1000),
                )
        except (ValueError, OverflowError, TypeError) as exc:
            raise BatchRejected(f"QuestDB client refused a value for {spec.table}: {exc}") from None
        try:
            sender.flush(buf, transactional=True)
        except Exception as exc:  # the client's own error class differs between versions
            raise self._translate(exc, spec.table) from None

    def _ensure(self, client: Any) -> Any:
        if self._sender is None:
            conf = (
                f"{'https' if self._secure else 'http'}::addr={self.host}:{self.port};"
                f"protocol_version=1;auto_flush=off;retry_timeout=0;"
                f"request_timeout={int(self._timeout * 1000)};"
            )
            if self._auth is not None:
                conf += f"username={self._auth[0]};password={self._auth[1]};"
            sender = client.Sender.from_conf(conf)
            sender.establish()
            self._sender = sender
        return self._sender

    def _translate(self, exc: Exception, table: str) -> StoreError:
        text = str(exc)
        match = _HTTP_STATUS.search(text)
        status = int(match.group(1)) if match else None
        code = _ERROR_CODE.search(text)
        refused = code is not None and code.group(1).strip() == "invalid"
        if status is not None and 400 <= status < 500 and status not in (401, 403, 408, 429):
            refused = True
        if refused:
            return BatchRejected(f"QuestDB refused the batch for {table}: {text}")
        return StoreUnavailable(f"QuestDB could not take the batch for {table}: {text}")

    def close(self) -> None:
        if self._sender is not None:
            try:
                self._sender.close()
            finally:
                self._sender = None


def _python_values(column: pa.ChunkedArray) -> list[Any]:
    """Column values as Python objects; timestamps as integer microseconds."""
    if pa.types.is_timestamp(column.type):
        return list(pc.cast(column, pa.int64()).to_pylist())
    return list(column.to_pylist())


def _converter(field: pa.Field, client: Any) -> Callable[[Any], Any]:
    if pa.types.is_timestamp(field.type):
        micros = client.TimestampMicros
        return lambda v: None if v is None else micros(v)
    if pa.types.is_list(field.type):
        return lambda v: None if v is None else orjson.dumps(v).decode()
    return lambda v: v
