"""tickvault: a market-data plane that does not lose data.

Public API: records (:mod:`tickvault.records`), buses (:func:`tickvault.bus.open_bus`),
stores (:func:`tickvault.stores.open_store`), the writer and the publisher, and
:class:`ReliableConsumer` for services of your own that read a stream.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tickvault.errors import TickvaultError

if TYPE_CHECKING:
    from tickvault.bus.base import Entry
    from tickvault.consumer import ReliableConsumer
    from tickvault.records import AggTrade, Bar, DepthUpdate, Quote, Trade

__version__ = "0.1.0"

# Imported on first access (PEP 562), so that ``import tickvault.<module>`` — every command
# line start, every producer process — does not load Arrow and the bus clients it may not use.
_LAZY = {
    "AggTrade": "tickvault.records",
    "Bar": "tickvault.records",
    "DepthUpdate": "tickvault.records",
    "Quote": "tickvault.records",
    "Trade": "tickvault.records",
    "Entry": "tickvault.bus.base",
    "ReliableConsumer": "tickvault.consumer",
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
