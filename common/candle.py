"""The typed records that cross module boundaries: markets and 1-minute candles.

Prices and volumes are `Decimal` built from the exchange's own text, so a value is stored exactly as
the exchange sent it (no float on the write path, no rounding).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

DECIMAL_TEXT = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
"""A finite plain decimal number as exchanges write it (no NaN/Infinity, no spaces): `fullmatch` it."""


@dataclass(frozen=True, slots=True)
class Market:
    """One row of `symbol_exchange`: a market as the platform names it.

    `symbol` is the exchange's own identifier (`tBTCUSD`, `BTCUSDT`, `BTC-USD`);
    `base_id`/`quote_id` are the exchange's currency codes, upper case.
    """

    exchange: str
    base_id: str
    quote_id: str
    symbol: str
    is_trading: bool = True

    @property
    def pair(self) -> str:
        return f"{self.base_id}/{self.quote_id}"


@dataclass(slots=True)
class Candle:
    """One OHLCV bar. `time` is the open time of the interval, timezone-aware UTC.

    Treated as a value and never modified; not `frozen` only because a frozen dataclass costs
    six times as much to build, and the backfill builds tens of thousands per second."""

    exchange: str
    base_id: str
    quote_id: str
    time: datetime
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
