"""The typed records that cross module boundaries: markets (and their key) and 1-minute candles.

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
from typing import NamedTuple

from common.timeutil import MINUTE_MS

DECIMAL_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
"""A finite decimal number as exchanges write it (JSON number or decimal string); no NaN/Infinity,
no spaces. PostgreSQL's numeric input reads every such text exactly."""


Bar = tuple[int, str, str, str, str, str]
"""One market's bar without the market: (open time in ms, open, high, low, close, volume), the
values as exact decimal text. What the web serves and what crosses Redis (`common.redis_records`)."""


class MarketKey(NamedTuple):
    """A market as `ohlcvs` rows and Redis keys name it: the key of everything stored per market."""

    exchange: str
    base_id: str
    quote_id: str


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


_BLOCK_CHARS = NUMBER_CHARS + b"\t\n"
_NEWLINE_AS_TAB = bytes.maketrans(b"\n", b"\t")


@dataclass(frozen=True, slots=True)
class CandleBlock:
    """One market's candles in bulk, ready for COPY: the backfill's hot path builds no object per
    candle. `lines[i]` is `time\\topen\\thigh\\tlow\\tclose\\tvolume` (the exchange's own text) and
    starts with `times[i]`; times are whole-minute epoch milliseconds, strictly ascending.

    Construction checks, over the whole block at once, that every time is an int, ascending, and
    every line is six fields of number characters (PostgreSQL's numeric input rejects the rest):
    a block can only hold exact decimal text. That each line starts with its time is the builder's
    promise (checked on the first and last line)."""

    exchange: str
    base_id: str
    quote_id: str
    times: list[int]
    lines: list[str]

    def __post_init__(self) -> None:
        times, lines = self.times, self.lines
        if len(times) != len(lines):
            raise ValueError("a candle block needs one time per line")
        if not lines:
            return
        try:
            data = "\n".join(lines).encode()
        except TypeError:
            raise ValueError(f"candle lines must be str: {lines[:3]!r}") from None
        first = times[0]
        every_minute = (  # the usual block (Binance: a row per minute): one compare in C
            first.__class__ is int
            and first % MINUTE_MS == 0
            and times == list(range(first, first + len(times) * MINUTE_MS, MINUTE_MS))
        )
        if (
            set(map(type, times)) != {int}
            or not every_minute
            and (not all(map(int.__lt__, times, times[1:])) or any(map(MINUTE_MS.__rmod__, times)))
            or data.translate(None, _BLOCK_CHARS)
            or data.count(b"\t") != 5 * len(lines)
            or data.count(b"\n") != len(lines) - 1
            or b"\t\t" in data.translate(_NEWLINE_AS_TAB)  # an empty field
            or data.startswith(b"\t")
            or data.endswith(b"\t")
            or not lines[0].startswith(f"{times[0]}\t")
            or not lines[-1].startswith(f"{times[-1]}\t")
        ):
            raise ValueError(f"not a block of exact candles: {lines[:3]!r}")

    def __len__(self) -> int:
        return len(self.lines)

    @classmethod
    def from_candles(cls, exchange: str, base_id: str, quote_id: str, candles: list[Candle]) -> CandleBlock:
        """The candles of this market by time (of equal times the last kept); ValueError if a candle
        belongs to another market or is not exact decimal text (checked in bulk by the block)."""
        latest: dict[int, Candle] = {}
        for c in candles:
            if c.base_id != base_id or c.quote_id != quote_id or c.exchange != exchange:
                raise ValueError(f"a {exchange} {base_id}/{quote_id} block cannot hold {c!r}")
            latest[c.time] = c
        try:
            times = sorted(latest)
            lines = [
                f"{t:d}\t" + "\t".join((c.open, c.high, c.low, c.close, c.volume))
                for t, c in ((t, latest[t]) for t in times)
            ]
        except (TypeError, ValueError):
            raise ValueError(f"candles need int times and str values: {candles[:3]!r}") from None
        return cls(exchange, base_id, quote_id, times, lines)

    def candles(self) -> list[Candle]:
        """The block as Candle values (for comparison and tests; the hot path never needs them)."""
        market = (self.exchange, self.base_id, self.quote_id)
        result = []
        for line in self.lines:
            time_ms, open_, high, low, close, volume = line.split("\t")
            result.append(Candle(*market, int(time_ms), open_, high, low, close, volume))
        return result
