"""The typed records that cross module boundaries: markets and 1-minute candles.

Prices and volumes are the exchange's own decimal text, carried unchanged from the wire into COPY:
a value is stored exactly as the exchange sent it, and no Decimal or float is built on the way
(that was most of a backfill's CPU). `DECIMAL_TEXT` is the rule a value must satisfy. Parsers check
it (in bulk over a whole body when they can: `only_number_chars`); the database writer checks that
every value is a `str` of number characters, and PostgreSQL's numeric input rejects any such text
that is not a well-formed number — so NaN, Infinity, floats or stray characters never reach a table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DECIMAL_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
"""A finite decimal number as exchanges write it (JSON number or decimal string); no NaN/Infinity,
no spaces. PostgreSQL's numeric input reads every such text exactly."""


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
    """One OHLCV bar. `time` is the open time of the interval in epoch milliseconds (UTC); prices
    and volume are the exchange's decimal text (see the module doc).

    Treated as a value and never modified; not `frozen` only because a frozen dataclass costs
    six times as much to build, and the backfill builds tens of thousands per second."""

    exchange: str
    base_id: str
    quote_id: str
    time: int
    open: str
    high: str
    low: str
    close: str
    volume: str


OHLCV_TEXT = re.compile("\t".join([DECIMAL_TEXT.pattern] * 5))
"""Five decimal texts joined by tabs: how a bar is checked in one match."""

NUMBER_CHARS = b"0123456789.eE+-"


def only_number_chars(text: str, also: bytes = b"") -> bool:
    """True if `text` has no character but digits, `.eE+-` and `also`: one pass in C, so a parser
    can clear a whole body at once (e.g. a JSON array of numbers with `also=b"[],"`)."""
    return not text.encode().translate(None, NUMBER_CHARS + also)


def decimal_text(value: str) -> str:
    """`value` if it is exact decimal text (see DECIMAL_TEXT), else ValueError."""
    if value.__class__ is not str or DECIMAL_TEXT.fullmatch(value) is None:
        raise ValueError(f"not a decimal number: {value!r}")
    return value


def check_ohlcv(open_: str, high: str, low: str, close: str, volume: str) -> str:
    """The five values joined by tabs (COPY's column separator) if each is exact decimal text,
    else ValueError (one regex match per bar; parsers use it when a body is not cleared in bulk)."""
    joined = f"{open_}\t{high}\t{low}\t{close}\t{volume}"
    if (
        open_.__class__ is str
        and high.__class__ is str
        and low.__class__ is str
        and close.__class__ is str
        and volume.__class__ is str
        and OHLCV_TEXT.fullmatch(joined) is not None
    ):
        return joined
    for value in (open_, high, low, close, volume):
        decimal_text(value)
    raise ValueError(f"not decimal numbers: {(open_, high, low, close, volume)!r}")
