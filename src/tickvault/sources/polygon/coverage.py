"""Which days of a Polygon series are durably downloaded, and on which price basis.

A series is ``(ticker, timeframe)``. Its covered days are kept as merged intervals in the
``polygon_coverage`` table of ``state.sqlite3``, each with the ``adjusted`` flag of the
download that covered it. One series holds one basis: :meth:`CoverageStore.basis` says
which, and the source refuses to download the other basis into it (the store's key has no
room for both, so they would mix silently).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path


class CoverageStore:
    """Covered day intervals per ``(ticker, timeframe)``, with their basis."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS polygon_coverage (ticker TEXT NOT NULL,"
            " timeframe TEXT NOT NULL, day_from INTEGER NOT NULL, day_to INTEGER NOT NULL,"
            " adjusted INTEGER NOT NULL DEFAULT 1, PRIMARY KEY (ticker, timeframe, day_from))"
        )
        columns = {r[1] for r in self._conn.execute("PRAGMA table_info(polygon_coverage)")}
        if "adjusted" not in columns:
            # A state file from before the flag: every download then asked for adjusted bars.
            self._conn.execute(
                "ALTER TABLE polygon_coverage ADD COLUMN adjusted INTEGER NOT NULL DEFAULT 1"
            )

    def covered(self, ticker: str, timeframe: str) -> list[tuple[int, int]]:
        rows = self._conn.execute(
            "SELECT day_from, day_to FROM polygon_coverage WHERE ticker=? AND timeframe=?"
            " ORDER BY day_from",
            (ticker, timeframe),
        ).fetchall()
        return [(int(a), int(b)) for a, b in rows]

    def basis(self, ticker: str, timeframe: str) -> bool | None:
        """``True`` (adjusted) or ``False`` (unadjusted) for a series with covered days."""
        row = self._conn.execute(
            "SELECT min(adjusted), max(adjusted) FROM polygon_coverage"
            " WHERE ticker=? AND timeframe=?",
            (ticker, timeframe),
        ).fetchone()
        if row is None or row[0] is None:
            return None
        return bool(row[1])

    def add(
        self, ticker: str, timeframe: str, day_from: int, day_to: int, adjusted: bool = True
    ) -> None:
        """Mark ``[day_from, day_to]`` covered, merging with touching intervals."""
        merged = [(day_from, day_to)]
        for a, b in self.covered(ticker, timeframe):
            lo, hi = merged[0]
            if a <= hi + 1 and b >= lo - 1:
                merged[0] = (min(a, lo), max(b, hi))
            else:
                merged.append((a, b))
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            self._conn.execute(
                "DELETE FROM polygon_coverage WHERE ticker=? AND timeframe=?", (ticker, timeframe)
            )
            self._conn.executemany(
                "INSERT INTO polygon_coverage VALUES (?,?,?,?,?)",
                [(ticker, timeframe, a, b, int(adjusted)) for a, b in merged],
            )
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._conn.close()


def uncovered(first: int, last: int, covered: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of ``[first, last]`` outside the sorted ``covered`` intervals."""
    out: list[tuple[int, int]] = []
    cursor = first
    for a, b in covered:
        if b < cursor:
            continue
        if a > last:
            break
        if a > cursor:
            out.append((cursor, min(a - 1, last)))
        cursor = max(cursor, b + 1)
        if cursor > last:
            break
    if cursor <= last:
        out.append((cursor, last))
    return out
