"""The one exception tree of tickvault.

Backends translate their drivers' errors into these classes, so callers never need to know
which client library is underneath (a Redis ``ConnectionError`` and a SQLite
``OperationalError`` both surface as :class:`BusUnavailable`).
"""

from __future__ import annotations


class TickvaultError(Exception):
    """Root of every error tickvault raises on purpose."""


class ConfigError(TickvaultError):
    """A setting, URL or command-line value is invalid."""


class BackendNotAvailable(ConfigError):
    """A URL names a backend that is not installed or not supported yet."""


class ResourceFault(TickvaultError):
    """A local resource failed under tickvault: a full disk, an I/O error, a read-only or
    vanished file. The message says what, where, and what to do; nothing durable was lost,
    and rerunning once the resource is fixed resumes where the work stopped. The command
    line exits 3 for it."""


class RecordError(TickvaultError):
    """A record failed validation; ``reason`` is the short, stable text stored in dead letters."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DecodeError(TickvaultError):
    """Bytes could not be decoded into a frame or a venue message."""


class BusError(TickvaultError):
    """A bus operation failed."""


class BusUnavailable(BusError):
    """The bus cannot be reached right now; retrying later may succeed."""


class StoreError(TickvaultError):
    """A store operation failed."""


class StoreUnavailable(StoreError):
    """The store cannot accept writes right now (locked, disk full, down); retry later."""


class BatchRejected(StoreError):
    """The store refused the data of a batch (a bad value, not an outage).

    Retrying the same batch fails again; the writer bisects the batch to find the offending
    records and dead-letters them with ``str(exc)`` (the server's message) as the reason.
    """


class QueryRejected(StoreError):
    """A query was refused: not a single read-only statement, or too expensive."""


class QueryLimitExceeded(QueryRejected):
    """A query was stopped by the store's limits (memory, rows); the message says which."""


class QueryTimeout(QueryLimitExceeded):
    """A query was stopped at the store's time limit (it no longer runs)."""


class PositionError(TickvaultError):
    """A position operation was refused; nothing was written."""


class PositionInputError(PositionError):
    """An argument is invalid (a non-positive or non-finite size or price, an unknown side...)."""


class PositionStateError(PositionError):
    """The operation does not fit the trade's state (not open, already exists, changed)."""


class SafeModeError(PositionError):
    """The position book is in safe mode (crash-loop guard tripped): it writes nothing."""


class LedgerError(PositionError):
    """A capital ledger has a shape or content the reader does not accept."""


class PositionSourceError(PositionError):
    """A restore source cannot be read (missing, unreachable, corrupt); restore tries the next."""


class GuardianError(TickvaultError):
    """The guardian could not do something (its journal, a timeline, an alert channel)."""


class UnsafeActionRefused(GuardianError):
    """The guardian refused an action: not allowlisted, or aimed at a write-ahead-log or
    sequencer path, or at deleting/renaming database files. Nothing was changed."""
