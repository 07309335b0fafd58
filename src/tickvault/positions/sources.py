"""Where restore can find position state: the state store, a JSON file, a Redis hash.

A :class:`RestoreSource` answers one question: "what is the latest row of every trade you
know?" It returns :class:`Candidate` rows (not yet judged) or ``None`` when it holds no
data at all, and raises (ideally :class:`PositionSourceError`) when it cannot be read.
Restore judges the candidates with :func:`~tickvault.positions.model.assess_latest`, so a
source never decides what is valid.

The secondary sources are also sinks: ``write(positions)`` replaces the snapshot with the
given open positions, atomically, so a trading process can keep a fallback copy. Reading
uses the standard ``json`` module, which accepts the ``NaN``/``Infinity`` that other
Python writers emit, so such a row is quarantined instead of the whole snapshot being lost.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from tickvault.core.errors import PositionSourceError
from tickvault.positions.backend import Candidate, PositionBackend
from tickvault.positions.model import Position
from tickvault.positions.open import open_backend, state_name
from tickvault.positions.store import row_json

__all__ = [
    "Candidate",
    "JsonFileSource",
    "RedisHashSource",
    "RestoreSource",
    "StateStoreSource",
]


class RestoreSource(ABC):
    """One link of the restore chain."""

    name: str

    @abstractmethod
    def read(self) -> list[Candidate] | None:
        """The latest row per trade, or None when the source holds nothing (not even
        closed history) so restore should try the next source. Raises when unreadable."""


class StateStoreSource(RestoreSource):
    """A position-state backend: the latest row per trade (see
    :meth:`~tickvault.positions.backend.PositionBackend.read_latest`).

    Given a path or URL instead of an open backend, it is opened read-only per read (a
    SQLite file that does not exist, or a ClickHouse server that cannot be reached, is
    *unavailable*). The name defaults to the backend's (``state-store`` for SQLite,
    ``clickhouse:<db>.<table>`` for ClickHouse).
    """

    def __init__(self, store: PositionBackend | str | Path, name: str | None = None) -> None:
        self._store = store
        if name is None:
            name = store.source_name if isinstance(store, PositionBackend) else state_name(store)
        self.name = name

    def read(self) -> list[Candidate] | None:
        if isinstance(self._store, PositionBackend):
            return self._store.read_latest()
        with open_backend(self._store, read_only=True) as store:
            return store.read_latest()


def _ref(row: Any) -> str:
    return "sha1:" + hashlib.sha1(row_json({"row": row}).encode()).hexdigest()


def _candidate(item: Any, key: str | None = None) -> Candidate:
    if not isinstance(item, dict):
        row = {"trade_id": key, "value": item}
        return Candidate(_ref(row), row, f"snapshot entry is {type(item).__name__}, not an object")
    problem = None
    if key is not None and item.get("trade_id") != key:
        problem = f"trade_id {item.get('trade_id')!r} differs from its key {key!r}"
    return Candidate(_ref(item), item, problem)


def _latest_per_trade(candidates: list[Candidate]) -> list[Candidate]:
    """Keep the highest-seq candidate per trade id (later wins ties and unordered rows)."""
    best: dict[str, Candidate] = {}
    for c in candidates:
        tid = c.row.get("trade_id")
        key = tid if isinstance(tid, str) else repr(tid)
        old = best.get(key)
        if old is None or _seq_rank(c) >= _seq_rank(old):
            best[key] = c
    return list(best.values())


def _seq_rank(c: Candidate) -> tuple[int, int]:
    seq = c.row.get("seq")
    if isinstance(seq, int) and not isinstance(seq, bool):
        return (1, seq)
    return (0, 0)


def _snapshot_doc(positions: Iterable[Position]) -> list[dict[str, Any]]:
    return [p.as_row() for p in positions]


class JsonFileSource(RestoreSource):
    """A JSON snapshot file: a list of rows, ``{"positions": [rows]}``, or
    ``{trade_id: row}``. A missing file is *unavailable*; an empty list is a valid flat
    snapshot."""

    def __init__(self, path: str | Path, name: str | None = None) -> None:
        self.path = Path(path)
        self.name = name or f"json:{self.path}"

    def read(self) -> list[Candidate] | None:
        try:
            data = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            raise PositionSourceError(f"no snapshot file {self.path}") from None
        except ValueError as exc:
            raise PositionSourceError(f"snapshot file {self.path} is not JSON: {exc}") from None
        if isinstance(data, dict) and isinstance(data.get("positions"), list):
            data = data["positions"]
        if isinstance(data, list):
            candidates = [_candidate(item) for item in data]
        elif isinstance(data, dict):
            candidates = [_candidate(v, k) for k, v in data.items()]
        else:
            raise PositionSourceError(
                f"snapshot file {self.path} holds a {type(data).__name__};"
                " expected a list of rows or an object of rows by trade id"
            )
        return _latest_per_trade(candidates)

    def write(self, positions: Iterable[Position]) -> None:
        """Replace the file with these open positions (write, fsync, rename)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = orjson.dumps({"positions": _snapshot_doc(positions)}, option=orjson.OPT_INDENT_2)
        fd, tmp = tempfile.mkstemp(prefix=".positions-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(body)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


class RedisHashSource(RestoreSource):
    """A Redis hash ``key``: field = trade id, value = the row as JSON.

    Needs the ``redis`` package (``pip install tickvault[redis]``); imported on first use.
    A missing key is *empty* (Redis has no empty hashes); an unreachable server is
    *unavailable*.
    """

    def __init__(self, url: str, key: str = "tickvault:positions", *, timeout: float = 2.0) -> None:
        self.url = url
        self.key = key
        self.timeout = timeout
        self.name = f"redis:{key}"

    def _client(self) -> Any:
        try:
            import redis
        except ImportError:
            raise PositionSourceError(
                "the Redis snapshot source needs redis-py: install tickvault[redis]"
            ) from None
        return redis.Redis.from_url(
            self.url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout
        )

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Any]:
        """A client; connection failures surface as :class:`PositionSourceError`."""
        client = self._client()
        import redis

        try:
            yield client
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise PositionSourceError(f"redis {self.url} unreachable: {exc}") from None
        finally:
            client.close()

    def read(self) -> list[Candidate] | None:
        with self._connection() as client:
            raw: dict[bytes, bytes] = dict(client.hgetall(self.key))
        if not raw:
            return None
        candidates = []
        for field, value in raw.items():
            key = field.decode("utf-8", "replace")
            try:
                item = json.loads(value)
            except ValueError:
                row = {"trade_id": key, "value": value.decode("utf-8", "replace")}
                candidates.append(Candidate(_ref(row), row, "snapshot value is not JSON"))
                continue
            candidates.append(_candidate(item, key))
        return candidates

    def write(self, positions: Iterable[Position]) -> None:
        """Replace the hash with these open positions in one MULTI/EXEC."""
        mapping = {r["trade_id"]: orjson.dumps(r) for r in _snapshot_doc(positions)}
        with self._connection() as client:
            pipe = client.pipeline(transaction=True)
            pipe.delete(self.key)
            if mapping:
                pipe.hset(self.key, mapping=mapping)
            pipe.execute()
