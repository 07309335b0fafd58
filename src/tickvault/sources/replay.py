"""``replay``: recorded Binance websocket messages, one JSON document per line.

Files may be plain or gzip-compressed (``.gz``); lines may be bare payloads or wrapped in the
combined-stream form. Each file's progress is checkpointed (by line number, after the bus
confirmed the lines before it), so a rerun after ``kill -9`` resumes instead of starting
over. A file is identified by its resolved path and a hash of its first 64 KiB, so a
different file at the same path is not mistaken for the old one.

Lines that cannot become records are dead-lettered with the reason and the raw line; their
key is ``<file key>:<line number>``, so reruns never record them twice.
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
from typing import IO

from tickvault.bus.base import NewDeadLetter
from tickvault.checkpoints import CheckpointStore
from tickvault.errors import ConfigError
from tickvault.sources.base import Source, SourceBatch, SourceHealth
from tickvault.sources.binance_wire import ParseError, parse_values


def file_key(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(65536)
    return f"replay:{path.resolve()}#{hashlib.sha256(head).hexdigest()[:16]}"


def _open(path: Path) -> IO[bytes]:
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
    ) -> None:
        for p in paths:
            if not p.is_file():
                raise ConfigError(f"replay: no such file: {p}")
        self.paths = paths
        self.name = "replay"
        self.checkpoints = checkpoints
        self.chunk_lines = chunk_lines
        self.restart = restart
        self.messages = 0
        self.skipped_lines = 0
        self.files_done = 0
        self.files_already_done = 0
        self._last = time.monotonic()

    async def batches(self) -> AsyncIterator[SourceBatch]:
        for path in self.paths:
            key = file_key(path)
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
            with _open(path) as fh:
                for _ in itertools.islice(fh, start):
                    pass  # already published by an earlier run
                while chunk := list(itertools.islice(fh, self.chunk_lines)):
                    batch = SourceBatch(lines=len(chunk))
                    rows_by_kind = batch.rows
                    for number, line in enumerate(chunk, start=last + 1):
                        try:
                            kind, row = parse_values(line)
                        except ParseError as exc:
                            data = line.strip()
                            if data:  # blank lines are not input
                                batch.rejects.append(
                                    NewDeadLetter("raw", exc.reason, data, f"{key}:{number}")
                                )
                            continue
                        rows = rows_by_kind.get(kind)
                        if rows is None:
                            rows = rows_by_kind[kind] = []
                        rows.append(row)
                    last += len(chunk)
                    batch.position = (key, last, False)
                    self.messages += batch.lines
                    self._last = time.monotonic()
                    yield batch
            batch = SourceBatch(position=(key, last, True))
            self.files_done += 1
            yield batch

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
