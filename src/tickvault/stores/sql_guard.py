"""A small SQL scanner: a first line in front of the engines' own read-only switches.

:func:`check_single_select` accepts exactly one statement that starts with ``SELECT`` or
``WITH`` and returns it without a trailing semicolon. It understands comments, string
literals and quoted identifiers, so a ``;`` or a keyword inside them does not count. It only
gives a clear one-line refusal early: no keyword list can make SQL read-only. What holds is
each engine's switch: the ClickHouse store sends ``readonly=1`` with every user query (the
server then refuses writes, settings and table functions); ``docs/http.md`` (Security) lists
each store's.
"""

from __future__ import annotations

from tickvault.core.errors import QueryRejected

_READ_KEYWORDS = frozenset({"SELECT", "WITH"})
# Words that make a statement write even after a leading WITH (``WITH x AS (...) INSERT``).
_WRITE_KEYWORDS = frozenset(
    {
        "INSERT",
        "UPDATE",
        "DELETE",
        "DROP",
        "ALTER",
        "CREATE",
        "RENAME",
        "ATTACH",
        "DETACH",
        "OPTIMIZE",
        "GRANT",
        "REVOKE",
        "KILL",
        "COPY",
        "BACKUP",
        "RESTORE",
        "VACUUM",
        "REINDEX",
    }
)


def _tokens(sql: str) -> tuple[list[str], list[int]]:
    """Top-level words (upper-cased) and the offsets of top-level semicolons."""
    words: list[str] = []
    semicolons: list[int] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c == "-" and sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
        elif c == "/" and sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            if end < 0:
                raise QueryRejected("unterminated comment in query")
            i = end + 2
        elif c in "'\"`":
            i = _skip_quoted(sql, i, c)
        elif c == ";":
            semicolons.append(i)
            i += 1
        elif c.isalpha() or c == "_":
            j = i + 1
            while j < n and (sql[j].isalnum() or sql[j] == "_"):
                j += 1
            words.append(sql[i:j].upper())
            i = j
        else:
            i += 1
    return words, semicolons


def _skip_quoted(sql: str, start: int, quote: str) -> int:
    i, n = start + 1, len(sql)
    while i < n:
        c = sql[i]
        if c == "\\":
            i += 2
            continue
        if c == quote:
            if i + 1 < n and sql[i + 1] == quote:  # doubled quote inside a literal
                i += 2
                continue
            return i + 1
        i += 1
    raise QueryRejected("unterminated quoted text in query")


def check_single_select(sql: str, *, forbidden: frozenset[str] = frozenset()) -> str:
    """Return ``sql`` as one read-only statement or raise :class:`QueryRejected`.

    ``forbidden`` names extra top-level keywords to refuse (the ClickHouse store refuses
    ``FORMAT`` and ``OUTFILE`` because it chooses the output format itself).
    """
    words, semicolons = _tokens(sql)
    statement = sql
    if semicolons:
        last = semicolons[-1]
        if len(semicolons) > 1 or _tokens(sql[last + 1 :])[0]:
            raise QueryRejected("expected exactly one statement, got several")
        statement = sql[:last]
    if not words:
        raise QueryRejected("empty query")
    if words[0] not in _READ_KEYWORDS:
        raise QueryRejected(f"only read-only SELECT queries are allowed (got {words[0]})")
    bad = sorted((forbidden | _WRITE_KEYWORDS).intersection(words))
    if bad:
        raise QueryRejected(f"queries may not use {', '.join(bad)}")
    return statement.strip()
