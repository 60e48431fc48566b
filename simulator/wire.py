"""Exact text for the exchanges' number formats, written from Decimals (never through float).

- Bitfinex sends JSON *numbers*: `number_text` gives the shortest plain decimal text (`37050`,
  `0.00046909`, never `3.705E+4`), which is spliced into the JSON text unquoted.
- Binance sends strings with 8 decimals (`"37050.01000000"`).
- Bittrex sends strings with 8 decimals and a bare `"0"` for zero volumes.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from common.timeutil import isoformat_z, ms_to_datetime
from simulator.core import SimCandle

_EIGHT = Decimal("1e-8")


def number_text(value: Decimal) -> str:
    if value == 0:
        return "0"
    return format(value.normalize(), "f")


def fixed8(value: Decimal) -> str:
    return format(value.quantize(_EIGHT), "f")


def bittrex_number(value: Decimal) -> str:
    return "0" if value == 0 else fixed8(value)


def iso_z(ms: int) -> str:
    """`2021-06-13T00:01:00Z`."""
    return isoformat_z(ms_to_datetime(ms))


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


# --------------------------------------------------------------------------------------- bitfinex


def bitfinex_candle(candle: SimCandle) -> str:
    """`[MTS,OPEN,CLOSE,HIGH,LOW,VOLUME]` as JSON text with numbers, OCHL order."""
    return (
        f"[{candle.time_ms},{number_text(candle.open)},{number_text(candle.close)},"
        f"{number_text(candle.high)},{number_text(candle.low)},{number_text(candle.volume)}]"
    )


def bitfinex_candles(candles: list[SimCandle]) -> str:
    return "[" + ",".join(bitfinex_candle(c) for c in candles) + "]"


# ---------------------------------------------------------------------------------------- binance


def binance_kline_row(candle: SimCandle, interval_ms: int) -> list[Any]:
    """One `/api/v3/klines` row: 12 fields, strings for prices and volumes."""
    return [
        candle.time_ms,
        fixed8(candle.open),
        fixed8(candle.high),
        fixed8(candle.low),
        fixed8(candle.close),
        fixed8(candle.volume),
        candle.time_ms + interval_ms - 1,
        fixed8(candle.quote_volume),
        candle.trades,
        fixed8(candle.taker_buy_volume),
        fixed8(candle.taker_buy_quote_volume),
        "0",
    ]


def binance_kline_event(
    symbol: str,
    candle: SimCandle,
    closed: bool,
    event_ms: int,
    interval: str = "1m",
    interval_ms: int = 60_000,
) -> dict[str, Any]:
    """The `<symbol>@kline_<interval>` stream payload."""
    return {
        "e": "kline",
        "E": event_ms,
        "s": symbol,
        "k": {
            "t": candle.time_ms,
            "T": candle.time_ms + interval_ms - 1,
            "s": symbol,
            "i": interval,
            "f": candle.first_trade_id,
            "L": candle.last_trade_id,
            "o": fixed8(candle.open),
            "c": fixed8(candle.close),
            "h": fixed8(candle.high),
            "l": fixed8(candle.low),
            "v": fixed8(candle.volume),
            "n": candle.trades,
            "x": closed,
            "q": fixed8(candle.quote_volume),
            "V": fixed8(candle.taker_buy_volume),
            "Q": fixed8(candle.taker_buy_quote_volume),
            "B": "0",
        },
    }


# ---------------------------------------------------------------------------------------- bittrex


def bittrex_candle(candle: SimCandle, midpoint: bool = False) -> dict[str, str]:
    """A v3 Candle object: strings for every number, `startsAt` ISO-8601 with `Z`."""
    return {
        "startsAt": iso_z(candle.time_ms),
        "open": fixed8(candle.open),
        "high": fixed8(candle.high),
        "low": fixed8(candle.low),
        "close": fixed8(candle.close),
        "volume": "0" if midpoint else bittrex_number(candle.volume),
        "quoteVolume": "0" if midpoint else bittrex_number(candle.quote_volume),
    }
