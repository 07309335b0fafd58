"""tickvault: a market-data plane that does not lose data.

Public API: records (:mod:`tickvault.records`), buses (:func:`tickvault.bus.open_bus`),
stores (:func:`tickvault.stores.open_store`), the writer and the publisher.
"""

from tickvault.errors import TickvaultError
from tickvault.records import AggTrade, Bar, DepthUpdate, Quote, Trade

__version__ = "0.1.0"

__all__ = ["AggTrade", "Bar", "DepthUpdate", "Quote", "TickvaultError", "Trade", "__version__"]
