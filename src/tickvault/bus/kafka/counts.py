"""Delivery counts of the Kafka bus that survive restarts and rebalances.

Kafka does not count deliveries: a consumer that crashes before committing simply reads
again from the committed offset. To dead-letter a poison entry after ``max_deliveries``
deliveries even when every delivery ends in a crash, the bus writes the counts where the
next owner of the partition reads them: in the **metadata string of the group's committed
offset** (OffsetCommit carries one per partition, up to ``offset.metadata.max.bytes``,
4 KiB by default). No extra topic, no extra round trip on restart: ``committed()`` returns
it with the offset.

Contract
--------
* Before a ``read`` hands out entries, the member commits, for each partition it delivered
  from, its current commit point (unchanged: nothing is skipped) with the counts of every
  delivered, uncommitted offset. A crash after that leaves the counts on the broker.
* Every later commit of that partition carries the counts of the offsets at or past the new
  commit point (acknowledged entries drop out).
* A new owner (restart or rebalance) loads them in ``on_assign``; its deliveries continue
  the count.
* The encoding is ``tv1:<first>-<last>x<count>,...`` (runs of equal counts). When it would
  not fit in :data:`MAX_METADATA` characters, neighbouring runs are merged keeping the
  higher count: counts may be overstated for a neighbour, never understated for a poison.
* Counting is a safety net, not a delivery guarantee: if recording fails (the group is
  rebalancing, the broker is away) the entries are still handed out and the delivery is
  counted again by the next successful record.

Hand-written because Kafka clients have no delivery counter (KIP-932 share groups count
deliveries, but are a different consumption model with no ordered partitions).
"""

from __future__ import annotations

import logging

log = logging.getLogger("tickvault.bus.kafka")

PREFIX = "tv1:"
MAX_METADATA = 3000
"""Characters of counts per partition commit (the broker's default limit is 4096 bytes)."""
MAX_LOADED = 100_000
"""Offsets a loaded record may expand to (more is a corrupt or foreign metadata string)."""

Runs = list[tuple[int, int, int]]


def encode(counts: dict[int, int], start: int) -> str:
    """The metadata string for ``counts`` of offsets ``>= start`` ("" when none)."""
    runs: Runs = []
    for offset in sorted(o for o in counts if o >= start):
        n = counts[offset]
        if runs and runs[-1][1] == offset - 1 and runs[-1][2] == n:
            runs[-1] = (runs[-1][0], offset, n)
        else:
            runs.append((offset, offset, n))
    text = _text(runs)
    while len(text) > MAX_METADATA and len(runs) > 1:
        merged: Runs = []
        for i in range(0, len(runs), 2):
            pair = runs[i : i + 2]
            merged.append((pair[0][0], pair[-1][1], max(r[2] for r in pair)))
        runs = merged
        text = _text(runs)
    return text if runs else ""


def _text(runs: Runs) -> str:
    return PREFIX + ",".join(f"{a}-{b}x{n}" for a, b, n in runs)


def decode(metadata: str | None) -> dict[int, int]:
    """Counts from a metadata string; ``{}`` for none, a foreign or a malformed one."""
    if not metadata or not metadata.startswith(PREFIX):
        return {}
    out: dict[int, int] = {}
    try:
        for part in metadata[len(PREFIX) :].split(","):
            span, _, n = part.partition("x")
            first, _, last = span.partition("-")
            a, b, count = int(first), int(last), int(n)
            if b < a or count < 1 or len(out) + (b - a + 1) > MAX_LOADED:
                raise ValueError(part)
            for offset in range(a, b + 1):
                out[offset] = max(out.get(offset, 0), count)
    except ValueError:
        log.warning("Kafka bus: ignoring unreadable delivery counts %r", metadata[:80])
        return {}
    return out
