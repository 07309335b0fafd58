"""tickvault: a market-data plane that does not lose data.

Public API: records (:mod:`tickvault.records`), buses (:func:`tickvault.bus.open_bus`),
stores (:func:`tickvault.stores.open_store`), the writer and the publisher, and
:class:`ReliableConsumer` for services of your own that read a stream.
"""

from tickvault.bus.base import Entry
from tickvault.consumer import ReliableConsumer
from tickvault.errors import TickvaultError
from tickvault.records import AggTrade, Bar, DepthUpdate, Quote, Trade

__version__ = "0.1.0"

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
