"""``synthetic``: a seeded generator of realistic trades and book-ticker quotes.

Prices follow a per-symbol random walk with a small spread; sizes are log-normal; about
60 % of records are trades and 40 % quotes. The seed fixes the sequence of prices and
sizes. Ids start from the start time in milliseconds times 1000 (per symbol, consecutive),
so a second demo on the same data dir adds new rows instead of colliding with old ones.
``rate`` is records per second (0 = as fast as possible).

Deterministic mode, for repeatable runs (crash tests): give ``first_id`` and ``start_us``
(and ``limit``). Then the n-th record is the same in every run with the same seed, ids and
times included (times are ``start_us + n * 1e6 / rate``), so a rerun only repeats keys
with identical content.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import AsyncIterator

from tickvault.core.records import Quote, Record, Trade
from tickvault.sources.base import Source, SourceBatch, SourceHealth

_START_PRICES = {"BTCUSDT": 43_000.0, "ETHUSDT": 2_300.0, "SOLUSDT": 60.0, "BNBUSDT": 310.0}


class SyntheticSource(Source):
    kind = "synthetic"

    def __init__(
        self,
        *,
        symbols: list[str] | None = None,
        rate: float = 10_000.0,
        seed: int = 42,
        exchange: str = "synthetic",
        limit: int | None = None,
        tick_s: float = 0.05,
        name: str = "synthetic",
        first_id: int | None = None,
        start_us: int | None = None,
    ) -> None:
        self.symbols = symbols or ["BTCUSDT", "ETHUSDT"]
        self.rate = rate
        self.exchange = exchange
        self.limit = limit
        self.tick_s = tick_s
        self.name = name
        self._rng = random.Random(seed)
        base = int(time.time() * 1000) * 1000 if first_id is None else first_id
        self.start_us = start_us
        self.live = start_us is None
        self._step_us = 1_000_000 / rate if rate > 0 else 1.0
        self._prices = {s: _START_PRICES.get(s, 100.0) for s in self.symbols}
        self._next_trade = dict.fromkeys(self.symbols, base)
        self._next_quote = dict.fromkeys(self.symbols, base)
        self.generated = 0
        self._last: float | None = None
        self._stopped = False

    def stop(self) -> None:
        self._stopped = True

    def _record(self, now_us: int) -> Record:
        rng = self._rng
        symbol = self.symbols[rng.randrange(len(self.symbols))]
        price = self._prices[symbol] * math.exp(rng.gauss(0.0, 0.0002))
        self._prices[symbol] = price
        if rng.random() < 0.6:
            trade_id = self._next_trade[symbol]
            self._next_trade[symbol] = trade_id + 1
            return Trade(
                exchange=self.exchange,
                symbol=symbol,
                trade_id=trade_id,
                price=round(price, 2),
                qty=round(rng.lognormvariate(-3.0, 1.0), 6),
                buyer_is_maker=rng.random() < 0.5,
                ts_event=now_us - rng.randrange(200, 5000),
                ts_recv=now_us,
            )
        update_id = self._next_quote[symbol]
        self._next_quote[symbol] = update_id + 1
        half = max(price * 0.00005, 0.01)
        return Quote(
            exchange=self.exchange,
            symbol=symbol,
            update_id=update_id,
            bid_price=round(price - half, 2),
            bid_qty=round(rng.lognormvariate(0.0, 1.0), 4),
            ask_price=round(price + half, 2),
            ask_qty=round(rng.lognormvariate(0.0, 1.0), 4),
            ts_event=None,
            ts_recv=now_us,
        )

    async def batches(self) -> AsyncIterator[SourceBatch]:
        started = time.monotonic()
        while not self._stopped and (self.limit is None or self.generated < self.limit):
            if self.rate > 0:
                due = int((time.monotonic() - started) * self.rate) - self.generated
                if due <= 0:
                    await asyncio.sleep(self.tick_s)
                    continue
            else:
                due = 5000
            if self.limit is not None:
                due = min(due, self.limit - self.generated)
            if self.start_us is None:
                now_us = time.time_ns() // 1000
                records = [self._record(now_us) for _ in range(due)]
            else:
                first, step = self.generated, self._step_us
                records = [
                    self._record(self.start_us + int((first + i) * step) + 5000) for i in range(due)
                ]
            batch = SourceBatch(records=records)
            self.generated += due
            self._last = time.monotonic()
            yield batch
            await asyncio.sleep(0)

    def health(self) -> SourceHealth:
        return SourceHealth(
            name=self.name,
            kind=self.kind,
            connected=not self._stopped,
            last_message_age_s=None if self._last is None else time.monotonic() - self._last,
            messages=self.generated,
        )
