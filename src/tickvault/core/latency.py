"""Latency histograms fed a whole batch at a time (tick-to-stored, writer batch time).

:class:`LatencyHistogram` keeps what a Prometheus histogram keeps (cumulative bucket
counts, sum, count; exported by :mod:`tickvault.web.metrics`) and, beside it, a bounded
window of recent samples for percentiles (the dashboard, ``status`` and the latency
benchmark read ``quantiles``).

Contract
--------
* ``observe_array`` takes an Arrow array of seconds and does the work in Arrow compute
  kernels, never a Python loop per value, so the writer can feed every record of every
  batch: bucket counts are exact; the window keeps every ``sample_every``-th value of each
  array and at most ``window_values`` values (oldest dropped first).
* Buckets are upper bounds in seconds, ``le`` semantics (a value equal to a bound counts in
  that bucket); values above the last bound count only in ``+Inf`` (``count``).
* Not thread-safe: it is fed and read on the event loop.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

TICK_TO_STORED_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
"""Tick-to-stored bounds: fine around the 250 ms target, coarse for outages."""

BATCH_SECONDS_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
"""Writer batch time bounds (decode + validate + write + dead letters + ack)."""


class LatencyHistogram:
    """Cumulative buckets plus a bounded window of recent samples (see module contract)."""

    def __init__(
        self,
        bounds: Sequence[float],
        *,
        window_values: int = 100_000,
        sample_every: int = 10,
    ) -> None:
        if list(bounds) != sorted(bounds) or not bounds:
            raise ValueError("bounds must be a non-empty ascending sequence")
        self.bounds = tuple(float(b) for b in bounds)
        self.cumulative = [0] * len(self.bounds)
        """``cumulative[i]``: values ``<= bounds[i]`` observed so far."""
        self.count = 0
        self.sum = 0.0
        self.max = 0.0
        self.window_values = window_values
        self.sample_every = max(1, sample_every)
        self._window: deque[pa.Array] = deque()
        self._window_len = 0
        self._offset = 0

    def observe(self, seconds: float) -> None:
        """One value (cheap; for per-batch figures such as the batch time)."""
        for i, bound in enumerate(self.bounds):
            if seconds <= bound:
                self.cumulative[i] += 1
        self.count += 1
        self.sum += seconds
        self.max = max(self.max, seconds)
        self._remember(pa.array([seconds], pa.float64()))

    def observe_array(self, seconds: pa.Array | pa.ChunkedArray) -> None:
        """Every value of ``seconds`` (float64 seconds; nulls are ignored)."""
        values = seconds.drop_null() if seconds.null_count else seconds
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        n = len(values)
        if n == 0:
            return
        for i, bound in enumerate(self.bounds):
            below = pc.sum(pc.less_equal(values, bound)).as_py()
            self.cumulative[i] += int(below or 0)
        self.count += n
        self.sum += float(pc.sum(values).as_py() or 0.0)
        self.max = max(self.max, float(pc.max(values).as_py() or 0.0))
        if self.sample_every > 1:
            # A rotating offset, so short arrays do not always contribute their first value.
            offset = self._offset % n
            self._offset = (self._offset + 1) % self.sample_every
            values = values[offset :: self.sample_every]
        self._remember(values)

    def _remember(self, sample: pa.Array) -> None:
        self._window.append(sample)
        self._window_len += len(sample)
        while self._window_len > self.window_values and len(self._window) > 1:
            self._window_len -= len(self._window.popleft())

    def quantiles(self, qs: Sequence[float] = (0.5, 0.99)) -> list[float] | None:
        """Percentiles of the recent window (None before the first value)."""
        if not self._window_len:
            return None
        values = pa.chunked_array(list(self._window), pa.float64())
        result = pc.quantile(values, q=list(qs), interpolation="linear")
        return [float(v) for v in result.to_pylist()]

    def reset_window(self) -> None:
        """Forget the recent samples (the cumulative buckets stay; benchmarks use this to
        measure a steady state after a warm-up)."""
        self._window.clear()
        self._window_len = 0

    def snapshot(self) -> dict[str, Any]:
        """JSON-able summary: count, mean, max and recent p50/p99 in milliseconds."""
        q = self.quantiles((0.5, 0.99))
        return {
            "count": self.count,
            "mean_ms": round(self.sum / self.count * 1000, 3) if self.count else None,
            "max_ms": round(self.max * 1000, 3) if self.count else None,
            "p50_ms": round(q[0] * 1000, 3) if q else None,
            "p99_ms": round(q[1] * 1000, 3) if q else None,
        }


def tick_to_stored_histogram() -> LatencyHistogram:
    return LatencyHistogram(TICK_TO_STORED_BUCKETS)


def batch_seconds_histogram() -> LatencyHistogram:
    return LatencyHistogram(BATCH_SECONDS_BUCKETS, window_values=2_000, sample_every=1)


def seconds_since(ts_us: pa.Array | pa.ChunkedArray, now_us: int) -> pa.Array | pa.ChunkedArray:
    """``now - ts`` in float64 seconds for an Arrow column of microsecond timestamps."""
    as_int = pc.cast(ts_us, pa.int64()) if not pa.types.is_integer(ts_us.type) else ts_us
    return pc.divide(pc.cast(pc.subtract(now_us, as_int), pa.float64()), 1_000_000.0)
