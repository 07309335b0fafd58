"""One clear line for a local fault: what happened, where, and what to do.

Disk-full and I/O errors surface from many layers (``sqlite3.OperationalError`` with
``database or disk is full`` or ``disk I/O error``, ``OSError`` with ``ENOSPC``, DuckDB's
``IOException``); :func:`resource_fault` recognises them and turns them into one
:class:`~tickvault.core.errors.ResourceFault`, which the command line prints as a single line
and exits 3 for. Anything it does not recognise is left alone (``None``).
"""

from __future__ import annotations

import errno

from tickvault.core.errors import ResourceFault

_FULL = ("database or disk is full", "no space left", "disk quota exceeded", "file too large")
_IO = ("disk i/o error", "input/output error")
_READ_ONLY = ("readonly database", "read-only file system", "attempt to write a readonly")
_ERRNO = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file size limit reached",
    errno.EIO: "disk I/O error",
    errno.EROFS: "read-only file system",
}
_ADVICE = {
    "disk full": "free disk space (or move the data dir) and rerun; work resumes where it stopped",
    "disk quota exceeded": "raise the quota or free space and rerun; work resumes where it stopped",
    "file size limit reached": "raise the file size limit (ulimit -f) and rerun",
    "disk I/O error": "check the disk (dmesg, free space) and rerun; work resumes where it stopped",
    "read-only file system": "make the data dir writable and rerun",
}


def _kind(exc: BaseException) -> str | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:  # the cause chain too
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _ERRNO:
            return _ERRNO[current.errno]
        text = str(current).lower()
        if any(m in text for m in _FULL):
            return "file size limit reached" if "file too large" in text else "disk full"
        if any(m in text for m in _IO):
            return "disk I/O error"
        if any(m in text for m in _READ_ONLY):
            return "read-only file system"
        current = current.__cause__ or current.__context__
    return None


def resource_fault(exc: BaseException, where: str) -> ResourceFault | None:
    """The :class:`ResourceFault` that ``exc`` (raised at ``where``) is, or None."""
    kind = _kind(exc)
    if kind is None:
        return None
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ResourceFault(f"{kind} at {where} ({detail}): {_ADVICE[kind]}")
