"""The disk spool: where frames wait, durably and in order, while no bus can take them.

Layout
------
A spool is a directory of append-only **segment** files ``seg-<n>.tvspool`` (``n`` grows by
one per segment) plus a ``cursor`` file. A segment is a sequence of records::

    magic "TVS1" (4) | type (1) | body length (4, LE) | CRC32 of type+body (4, LE) | body

``type`` 1 is a frame (body: 2-byte stream-name length, stream name, frame payload); type 2
is a batch of dead letters that could not reach any bus (body: msgpack). The ``cursor`` file
holds the drain position ``(segment, offset)`` with its own CRC32, replaced atomically
(write, fsync, rename, fsync the directory).

Contract
--------
* :meth:`Spool.append` returns once the records are written, and with ``fsync="batch"``
  (the default) flushed to disk: one ``fsync`` per call, i.e. per publisher batch.
  ``fsync="never"`` leaves flushing to the OS (survives a process crash, not power loss).
* Appends after a restart go to a new segment: nothing is ever written after a tail that a
  crash may have torn.
* :meth:`Spool.read` returns records in append order from the persisted cursor;
  :meth:`Spool.commit` persists the new cursor and deletes segments only once every record
  in them was committed (the caller commits after the bus confirmed them). A crash between a
  bus append and the commit re-sends that batch after restart: harmless (natural keys).
* A torn tail (a record cut short by a crash) or a corrupt record (bad magic, bad CRC) is
  detected, counted in :attr:`SpoolStats.torn` / :attr:`SpoolStats.corrupt`, logged, and
  skipped; reading resynchronises on the next magic. It never raises.
* **Quota.** When an append would take the segment files past ``quota_bytes``:
  ``full_policy="block"`` waits until the drain frees space (the source is held back);
  ``"drop_newest"`` drops the incoming records and counts them exactly. Both emit a
  ``spool.full`` event (critical for drops); a drop is never silent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mmap
import os
import struct
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal, TypeVar, TypeVarTuple

import msgspec

from tickvault.bus.base import NewDeadLetter
from tickvault.core.errors import ConfigError
from tickvault.core.events import EVENTS, EventLog

log = logging.getLogger(__name__)
R = TypeVar("R")
Ts = TypeVarTuple("Ts")

MAGIC = b"TVS1"
_HEADER = struct.Struct("<4sBII")
_CURSOR = struct.Struct("<QQI")
FRAME, LETTERS = 1, 2
FullPolicy = Literal["block", "drop_newest"]
FsyncPolicy = Literal["batch", "never"]
_MAX_BODY = 1 << 30


@dataclass(frozen=True)
class SpoolRecord:
    """One record read back: a frame for ``stream``, or dead letters for ``stream``."""

    type: int
    stream: str
    payload: bytes = b""
    group: str | None = None
    letters: tuple[NewDeadLetter, ...] = ()


@dataclass(frozen=True)
class Position:
    segment: int
    offset: int


@dataclass
class SpoolStats:
    appended: int = 0
    appended_bytes: int = 0
    drained: int = 0
    backlog: int = 0
    """Records appended and not yet committed (exact: counted on open, then maintained)."""
    torn: int = 0
    corrupt: int = 0
    skipped_bytes: int = 0
    dropped_frames: int = 0
    dropped_records: int = 0
    full_events: int = 0
    blocked_s: float = 0.0


class _Letters(msgspec.Struct, array_like=True):
    group: str | None
    letters: list[NewDeadLetter]


def parse_size(value: int | str) -> int:
    """``1073741824``, ``"512MiB"``, ``"2GB"``, ``"100k"`` → bytes."""
    if isinstance(value, int):
        return value
    text = value.strip().lower().replace(" ", "")
    units = {
        "kib": 1 << 10,
        "mib": 1 << 20,
        "gib": 1 << 30,
        "tib": 1 << 40,
        "kb": 10**3,
        "mb": 10**6,
        "gb": 10**9,
        "tb": 10**12,
        "k": 1 << 10,
        "m": 1 << 20,
        "g": 1 << 30,
        "b": 1,
    }
    for unit, factor in units.items():
        if text.endswith(unit):
            try:
                return int(float(text[: -len(unit)]) * factor)
            except ValueError:
                break
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"invalid size {value!r}: use bytes or e.g. 512MiB, 2GiB") from None


def encode_record(type_: int, body: bytes) -> bytes:
    crc = zlib.crc32(body, zlib.crc32(bytes((type_,))))
    return _HEADER.pack(MAGIC, type_, len(body), crc) + body


def _frame_body(stream: str, payload: bytes) -> bytes:
    name = stream.encode()
    return struct.pack("<H", len(name)) + name + payload


def _decode(type_: int, body: bytes) -> SpoolRecord:
    if type_ == FRAME:
        (n,) = struct.unpack_from("<H", body)
        return SpoolRecord(FRAME, body[2 : 2 + n].decode(), body[2 + n :])
    (n,) = struct.unpack_from("<H", body)
    data = msgspec.msgpack.decode(body[2 + n :], type=_Letters)
    return SpoolRecord(
        LETTERS, body[2 : 2 + n].decode(), group=data.group, letters=tuple(data.letters)
    )


class Spool:
    """A disk spool in ``directory``; see the module docstring for the format and contract."""

    def __init__(
        self,
        directory: str | Path,
        *,
        quota_bytes: int | str = "1GiB",
        full_policy: FullPolicy = "block",
        fsync: FsyncPolicy = "batch",
        segment_bytes: int = 64 << 20,
        events: EventLog | None = None,
    ) -> None:
        if full_policy not in ("block", "drop_newest"):
            raise ConfigError(f"spool_full_policy must be block or drop_newest: {full_policy!r}")
        if fsync not in ("batch", "never"):
            raise ConfigError(f"spool fsync must be batch or never: {fsync!r}")
        self.directory = Path(directory)
        self.quota_bytes = parse_size(quota_bytes)
        self.full_policy: FullPolicy = full_policy
        self.fsync = fsync
        # Drained space is freed a segment at a time: keep segments well below the quota.
        self.segment_bytes = max(1 << 20, min(segment_bytes, self.quota_bytes // 8))
        self.events = events if events is not None else EVENTS
        self.stats = SpoolStats()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool")
        self._cursor = Position(0, 0)
        self._active: int | None = None
        self._active_fh: BinaryIO | None = None
        self._sizes: dict[int, int] = {}
        self._freed = asyncio.Event()
        self._opened = False
        self._full = False
        self._reported: set[tuple[int, int]] = set()

    # -- opening ----------------------------------------------------------------------------

    def _segment_path(self, n: int) -> Path:
        return self.directory / f"seg-{n:012d}.tvspool"

    def _open_sync(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for n in self._list_segments():
            self._sizes[n] = self._segment_path(n).stat().st_size
        self._cursor = self._read_cursor()
        first = min(self._sizes, default=self._cursor.segment)
        if self._cursor.segment < first:
            self._cursor = Position(first, 0)
        backlog = 0
        pos = self._cursor
        while True:  # count the backlog (headers only) and account for torn/corrupt records
            records, pos = self._scan(pos, 1 << 30, 1 << 62, decode=False)
            if not records:
                break
            backlog += len(records)
        self.stats.backlog = backlog
        self._opened = True

    def _list_segments(self) -> list[int]:
        out = []
        for p in self.directory.glob("seg-*.tvspool"):
            with contextlib.suppress(ValueError):
                out.append(int(p.name[4:-8]))
        return sorted(out)

    def _read_cursor(self) -> Position:
        path = self.directory / "cursor"
        try:
            raw = path.read_bytes()
            seg, off, crc = _CURSOR.unpack(raw)
        except (OSError, struct.error):
            return Position(0, 0)
        if zlib.crc32(raw[:16]) != crc:
            log.error("spool cursor %s is corrupt; draining from the oldest segment", path)
            return Position(0, 0)
        return Position(seg, off)

    async def _run(self, fn: Callable[[*Ts], R], *args: *Ts) -> R:
        if not self._opened:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._open_sync)
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def open(self) -> Spool:
        """Scan the directory (counts the backlog); called by the first operation anyway."""
        await self._run(lambda: None)
        return self

    # -- appending --------------------------------------------------------------------------

    @property
    def size_bytes(self) -> int:
        return sum(self._sizes.values())

    @property
    def opened(self) -> bool:
        return self._opened

    @property
    def has_backlog(self) -> bool:
        return self.stats.backlog > 0

    def _write_sync(self, blob: bytes, count: int) -> None:
        if self._active is None or self._sizes.get(self._active, 0) >= self.segment_bytes:
            self._rotate()
        fh = self._active_fh
        assert self._active is not None and fh is not None
        before = self._sizes[self._active]
        try:
            fh.write(blob)
            fh.flush()
            if self.fsync == "batch":
                os.fsync(fh.fileno())
        except OSError:
            with contextlib.suppress(OSError):  # never leave a half record behind us
                fh.truncate(before)
            raise
        self._sizes[self._active] = before + len(blob)
        self.stats.appended += count
        self.stats.appended_bytes += len(blob)
        self.stats.backlog += count

    def _rotate(self) -> None:
        if self._active_fh is not None:
            self._active_fh.close()
        n = max([*self._sizes, self._cursor.segment]) + 1
        self._active_fh = open(self._segment_path(n), "ab")  # noqa: SIM115 - kept open
        self._active = n
        self._sizes[n] = 0
        if self.fsync == "batch":
            _fsync_dir(self.directory)

    async def _admit(self, nbytes: int, what: str) -> bool:
        """Apply the quota; False means the records must be dropped (already counted)."""
        if self.size_bytes + nbytes <= self.quota_bytes:
            self._full = False
            return True
        if not self._full:
            self._full = True
            self.stats.full_events += 1
            self.events.emit(
                "spool",
                "spool.full",
                f"spool {self.directory} reached its quota of {self.quota_bytes} bytes;"
                f" policy {self.full_policy}",
                level="critical" if self.full_policy == "drop_newest" else "warning",
                quota_bytes=self.quota_bytes,
                policy=self.full_policy,
            )
        if self.full_policy == "drop_newest":
            return False
        loop = asyncio.get_running_loop()
        started = loop.time()
        while self.size_bytes + nbytes > self.quota_bytes and self.size_bytes > 0:
            self._freed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._freed.wait(), timeout=1.0)
        self.stats.blocked_s += loop.time() - started
        self._full = False
        return True

    async def append(
        self, stream: str, payloads: Sequence[bytes], records: int | Callable[[], int] = 0
    ) -> bool:
        """Append frames for ``stream``; True once written, False if the quota policy dropped
        them. ``records`` (or a function computing it, called only on a drop) is how many
        records the frames carry, for the exact drop count."""
        if not payloads:
            return True
        blob = b"".join(encode_record(FRAME, _frame_body(stream, p)) for p in payloads)
        if not self._opened:
            await self.open()
        if not await self._admit(len(blob), "frames"):
            records = records() if callable(records) else records
            self.stats.dropped_frames += len(payloads)
            self.stats.dropped_records += records
            self.events.emit(
                "spool",
                "spool.dropped",
                f"spool full: dropped {len(payloads)} frame(s) / {records} record(s) of"
                f" {stream} (total dropped: {self.stats.dropped_records} records)",
                level="critical",
                frames=len(payloads),
                records=records,
                total_dropped_records=self.stats.dropped_records,
            )
            return False
        await self._run(self._write_sync, blob, len(payloads))
        return True

    async def append_letters(
        self, stream: str, group: str | None, letters: Sequence[NewDeadLetter]
    ) -> None:
        """Spool dead letters that no bus could take (never dropped: they are small)."""
        if not letters:
            return
        name = stream.encode()
        body = struct.pack("<H", len(name)) + name
        body += msgspec.msgpack.encode(_Letters(group, list(letters)))
        await self._run(self._write_sync, encode_record(LETTERS, body), 1)

    # -- reading and committing -------------------------------------------------------------

    def _scan(
        self, pos: Position, max_records: int, max_bytes: int, decode: bool = True
    ) -> tuple[list[SpoolRecord], Position]:
        """Records from ``pos`` on; skips (and counts) torn and corrupt ones."""
        out: list[SpoolRecord] = []
        size = 0
        seg, off = pos.segment, pos.offset
        for n in sorted(n for n in self._sizes if n >= pos.segment):
            if n != seg:
                seg, off = n, 0
            try:
                with open(self._segment_path(n), "rb") as fh:
                    if os.fstat(fh.fileno()).st_size <= off:
                        continue
                    data = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            except FileNotFoundError:
                continue
            with data:
                while off < len(data) and len(out) < max_records and size < max_bytes:
                    rec, step = self._parse_one(data, off, n)
                    if rec is not None:
                        out.append(rec if decode else SpoolRecord(rec.type, ""))
                        size += step
                    off += step
            if len(out) >= max_records or size >= max_bytes:
                break
        return out, Position(seg, off)

    def _parse_one(self, data: mmap.mmap, i: int, seg: int) -> tuple[SpoolRecord | None, int]:
        """Parse the record at ``data[i:]``; return (record or None if skipped, bytes used)."""
        end = len(data)
        where = (seg, i)
        if end - i < _HEADER.size:
            self._torn(where, end - i)
            return None, end - i
        magic, type_, length, crc = _HEADER.unpack_from(data, i)
        if magic != MAGIC or type_ not in (FRAME, LETTERS) or length > _MAX_BODY:
            return self._resync(data, i, where, "bad header")
        body_start = i + _HEADER.size
        if body_start + length > end:
            if data.find(MAGIC, i + 1) == -1:
                self._torn(where, end - i)
                return None, end - i
            return self._resync(data, i, where, "truncated record")
        body = data[body_start : body_start + length]
        if zlib.crc32(body, zlib.crc32(bytes((type_,)))) != crc:
            return self._resync(data, i, where, "CRC mismatch")
        try:
            record = _decode(type_, body)
        except (struct.error, UnicodeDecodeError, msgspec.DecodeError, msgspec.ValidationError):
            return self._resync(data, i, where, "undecodable body")
        return record, _HEADER.size + length

    def _report(self, where: tuple[int, int], what: str, nbytes: int) -> bool:
        """Count a bad record once, however often it is scanned; True the first time."""
        if where in self._reported:
            return False
        self._reported.add(where)
        self.stats.skipped_bytes += nbytes
        name = f"{self._segment_path(where[0]).name}@{where[1]}"
        log.error("spool: %s at %s, %d bytes skipped", what, name, nbytes)
        self.events.emit(
            "spool",
            "spool.bad_record",
            f"{what} at {name}: {nbytes} bytes skipped",
            level="warning",
            segment=where[0],
            offset=where[1],
            bytes=nbytes,
        )
        return True

    def _torn(self, where: tuple[int, int], nbytes: int) -> None:
        if self._report(where, "torn record (cut short by a crash)", nbytes):
            self.stats.torn += 1

    def _resync(
        self, data: mmap.mmap, i: int, where: tuple[int, int], why: str
    ) -> tuple[None, int]:
        nxt = data.find(MAGIC, i + 1)
        step = (nxt if nxt != -1 else len(data)) - i
        if self._report(where, f"corrupt record ({why})", step):
            self.stats.corrupt += 1
        return None, step

    async def read(
        self, max_records: int = 256, max_bytes: int = 8 << 20
    ) -> tuple[list[SpoolRecord], Position]:
        """The next records after the cursor, and the position to commit once they are safe."""
        return await self._run(self._scan, self._cursor, max_records, max_bytes)

    def _commit_sync(self, pos: Position, count: int) -> None:
        tmp = self.directory / "cursor.tmp"
        raw = struct.pack("<QQ", pos.segment, pos.offset)
        with open(tmp, "wb") as fh:
            fh.write(raw + struct.pack("<I", zlib.crc32(raw)))
            fh.flush()
            os.fsync(fh.fileno())
        # No directory fsync: a cursor that rolls back after a power loss only re-sends.
        os.replace(tmp, self.directory / "cursor")
        self._cursor = pos
        self.stats.drained += count
        self.stats.backlog = max(0, self.stats.backlog - count)
        for n in sorted(self._sizes):
            if n < pos.segment or (
                n == pos.segment and pos.offset >= self._sizes[n] and self.stats.backlog == 0
            ):
                if n == self._active:
                    if self._active_fh is not None:  # open whenever a segment is active
                        self._active_fh.close()
                    self._active_fh, self._active = None, None
                self._segment_path(n).unlink(missing_ok=True)
                del self._sizes[n]

    async def commit(self, pos: Position, count: int) -> None:
        """Persist the cursor after ``count`` records up to ``pos`` are safe on a bus."""
        await self._run(self._commit_sync, pos, count)
        self._freed.set()

    async def close(self) -> None:
        def op() -> None:
            if self._active_fh is not None:
                self._active_fh.close()
                self._active_fh = None
                self._active = None

        await asyncio.get_running_loop().run_in_executor(self._executor, op)
        self._executor.shutdown(wait=True)

    def snapshot(self) -> dict[str, Any]:
        return asdict(self.stats) | {
            "dir": str(self.directory),
            "size_bytes": self.size_bytes,
            "quota_bytes": self.quota_bytes,
            "full_policy": self.full_policy,
            "segments": len(self._sizes),
        }


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
