"""``replay``: recorded Binance websocket messages and Binance's historical CSV dumps.

Files may be plain or gzip-compressed (``.gz``); lines may be bare payloads or wrapped in the
combined-stream form, alone (tickvault's own recordings) or behind a receive time
(cryptofeed's ``<s>: {json}``, hftbacktest's ``<ns> {json}``; see
:mod:`tickvault.sources.binance.capture`). data.binance.vision trades/aggTrades CSVs
(zipped or not) are recognised by their content (:mod:`tickvault.sources.binance.vision`).
Every row is stamped with the market the user names (``exchange``, default ``binance``);
messages carrying fields that only another market sends are counted (``foreign``) so the
command can warn once. Each file's progress is checkpointed (by line number, after the bus
confirmed the lines before it), so a rerun after ``kill -9`` resumes instead of starting
over. A file is identified by its resolved path and a hash of its first 64 KiB, so a
different file at the same path is not mistaken for the old one.

Lines that cannot become records are dead-lettered with the reason and the raw line; their
key is ``<file key>:<line number>``, so reruns never record them twice, and the same text is
their ``entry_id`` (source letters have no bus entry), so ``dlq list`` shows the file and
line each came from (:func:`letter_origin`).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

from tickvault.bus.base import NewDeadLetter
from tickvault.core.errors import ConfigError
from tickvault.delivery.checkpoints import CheckpointStore
from tickvault.sources.base import Source, SourceBatch, SourceHealth
from tickvault.sources.binance.capture import LineFormat, split_line
from tickvault.sources.binance.markets import (
    FOREIGN_RULES,
    FUTURES,
    SPOT,
    check_market,
    market_from_url,
)
from tickvault.sources.binance.vision import CsvChunks, detect_layout, is_csv, open_csv
from tickvault.sources.binance.wire import SkippedMessage, SymbolNeeded, parse_values
from tickvault.sources.poison import raw_dead_letter


def file_key(path: Path, exchange: str = SPOT) -> str:
    """The checkpoint key of ``path`` replayed as market ``exchange``.

    A file replayed as one market and then as another is two replays (two histories), so
    the market is part of the key; spot keeps the key it always had, so checkpoints taken
    before markets had names stay valid.
    """
    with open(path, "rb") as fh:
        head = fh.read(65536)
    key = f"replay:{path.resolve()}#{hashlib.sha256(head).hexdigest()[:16]}"
    return key if exchange == SPOT else f"{key}@{exchange}"


def letter_origin(entry_id: str | None) -> tuple[str, int] | None:
    """``(file, line)`` of a dead letter recorded by a replay, else ``None``."""
    if not entry_id or not entry_id.startswith("replay:"):
        return None
    head, _, line = entry_id.rpartition(":")
    path = head[len("replay:") :].rpartition("#")[0]
    return (path, int(line)) if path and line.isdigit() else None


def letter_market(entry_id: str | None) -> str:
    """The market a replay dead letter was read as (``binance`` unless its key says)."""
    if not entry_id or not entry_id.startswith("replay:"):
        return SPOT
    tail = entry_id.rpartition("#")[2]
    market = tail.partition("@")[2].rpartition(":")[0]
    return market or SPOT


def _origin(key: str, number: int) -> tuple[str, str]:
    """Dead-letter key and entry id of line ``number`` (the same text: see the docstring)."""
    origin = f"{key}:{number}"
    return origin, origin


def _open(path: Path) -> IO[bytes]:
    if is_csv(path):
        return open_csv(path)
    raw = open(path, "rb")  # noqa: SIM115 - closed by the caller
    if raw.read(2) == b"\x1f\x8b":
        raw.seek(0)
        return gzip.GzipFile(fileobj=raw)  # type: ignore[return-value]
    raw.seek(0)
    return io.BufferedReader(raw, buffer_size=1 << 20)


def count_lines(path: Path) -> int:
    with _open(path) as fh:
        return sum(1 for _ in fh)


class ReplaySource(Source):
    """Replays files in order; ``chunk_lines`` lines per batch."""

    kind = "replay"

    def __init__(
        self,
        paths: list[Path],
        checkpoints: CheckpointStore | None = None,
        *,
        chunk_lines: int = 10_000,
        restart: bool = False,
        exchange: str = SPOT,
        line_format: LineFormat = "auto",
        symbol: str | None = None,
    ) -> None:
        for p in paths:
            if not p.is_file():
                raise ConfigError(f"replay: no such file: {p}")
        self.paths = paths
        self.name = "replay"
        self.checkpoints = checkpoints
        self.chunk_lines = chunk_lines
        self.restart = restart
        self.exchange = check_market(exchange)
        self.line_format: LineFormat = line_format
        self.symbol = symbol.upper() if symbol else None
        self.skipped: dict[str, int] = {}
        """Valid lines that carry no record, by reason (open klines, capture headers...)."""
        self.foreign = 0
        """Messages with fields only another market sends (see ``binance_markets``)."""
        self.header_markets: list[str] = []
        """Markets named by capture headers (websocket URLs) other than ``exchange``."""
        self.untimed_quotes = 0
        """Book tickers stamped with the replay time (no time in the message or the line)."""
        self._file_symbols: set[str] = set()
        """Symbols the current file named so far (tracked while there is at most one)."""
        self.messages = 0
        self.skipped_lines = 0
        self.files_done = 0
        self.files_already_done = 0
        self._last = time.monotonic()

    async def batches(self) -> AsyncIterator[SourceBatch]:
        for path in self.paths:
            key = file_key(path, self.exchange)
            start, done = (0, False)
            if self.checkpoints is not None:
                if self.restart:
                    self.checkpoints.reset(key)
                start, done = self.checkpoints.get(key)
            if done:
                self.files_already_done += 1
                continue
            self.skipped_lines += start
            last = start
            csv_chunks = self._csv_chunks(path)
            self._file_symbols = set()
            with _open(path) as fh:
                for _ in itertools.islice(fh, start):
                    pass  # already published by an earlier run
                while chunk := list(itertools.islice(fh, self.chunk_lines)):
                    batch = SourceBatch(lines=len(chunk))
                    if csv_chunks is not None:
                        self._parse_csv(csv_chunks, chunk, last, key, batch)
                    else:
                        self._parse_lines(chunk, last, key, batch)
                    last += len(chunk)
                    if len(self._file_symbols) <= 1 and csv_chunks is None:
                        self._only_symbol(batch.rows)
                    batch.position = (key, last, False)
                    self.messages += batch.lines
                    self._last = time.monotonic()
                    yield batch
            batch = SourceBatch(position=(key, last, True))
            self.files_done += 1
            yield batch

    def _csv_chunks(self, path: Path) -> CsvChunks | None:
        if not is_csv(path):
            return None
        with _open(path) as fh:
            first = fh.readline()
        return CsvChunks(detect_layout(path, first, self.symbol), self.exchange)

    def _parse_csv(
        self, parser: CsvChunks, chunk: list[bytes], last: int, key: str, batch: SourceBatch
    ) -> None:
        numbered = list(enumerate(chunk, start=last + 1))
        if last == 0 and parser.layout.header:
            numbered = numbered[1:]
        rows, rejects = parser.parse(numbered)
        if rows:
            batch.rows[parser.layout.kind] = rows
        for number, reason, raw in rejects:
            batch.rejects.append(NewDeadLetter("raw", reason, raw, *_origin(key, number)))

    def _parse_lines(self, chunk: list[bytes], last: int, key: str, batch: SourceBatch) -> None:
        rows_by_kind = batch.rows
        exchange, fmt, symbol = self.exchange, self.line_format, self.symbol
        plain = fmt in ("auto", "json")  # a line starting with "{" is the message itself
        foreign_rules = FOREIGN_RULES[exchange in FUTURES]
        for number, line in enumerate(chunk, start=last + 1):
            try:
                if plain and line.startswith(b"{"):
                    payload, recv_us, named = line, None, None
                else:
                    payload, recv_us, named = split_line(line, fmt)
                try:
                    kind, row = parse_values(payload, recv_us, exchange, named or symbol)
                except SymbolNeeded:
                    # Captures of one symbol per file (hftbacktest) hold bare REST snapshots:
                    # they belong to the one symbol every message before them named.
                    only = self._only_symbol(rows_by_kind)
                    if only is None:
                        raise
                    kind, row = parse_values(payload, recv_us, exchange, only)
            except SkippedMessage as exc:
                self.skipped[exc.reason] = self.skipped.get(exc.reason, 0) + 1
                if line.startswith((b"wss://", b"ws://")):
                    self._check_header(line)
                continue
            except Exception as exc:  # any line at all: see sources.poison
                data = line.strip()
                if data:  # blank lines are not input
                    batch.rejects.append(raw_dead_letter(exc, data, *_origin(key, number)))
                continue
            rule = foreign_rules.get(kind)
            if rule is not None and (rule[0] in payload) is rule[1]:
                self.foreign += 1  # see binance_markets.foreign_fields
            if kind == "quote" and recv_us is None and row[7] is None:
                self.untimed_quotes += 1
            rows = rows_by_kind.get(kind)
            if rows is None:
                rows = rows_by_kind[kind] = []
            rows.append(row)

    def _check_header(self, line: bytes) -> None:
        """A capture's header names its websocket URL, hence its market: note a mismatch."""
        named = market_from_url(line.split(b" ", 1)[0].decode("ascii", "replace"), default="")
        if named and named != self.exchange and named not in self.header_markets:
            self.header_markets.append(named)

    def _only_symbol(self, rows_by_kind: dict[str, list[tuple[Any, ...]]]) -> str | None:
        seen = self._file_symbols
        if len(seen) <= 1:
            seen.update(row[1] for rows in rows_by_kind.values() for row in rows)
        return next(iter(seen)) if len(seen) == 1 else None

    async def commit(self, batch: SourceBatch) -> None:
        if self.checkpoints is not None and batch.position is not None:
            key, position, done = batch.position
            self.checkpoints.save(key, position, done)

    def health(self) -> SourceHealth:
        return SourceHealth(
            name=self.name,
            kind=self.kind,
            connected=True,
            last_message_age_s=time.monotonic() - self._last,
            messages=self.messages,
            detail=f"{self.files_done}/{len(self.paths)} files",
        )

    def total_bytes(self) -> int:
        return sum(os.path.getsize(p) for p in self.paths)
