"""The Store interface: idempotent batched writes keyed on natural keys, read-only queries.

Contract (checked by ``tests/test_store_contract.py``):

* ``ensure_schema`` creates the public tables (see :mod:`tickvault.core.records`) if missing and
  is safe to call any number of times.
* ``write(kind, table)`` commits the Arrow table's rows, ignoring rows whose natural key is
  already stored (also duplicates inside the table), and returns how many rows were new.
  When it returns, the rows are durable; when it raises, the caller must assume nothing
  was written and retry (retrying is harmless because of the keys).
* ``query`` runs exactly one read-only statement and never changes stored data; it reaches
  the store's tables and nothing else (no files, URLs, extensions or settings), enforced by
  the engine's own switches (``docs/http.md``, Security). A refused statement raises
  :class:`~tickvault.core.errors.QueryRejected`; one stopped at the store's memory or time limit
  :class:`~tickvault.core.errors.QueryLimitExceeded` / :class:`~tickvault.core.errors.QueryTimeout`
  (the query no longer runs when it is raised). Messages are one line.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    import pyarrow as pa

from tickvault.core.errors import StoreError


class QueryResult(msgspec.Struct, frozen=True):
    columns: list[str]
    rows: list[tuple[Any, ...]]
    truncated: bool = False

    def as_dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, r, strict=True)) for r in self.rows]


class StoreHealth(msgspec.Struct, frozen=True):
    ok: bool
    writable: bool
    detail: str = ""


class Store(abc.ABC):
    """Abstract time-series store; see the module docstring for the contract."""

    url: str = ""

    @abc.abstractmethod
    async def ensure_schema(self) -> None: ...

    @abc.abstractmethod
    async def write(self, kind: str, table: pa.Table) -> int: ...

    async def write_many(self, tables: dict[str, pa.Table]) -> dict[str, int]:
        """Write several kinds at once; same contract as :meth:`write` for each table.

        Stores that can should commit them in one transaction (one commit per writer batch
        instead of one per kind); the default writes them one after the other, which is
        equally safe because every write is idempotent.
        """
        return {kind: await self.write(kind, table) for kind, table in tables.items()}

    async def stored_versions(self, kind: str, table: pa.Table) -> pa.Table | None:
        """The stored rows whose natural key is one of ``table``'s (any column order), or
        None when this store cannot tell.

        The writer calls it after a write that inserted fewer rows than it was given, to
        find conflicting duplicates (:mod:`tickvault.core.conflicts`); it must answer with the
        versions that stay stored. A store that overwrites on a repeated key cannot answer
        after the fact and returns None (the conflicts then go unrecorded).
        """
        return None

    async def replace(self, kind: str, table: pa.Table) -> int:
        """Store ``table``'s rows *replacing* the stored rows with the same natural keys,
        and answer how many rows were written.

        Only an explicit re-download that the user asked for (``backfill polygon
        --refresh``) calls it, after keeping the previous versions elsewhere; every other
        write inserts only new keys (:meth:`write`). Idempotent: replacing with the same rows
        again leaves the store as it is.
        """
        raise StoreError(f"{type(self).__name__} cannot replace stored rows")

    @abc.abstractmethod
    async def query(self, sql: str, limit: int = 10_000) -> QueryResult: ...

    @abc.abstractmethod
    async def counts(self) -> dict[str, int]:
        """Rows per public table."""

    @abc.abstractmethod
    async def latest(self, kind: str, symbol: str) -> dict[str, Any] | None:
        """The newest row of ``kind`` for ``symbol`` (by event time), or None."""

    @abc.abstractmethod
    async def health(self) -> StoreHealth: ...

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release the store; it must not be used afterwards."""
