"""Raw frame recording: every websocket frame, one per line, in rotating ``.jsonl.gz`` files.

Files are named ``<prefix>-<UTC start, YYYYmmddTHHMMSSZ>-<n>.jsonl.gz`` in the recording
directory. The file being written carries an extra ``.part`` suffix and is renamed when it
is rotated (every ``rotate_s`` seconds or ``rotate_bytes`` uncompressed bytes) or closed, so
every ``*.jsonl.gz`` file is a complete gzip stream that ``tickvault replay`` accepts.
After a crash the last ``.part`` file lacks its gzip trailer; ``zcat`` still recovers
everything written before the last flush.

Lines are the frames exactly as received (the combined-stream wrapping included), which is
one of the shapes :mod:`tickvault.sources.binance.wire` parses.
"""

from __future__ import annotations

import gzip
import time
from collections.abc import Callable, Iterable
from pathlib import Path


class FrameRecorder:
    """Append frames to rotating gzip files; call :meth:`close` to finish the last one."""

    def __init__(
        self,
        directory: str | Path,
        *,
        prefix: str = "binance",
        rotate_s: float = 3600.0,
        rotate_bytes: int = 256 << 20,
        compresslevel: int = 5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.rotate_s = rotate_s
        self.rotate_bytes = rotate_bytes
        self.compresslevel = compresslevel
        self.clock = clock
        self.completed: list[Path] = []
        self.frames = 0
        self._fh: gzip.GzipFile | None = None
        self._path: Path | None = None
        self._opened_at = 0.0
        self._bytes = 0
        self._seq = 0

    @property
    def current(self) -> Path | None:
        """The ``.part`` file being written, if any."""
        return self._path

    def _open(self) -> None:
        now = self.clock()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        self._seq += 1
        final = self.directory / f"{self.prefix}-{stamp}-{self._seq}.jsonl.gz"
        self._path = final.with_name(final.name + ".part")
        self._fh = gzip.open(  # noqa: SIM115 - closed by rotate()
            self._path, "wb", compresslevel=self.compresslevel
        )
        self._opened_at = now
        self._bytes = 0

    def write(self, frames: Iterable[bytes]) -> None:
        """Append ``frames`` (one line each) and rotate when due."""
        if self._fh is None:
            self._open()
        elif self.clock() - self._opened_at >= self.rotate_s or self._bytes >= self.rotate_bytes:
            self.rotate()
            self._open()
        lines = [f.replace(b"\n", b" ") + b"\n" for f in frames]
        if not lines:
            return
        data = b"".join(lines)
        assert self._fh is not None
        self._fh.write(data)
        self._bytes += len(data)
        self.frames += len(lines)

    def flush(self) -> None:
        if self._fh is not None:
            self._fh.flush()

    def rotate(self) -> Path | None:
        """Finish the current file (rename it to its final name) and return that name."""
        if self._fh is None or self._path is None:
            return None
        self._fh.close()
        final = self._path.with_name(self._path.name[: -len(".part")])
        self._path.rename(final)
        self.completed.append(final)
        self._fh = None
        self._path = None
        return final

    def close(self) -> None:
        self.rotate()
