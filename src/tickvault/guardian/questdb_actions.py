"""QuestDB recovery actions: back up a damaged table's directory; discarding WAL by hand only.

Incident 001: a recovery deleted a table's ``txn_seq`` and stopped all writes. Here:

* :func:`backup_run` copies the table's directory (found through ``tables()``'s
  ``directoryName``, never by listing directories) from the server's root into the store's
  ``backup_dir``, file by file, reading the source only. It writes into
  ``<backup_dir>/<dir>-<utc>.partial`` and renames that to its final name *inside the backup
  directory* once every file is copied, with a ``MANIFEST.sha256``. Before copying it checks
  the free space where the backup goes: when the copy would not fit with a margin it stops
  (:class:`UnsafeActionRefused`) and nothing is written — a human decides. Idempotent: a
  complete backup whose manifest matches the table's current files is reported, not redone.
* Discarding transactions the writer has not applied yet — ``ALTER TABLE … REBASE WAL`` where
  a server has it; QuestDB 9.3 has no REBASE and does it with ``ALTER TABLE … RESUME WAL FROM
  TXN <n>``, which skips the transactions before ``n`` — is never chosen by a check or the
  policy: :func:`discard_plan` refuses unless the operator set :data:`DISCARD_FLAG` in the
  action context, and needs the transaction number from the operator too.

Nothing here deletes, renames, truncates or writes any file under the server's root.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

from tickvault.core.errors import TickvaultError, UnsafeActionRefused
from tickvault.stores.base import Store

if TYPE_CHECKING:
    from tickvault.stores.questdb.store import QuestDBStore

DISCARD_FLAG = "questdb_discard_unapplied_wal"
"""Operator flag: unapplied WAL transactions may be discarded (``RESUME WAL FROM TXN``)."""
MARGIN_BYTES = 64 << 20
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TABLE_DIR = re.compile(r"^[A-Za-z0-9_.\-]+~\d+$")


class ActionContext(Protocol):
    """What these actions use of :class:`tickvault.guardian.actions.ActionContext`."""

    @property
    def store(self) -> Store | None: ...

    @property
    def operator_flags(self) -> frozenset[str]: ...

    @property
    def disk_free(self) -> Callable[[Path], int]: ...


def _store(ctx: ActionContext) -> QuestDBStore:
    """The context's store when it speaks QuestDB (by its methods, so a stand-in works)."""
    store = ctx.store
    if store is None or not hasattr(store, "wal_status") or not hasattr(store, "tables"):
        raise TickvaultError("this action needs a QuestDB store")
    return cast("QuestDBStore", store)


def _table(p: dict[str, Any]) -> str:
    table = str(p.get("table", ""))
    if not _IDENT.match(table):
        raise UnsafeActionRefused(f"refused: {table!r} is not a plain table name")
    return table


def manifest(directory: Path) -> dict[str, str]:
    """``relative path -> sha256`` of every file under ``directory`` (read only)."""
    out: dict[str, str] = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            digest = hashlib.sha256()
            with path.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
            out[str(path.relative_to(directory))] = digest.hexdigest()
    return out


def _size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


async def _source(ctx: ActionContext, table: str) -> tuple[Path, Path]:
    """The table's directory under the server's root and the backup directory."""
    store = _store(ctx)
    root, backups = store.server_root, store.backup_dir
    if root is None or backups is None:
        raise TickvaultError(
            "no backup possible: the store URL names no root= (the server's directory on this"
            " host) or no backup_dir="
        )
    info = (await store.tables()).get(table)
    if info is None or not info.directory or not _TABLE_DIR.match(str(info.directory)):
        raise TickvaultError(f"QuestDB names no directory for table {table}")
    return await asyncio.to_thread(_locate, Path(root), Path(backups), str(info.directory))


def _locate(root: Path, backups: Path, directory: str) -> tuple[Path, Path]:
    root, backups = root.resolve(), backups.resolve()
    if backups == root or root in backups.parents:
        raise UnsafeActionRefused(f"refused: backup_dir {backups} lies inside {root}")
    source = (root / "db" / directory).resolve()
    if source.parent != root / "db" or not source.is_dir():
        raise TickvaultError(f"{source} is not a table directory under {root}/db")
    return source, backups


