"""tickvault: a market-data plane that does not lose data.

Public API: records (:mod:`tickvault.core.records`), buses (:func:`tickvault.bus.open_bus`),
stores (:func:`tickvault.stores.open_store`), the writer and the publisher, and
:class:`ReliableConsumer` for services of your own that read a stream.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tickvault.core.errors import TickvaultError

if TYPE_CHECKING:
    from tickvault.bus.base import Entry
    from tickvault.core.records import AggTrade, Bar, DepthUpdate, Quote, Trade
    from tickvault.delivery.consumer import ReliableConsumer

__version__ = "0.1.0"

# Imported on first access (PEP 562), so that ``import tickvault.<module>`` — every command
# line start, every producer process — does not load Arrow and the bus clients it may not use.
_LAZY = {
    "AggTrade": "tickvault.core.records",
    "Bar": "tickvault.core.records",
    "DepthUpdate": "tickvault.core.records",
    "Quote": "tickvault.core.records",
    "Trade": "tickvault.core.records",
    "Entry": "tickvault.bus.base",
    "ReliableConsumer": "tickvault.delivery.consumer",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tickvault' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "AggTrade",
    "Bar",
    "DepthUpdate",
    "Entry",
    "Quote",
    "ReliableConsumer",
    "TickvaultError",
    "Trade",
    "__version__",
]
