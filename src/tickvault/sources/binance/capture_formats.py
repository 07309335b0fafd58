"""The names of the recording line formats (see :mod:`tickvault.sources.binance.capture`).

Apart from the parser so that the command line can check ``--format`` without importing
it (the parser brings the record kinds and Arrow with it).
"""

from __future__ import annotations

from typing import Literal

LineFormat = Literal["auto", "json", "cryptofeed", "hftbacktest"]
FORMATS: tuple[LineFormat, ...] = ("auto", "json", "cryptofeed", "hftbacktest")
