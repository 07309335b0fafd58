"""Conflicting duplicates: the same natural key with different content.

A redelivered record has the same key *and* the same content as the stored one: a harmless
duplicate. The same key with a different price, size or time is evidence of a problem (a
venue correction, a broken recorder, two sources disagreeing), so it is never dropped
silently. The rule, the same for every store:

* **The first stored version wins, deterministically.** Inside one writer batch the first
  row in bus order is the one written (:func:`first_versions`); against the store, the
  version already stored stays (stores insert only new keys).
* **Every conflict is recorded** as a dead letter with reason :data:`CONFLICT_REASON`
  whose payload shows both versions: ``{"kind", "key", "kept", "refused"}``. Its key is
  the record's key plus a digest of the refused version, so each different version is
  recorded once, however often it is redelivered. The writer counts them
  (``WriterStats.conflicts``), and ``status`` and ``/metrics`` show them.

Content is every column except the local receive times (``ts_recv``...: two receipts of
one venue message differ there), and ``gaps`` rows are not checked (tickvault's own
bookkeeping). Detection costs nothing while keys are new: a batch is checked against the store only
when the store inserted fewer rows than it was given (see
:meth:`tickvault.stores.base.Store.stored_versions`).
"""

from __future__ import annotations

import hashlib
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from tickvault.bus.base import NewDeadLetter
from tickvault.core.records import KindSpec
from tickvault.core.rejects import CONFLICT_REASON as CONFLICT_REASON
from tickvault.core.rejects import letter_json

Pair = tuple[dict[str, Any], dict[str, Any]]
"""``(kept, refused)``: two versions of one key."""


RECEIPT_COLUMNS = frozenset({"ts_recv", "detected_at", "status_at"})
"""Local clock readings, not venue content: two receipts of one message differ there."""
UNCHECKED_KINDS = frozenset({"gap"})
"""tickvault's own bookkeeping (a re-detected gap may carry another reason text)."""


def _key(spec: KindSpec, row: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(row[k] for k in spec.key)


def _differs(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return any(a[c] != b[c] for c in a if c not in RECEIPT_COLUMNS)


_MIX = 1_000_003


def _keys_distinct(table: pa.Table, key: tuple[str, ...]) -> bool:
    """True only if no two rows share a natural key (False: maybe they do).

    Every key column becomes 64-bit integers (strings by their dictionary index) folded
    into one value per row with a wrapping multiply-add. Equal keys always fold to equal
    values, so as many distinct values as rows proves the keys distinct; a collision only
    sends the batch to the exact check. About a tenth of the cost of grouping.
    """
    folded = None
    for name in key:
        col = table.column(name).combine_chunks()
        if pa.types.is_string(col.type):
            col = pc.dictionary_encode(col).indices.cast(pa.int64())
        elif pa.types.is_integer(col.type) or pa.types.is_timestamp(col.type):
            col = col.cast(pa.int64())
        else:
            return False
        if col.null_count:
            return False
        folded = col if folded is None else pc.add(pc.multiply(folded, _MIX), col)
    return folded is not None and len(pc.unique(folded)) == table.num_rows


def first_versions(spec: KindSpec, table: pa.Table) -> tuple[pa.Table, list[Pair]]:
    """``table`` with only the first row of each natural key, and the later rows whose
    content differs from that first one (as ``(first, later)`` pairs). Identical repeats
    are dropped silently: they are redeliveries. Content is every column but the local
    receive times (:data:`RECEIPT_COLUMNS`)."""
    n = table.num_rows
    if n < 2:
        return table, []
    # Cheap common case: no key repeats (see _keys_distinct).
    if _keys_distinct(table, spec.key):
        return table, []
    numbered = table.select(list(spec.key)).append_column("_tv_i", pa.array(range(n), pa.int64()))
    firsts = numbered.group_by(list(spec.key), use_threads=False).aggregate([("_tv_i", "min")])
    if firsts.num_rows == n:
        return table, []
    first_rows = pc.sort_indices(firsts.column("_tv_i_min"))
    keep = pc.take(firsts.column("_tv_i_min"), first_rows)
    later = pc.filter(
        pa.array(range(n), pa.int64()),
        pc.invert(pc.is_in(pa.array(range(n), pa.int64()), value_set=keep.combine_chunks())),
    )
    kept = table.take(keep)
    by_key = {_key(spec, row): row for row in kept.to_pylist()}
    pairs = []
    for row in table.take(later).to_pylist():
        first = by_key[_key(spec, row)]
        if spec.kind not in UNCHECKED_KINDS and _differs(first, row):
            pairs.append((first, row))
    return kept, pairs


def stored_conflicts(spec: KindSpec, offered: pa.Table, stored: pa.Table) -> list[Pair]:
    """``(stored, offered)`` pairs where ``stored`` (rows of the store with keys of
    ``offered``) holds a different version of an offered row."""
    if stored.num_rows == 0 or spec.kind in UNCHECKED_KINDS:
        return []
    stored = stored.select(list(spec.columns)).cast(spec.schema)
    by_key = {_key(spec, row): row for row in stored.to_pylist()}
    pairs = []
    for row in offered.select(list(spec.columns)).to_pylist():
        kept = by_key.get(_key(spec, row))
        if kept is not None and _differs(kept, row):
            pairs.append((kept, row))
    return pairs


def conflict_letter(spec: KindSpec, pair: Pair) -> NewDeadLetter:
    """The dead letter recording one conflict, both versions shown."""
    kept, refused = pair
    key = {k: kept[k] for k in spec.key}
    payload = letter_json({"kind": spec.kind, "key": key, "kept": kept, "refused": refused})
    digest = hashlib.sha256(letter_json(refused)).hexdigest()[:16]
    key_text = "|".join(str(v)[:64] for v in key.values())
    return NewDeadLetter(
        spec.kind, CONFLICT_REASON, payload, f"conflict:{spec.kind}:{key_text}:{digest}"
    )