def _existing(backups: Path, source: Path, files: dict[str, str]) -> Path | None:
    for done in sorted(backups.glob(f"{source.name}-*")):
        mf = done / "MANIFEST.sha256"
        if done.suffix == ".partial" or not mf.is_file():
            continue
        lines = [line.split("  ", 1) for line in mf.read_text().splitlines() if line]
        if {name: digest for digest, name in lines} == files:
            return done
    return None


def _room(ctx: ActionContext, source: Path, backups: Path) -> dict[str, Any]:
    need = _size(source)
    backups.mkdir(parents=True, exist_ok=True)
    free = ctx.disk_free(backups)
    if free < need + need // 10 + MARGIN_BYTES:
        raise UnsafeActionRefused(
            f"stopped: a backup of {source} needs {need} bytes plus a margin and {backups} has"
            f" {free} free; nothing was done. Free space or copy the directory by hand, then"
            " `tickvault guardian resume`"
        )
    return {"bytes": need, "free": free}


def _copy(source: Path, backups: Path) -> dict[str, Any]:
    files = manifest(source)
    existing = _existing(backups, source, files)
    if existing is not None:
        return {"backed_up": False, "backup": str(existing), "reason": "identical backup exists"}
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    final = backups / f"{source.name}-{stamp}"
    partial = final.with_name(final.name + ".partial")
    shutil.copytree(source, partial, copy_function=shutil.copy2)
    copied = manifest(partial)
    (partial / "MANIFEST.sha256").write_text(
        "".join(f"{digest}  {name}\n" for name, digest in sorted(copied.items()))
    )
    os.replace(partial, final)  # inside backup_dir only
    return {
        "backed_up": True,
        "backup": str(final),
        "files": len(copied),
        "bytes": sum(p.stat().st_size for p in final.rglob("*") if p.is_file()),
        "source_changed_while_copying": copied != files,
    }


async def backup_plan(ctx: ActionContext, p: dict[str, Any]) -> dict[str, Any]:
    table = _table(p)
    source, backups = await _source(ctx, table)
    room = await asyncio.to_thread(_room, ctx, source, backups)
    return {
        "will": f"copy {source} to {backups}/{source.name}-<utc> (reads the source only)",
        "backup": "this action is the backup",
        **room,
    }


async def backup_run(ctx: ActionContext, p: dict[str, Any]) -> dict[str, Any]:
    table = _table(p)
    source, backups = await _source(ctx, table)
    await asyncio.to_thread(_room, ctx, source, backups)  # again, right before copying
    return await asyncio.to_thread(_copy, source, backups)


async def discard_plan(ctx: ActionContext, p: dict[str, Any]) -> dict[str, Any]:
    table = _table(p)
    if DISCARD_FLAG not in ctx.operator_flags:
        raise UnsafeActionRefused(
            f"refused: discarding unapplied WAL transactions of {table} (REBASE WAL / RESUME"
            " WAL FROM TXN) runs only on an operator's explicit request, never by policy"
        )
    txn = p.get("from_txn")
    if not isinstance(txn, int) or txn < 1:
        raise UnsafeActionRefused("refused: the operator must name from_txn, a positive integer")
    status = (await _store(ctx).wal_status()).get(table)
    if status is None:
        raise TickvaultError(f"{table} is not a WAL table")
    return {
        "will": f"ALTER TABLE {table} RESUME WAL FROM TXN {txn} (skips the transactions"
        f" {status.writer_txn + 1}..{txn - 1})",
        "before": {"state": status.state, "writer_txn": status.writer_txn},
        "backup": "take questdb_backup_table first; applied rows are kept",
    }


async def discard_run(ctx: ActionContext, p: dict[str, Any]) -> dict[str, Any]:
    table = _table(p)
    await discard_plan(ctx, p)
    await _store(ctx)._rest.exec(f"ALTER TABLE {table} RESUME WAL FROM TXN {int(p['from_txn'])}")
    after = (await _store(ctx).wal_status()).get(table)
    return {"resumed_from_txn": int(p["from_txn"]), "state_after": after.state if after else None}


def disk_free(path: Path) -> int:
    return int(shutil.disk_usage(path).free)
