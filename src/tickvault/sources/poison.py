"""Poison input: whatever a raw message holds, it becomes a dead letter with a reason.

The one place that turns a failure to parse a venue message into a dead letter, shared by
``replay`` and the live collectors. Parsers raise :class:`~tickvault.core.errors.RecordError`
for what they foresee (malformed JSON, a missing field, a negative size); hostile input can
make the decoders raise anything else: ``RecursionError`` for a document nested a thousand
deep, ``OverflowError`` or ``MemoryError`` for absurd numbers and sizes, ``UnicodeError``
for bytes that are not UTF-8. Callers catch ``Exception`` around the parse (free on the
hot path: a ``try`` costs nothing until something is raised) and hand it here, so a line
can never stop a job, and every refusal has a short, stable reason.

The dead letter keeps the raw bytes, cut to :data:`MAX_RAW_BYTES` (with the full size in
the reason's payload note) so that one 100 MB line cannot overflow a bus's message limit.
"""

from __future__ import annotations

from tickvault.bus.base import NewDeadLetter
from tickvault.core.errors import RecordError

MAX_RAW_BYTES = 64 * 1024
"""Bytes of a raw message kept in its dead letter."""
MAX_MESSAGE_BYTES = 1 << 20
"""A message longer than this is refused as ``message too large``, whatever it holds."""


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def poison_reason(exc: BaseException, data: bytes) -> str:
    """The dead-letter reason for ``exc``, raised while parsing ``data``."""
    if len(data) > MAX_MESSAGE_BYTES:
        return "message too large"
    if isinstance(exc, RecordError):
        if exc.reason == "malformed JSON" and not _is_utf8(data):
            return "invalid UTF-8"
        return exc.reason
    if isinstance(exc, RecursionError):
        return "nested too deep"
    if isinstance(exc, OverflowError):
        return "number out of range"
    if isinstance(exc, MemoryError):
        return "message too large"
    if isinstance(exc, UnicodeError):
        return "invalid UTF-8"
    return f"unparseable message ({type(exc).__name__})"


def raw_dead_letter(
    exc: BaseException, data: bytes, key: str, entry_id: str | None = None
) -> NewDeadLetter:
    """A ``raw`` dead letter for ``data`` that failed to parse with ``exc``."""
    reason = poison_reason(exc, data)
    if len(data) > MAX_RAW_BYTES:
        data = data[:MAX_RAW_BYTES] + f"...[{len(data):,} bytes]".encode()
    return NewDeadLetter("raw", reason, data, key, entry_id)
