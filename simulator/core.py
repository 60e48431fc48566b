"""The simulated market: a clock, the market lists and a deterministic candle model.

Everything the exchange servers serve comes from here, so REST history, live websocket bars and the
control port's ground truth always agree. Promises:

- `SimClock` runs `speed` times faster than real time from `start_ms` (default: now, floored to the
  minute). Only the clock decides what "now" is; nothing reads the wall clock for market data.
- `CandleModel` is a pure function of (seed, exchange, symbol, minute): any minute can be computed in
  O(trades) without iterating from a start, in any process, and gives the same answer every time.
  Prices and volumes are exact `Decimal`s built from integers (ticks and lot units); no float is used
  on a price or volume path. Being pure, its results can be kept: the last `FINALS_KEPT` bars the
  live feed closed (`final_candle`) are served to REST and the control port without recomputing.
- Continuity: a candle's open is the previous candle's close; a minute without trades is flat at the
  previous close with zero volume and `trades == 0`.
- `partial_candle(m, minute, upto)` is the in-progress bar as seen at sim time `upto`; it aggregates a
  prefix of the same trade list the final bar aggregates, so partial bars converge to the final one.
- `MarketCatalog` serves the exchanges' real market lists (simulator/data) or a deterministic subset
  that always starts with the majors and awkward symbols (colon pairs, `1INCH`, a tiny price) tests
  must exercise.
- Tiny prices: a market quoted with 8 decimals keeps a price below 0.00001 (see `MIN_TINY_TICKS`):
  about 9% of Bitfinex's pairs, 8% of Binance's and 22-24% of Bittrex's markets, by seed. Trade
  sizes are not round dollar amounts, so volumes have many digits.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from functools import cache, lru_cache
from pathlib import Path
from typing import Any, NamedTuple

from common.timeutil import MINUTE_MS, floor_minute_ms

DATA_DIR = Path(__file__).resolve().parent / "data"

BITFINEX_STATUS = "listed"
"""Bitfinex lists no status: every listed pair is tradable."""

TRADING_STATUSES = frozenset({"TRADING", "ONLINE", BITFINEX_STATUS})
"""The statuses (Binance, Bittrex, Bitfinex) of a market that trades."""

QUOTE_VOLUME_DECIMALS = 8
"""Quote volumes are truncated to this many decimals, as Binance and Bittrex print them."""


# --------------------------------------------------------------------------------------------- clock


class SimClock:
    """Simulated epoch-ms time running `speed` times faster than the real monotonic clock."""

    def __init__(self, speed: float = 60.0, start_ms: int | None = None) -> None:
        if speed <= 0:
            raise ValueError("speed must be > 0")
        if start_ms is None:
            start_ms = floor_minute_ms(int(time.time() * 1000))
        self.speed = float(speed)
        self.start_ms = int(start_ms)
        self._real_start = time.monotonic()

    def now_ms(self) -> int:
        return self.start_ms + int((time.monotonic() - self._real_start) * self.speed * 1000)

    def current_minute_ms(self) -> int:
        return floor_minute_ms(self.now_ms())

    def real_seconds_until(self, sim_ms: int) -> float:
        return max(0.0, (sim_ms - self.now_ms()) / self.speed / 1000)

    async def sleep_until(self, sim_ms: int) -> None:
        """Return once `now_ms() >= sim_ms` (never early)."""
        while (delay := self.real_seconds_until(sim_ms)) > 0:
            await asyncio.sleep(delay + 0.0005)


# ------------------------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class SimMarket:
    """One market as its exchange lists it.

    `symbol` is the exchange's own listing string: `BTCUSD` / `AAVE:USD` (Bitfinex; the trading symbol
    is `t` + symbol), `BTCUSDT` (Binance), `BTC-USD` (Bittrex). `status` is the exchange's own string.
    """

    exchange: str
    symbol: str
    base: str
    quote: str
    status: str
    trade_probability: float
    price_decimals: int
    volume_decimals: int

    @property
    def is_trading(self) -> bool:
        return self.status in TRADING_STATUSES


@dataclass(frozen=True, slots=True)
class SimCandle:
    """One 1-minute bar. `trades == 0` means nobody traded: flat at the previous close, volume 0."""

    time_ms: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    quote_volume: Decimal
    trades: int
    taker_buy_volume: Decimal = Decimal(0)
    taker_buy_quote_volume: Decimal = Decimal(0)
    first_trade_id: int = -1
    last_trade_id: int = -1


class SimTrade(NamedTuple):
    """One trade of a minute: its time after the minute's start, price in ticks, size in lot units."""

    offset_ms: int
    price_ticks: int
    size_units: int
    taker_buy: bool


# ------------------------------------------------------------------------------------------- catalog

_PRIORITY: dict[str, tuple[str, ...]] = {
    "bitfinex": (
        *("BTCUSD", "ETHUSD", "BTCUST", "ETHBTC", "AAVE:USD", "BTC:CNHT", "LINK:UST", "XRPUSD"),
        "DOGBTC",
    ),
    "binance": (
        *("BTCUSDT", "ETHUSDT", "ETHBTC", "BNBUSDT", "1INCHUSDT", "1INCHBTC", "BTCEUR", "BCCBTC"),
        "DOGEBTC",
    ),
    "bittrex": (
        *("BTC-USD", "ETH-USD", "BTC-USDT", "ETH-BTC", "1INCH-BTC", "1INCH-USDT", "ANT-USD", "BTC-EUR"),
        "DOGE-BTC",
    ),
}
"""Markets a subset always starts with: majors first, then colon pairs, digit-led codes, offline ones,
and a tiny-price market (DOGE against BTC: about 0.0000068, 8 decimals)."""

_MAJORS = frozenset(symbol for priority in _PRIORITY.values() for symbol in priority[:4])
"""The first four priority markets of each exchange: they trade every minute."""

_USD_PRICES: dict[str, str] = {
    "BTC": "37000",
    "TESTBTC": "37000",
    "ETH": "2500",
    "BNB": "420",
    "LTC": "180",
    "BCH": "620",
    "BCHN": "620",
    "XAUT": "1780",
    "PAXG": "1780",
    "SOL": "150",
    "DOT": "35",
    "LINK": "28",
    "ADA": "2.2",
    "XRP": "1.1",
    "DOGE": "0.25",
    "DOG": "0.25",
    "USD": "1",
    "UST": "1",
    "USDT": "1",
    "USDC": "1",
    "UDC": "1",
    "BUSD": "1",
    "TUSD": "1",
    "PAX": "1",
    "USDP": "1",
    "DAI": "1",
    "USDS": "1",
    "VAI": "1",
    "TESTUSD": "1",
    "TESTUSDT": "1",
    "EUR": "1.16",
    "GBP": "1.37",
    "AUD": "0.73",
    "JPY": "0.0088",
    "CNH": "0.155",
    "CNHT": "0.155",
    "TRY": "0.11",
    "RUB": "0.014",
    "BRL": "0.18",
    "UAH": "0.038",
    "ZAR": "0.068",
    "NGN": "0.0024",
    "BIDR": "0.00007",
    "IDRT": "0.00007",
    "BKRW": "0.00085",
}
"""Rough USD prices so that the majors look like themselves; other currencies get hashed prices."""


class MarketCatalog:
    """The exchanges' real market lists, read once from simulator/data."""

    @staticmethod
    def load(exchange: str, limit: int | None = None, seed: int = 0) -> list[SimMarket]:
        """All markets of `exchange` (fixture order) or a deterministic subset of `limit` markets.

        The subset always contains the exchange's priority markets (majors, colon pairs, `1INCH`, an
        offline market) first, then a seeded pseudo-random choice of the rest; it is returned in the
        fixture's order.
        """
        everything = _all_markets(exchange, seed)
        if limit is None or limit >= len(everything):
            return list(everything)
        if limit < 0:
            raise ValueError("limit must be >= 0")
        by_symbol = {m.symbol: m for m in everything}
        chosen: list[str] = [s for s in _PRIORITY[exchange] if s in by_symbol][:limit]
        rest = sorted(
            (s for s in by_symbol if s not in chosen),
            key=lambda s: _digest(f"subset|{seed}|{exchange}|{s}".encode(), 8),
        )
        chosen.extend(rest[: limit - len(chosen)])
        keep = set(chosen)
        return [m for m in everything if m.symbol in keep]

    @staticmethod
    def raw_entries(exchange: str) -> dict[str, dict[str, Any]]:
        """Fixture entries by listing symbol (Binance `symbols[]` items, Bittrex market objects)."""
        return _raw_entries(exchange)

    @staticmethod
    def fixture(name: str) -> Any:
        return _fixture(name)


@cache
def _fixture(name: str) -> Any:
    with open(DATA_DIR / name, encoding="utf-8") as handle:
        return json.load(handle)


@cache
def _raw_entries(exchange: str) -> dict[str, dict[str, Any]]:
    if exchange == "binance":
        return {s["symbol"]: s for s in _fixture("binance_exchangeInfo.json")["symbols"]}
    if exchange == "bittrex":
        return {m["symbol"]: m for m in _fixture("bittrex_markets.json")}
    if exchange == "bitfinex":
        return {p: {"pair": p} for p in _fixture("bitfinex_conf_pub_list_pair_exchange.json")[0]}
    raise ValueError(f"unknown exchange {exchange!r}")


def split_bitfinex_pair(pair: str) -> tuple[str, str]:
    if ":" in pair:
        base, quote = pair.split(":", 1)
        return base, quote
    return pair[:3], pair[3:]


def _decimals_of(step: str) -> int:
    exponent = Decimal(step).normalize().as_tuple().exponent
    assert isinstance(exponent, int)
    return max(0, -exponent)


@cache
def _all_markets(exchange: str, seed: int) -> tuple[SimMarket, ...]:
    markets: list[SimMarket] = []
    for symbol, raw in _raw_entries(exchange).items():
        if exchange == "bitfinex":
            base, quote = split_bitfinex_pair(symbol)
            status = BITFINEX_STATUS
            price_decimals = _significant_decimals(_pair_price(base, quote, seed), 5)
            volume_decimals = 8
        elif exchange == "binance":
            base, quote, status = raw["baseAsset"], raw["quoteAsset"], raw["status"]
            filters = {f["filterType"]: f for f in raw.get("filters", [])}
            price_decimals = min(
                8, _decimals_of(filters.get("PRICE_FILTER", {}).get("tickSize", "0.00000001"))
            )
            volume_decimals = min(8, _decimals_of(filters.get("LOT_SIZE", {}).get("stepSize", "0.00000001")))
        else:
            base, quote, status = raw["baseCurrencySymbol"], raw["quoteCurrencySymbol"], raw["status"]
            price_decimals = min(8, int(raw.get("precision", 8)))
            volume_decimals = 8
        markets.append(
            SimMarket(
                exchange=exchange,
                symbol=symbol,
                base=base,
                quote=quote,
                status=status,
                trade_probability=_trade_probability(exchange, symbol, status, seed),
                price_decimals=price_decimals,
                volume_decimals=volume_decimals,
            )
        )
    return tuple(markets)


def _trade_probability(exchange: str, symbol: str, status: str, seed: int) -> float:
    """Liquidity mix: majors always trade; of the rest ~30% liquid, ~40% medium, ~30% illiquid."""
    if status not in TRADING_STATUSES:
        return 0.0
    if symbol in _MAJORS:
        return 1.0
    h = _digest(f"liquidity|{seed}|{exchange}|{symbol}".encode(), 8)
    bucket, fine = h % 100, (h >> 8) % 1000
    if bucket < 30:
        return 0.9 + fine / 10_000
    if bucket < 70:
        return 0.4 + fine / 2_000
    return 0.15 + fine / 4_000


# --------------------------------------------------------------------------------------------- model


def _digest(data: bytes, size: int = 16) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=size).digest(), "big")


def usd_price(currency: str, seed: int) -> Decimal:
    """The currency's base price in USD (known majors, else a seeded hash), before any noise."""
    known = _USD_PRICES.get(currency)
    if known is not None:
        return Decimal(known)
    h = _digest(f"usd|{seed}|{currency}".encode(), 8)
    # log-uniform-ish from 1e-4 to 1e3: a mantissa 1.000-9.999 times a power of ten
    mantissa = Decimal(1000 + h % 9000) / Decimal(1000)
    return mantissa.scaleb(-4 + (h >> 16) % 7)


def _pair_price(base: str, quote: str, seed: int) -> Decimal:
    return usd_price(base, seed) / usd_price(quote, seed)


def _significant_decimals(price: Decimal, digits: int) -> int:
    """Decimals that show `digits` significant digits of `price` (0..8)."""
    return max(0, min(8, digits - 1 - price.adjusted()))


_OCTAVES: tuple[tuple[int, int], ...] = (
    (8, 600),
    (32, 1_500),
    (128, 4_000),
    (512, 9_000),
    (2_048, 20_000),
    (8_192, 40_000),
    (32_768, 70_000),
    (131_072, 100_000),
)
"""Value-noise octaves of the latent price: (block length in minutes, amplitude in ppm).

The amplitudes sum to 24.5%, so a market wanders within about +/-25% of its base price.
"""

MIN_TICKS = 1_000
"""A market priced in fewer ticks than this moves in steps too coarse to look like a market: it is
raised to 1,000-9,999 ticks, unless it is a tiny-price market (below)."""

TINY_PRICE_DECIMALS = 8
MIN_TINY_TICKS = 100
"""Markets quoted with 8 decimals whose price is below 0.00001 (1,000 ticks) keep it, as meme coins
and small caps against BTC or USDT do on the real exchanges, so prices like 0.00000123 (where the
last digit matters) exist; below 100 ticks they get 100-999 ticks (0.00000100-0.00000999), so the
tick size stays under 1% of the price."""

_SPREAD_PPM = 400
"""Half-width of a trade's jitter around the latent price."""

_GUARANTEED_TRADE_EVERY = 64
"""Every market that trades at all trades in minutes divisible by this: bounds the scan for an open."""

FINALS_KEPT = 65_536
"""Closed bars `final_candle` keeps (about 1 KB each): the last 25 minutes of every market of the
full lists, or hours of a test's few markets. Oldest computed go first."""

_MAX_TRADES_PER_MINUTE = 40
_TRADES_PER_DIGEST = 4
_TRADE_ID_STRIDE = 64


@dataclass(frozen=True, slots=True)
class _Params:
    """Per-market constants derived once from the seed."""

    key: bytes
    base_ticks: int
    presence_threshold: int
    max_trades: int
    typical_units: int
    trades_at_all: bool


class CandleModel:
    """Deterministic 1-minute candles for any market and minute (see the module docstring)."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)
        self._params: dict[tuple[str, str], _Params] = {}
        self._trades_cache: dict[tuple[str, str, int], tuple[SimTrade, ...]] = {}
        self._prev_close_cache: dict[tuple[str, str, int], int] = {}
        self._latent_cache: dict[tuple[bytes, int], int] = {}
        self._finals: dict[tuple[str, str, int], tuple[SimCandle, int]] = {}

    # ---- public API

    def final_candle(self, market: SimMarket, minute_ms: int) -> SimCandle:
        minute_ms = floor_minute_ms(minute_ms)
        kept = self._finals.get((market.exchange, market.symbol, minute_ms))
        if kept is not None:
            return kept[0]
        prev = self._prev_close_ticks(market, minute_ms)
        return self._keep_final(market, minute_ms, prev, self.trades(market, minute_ms))

    def opening_candle(self, market: SimMarket, minute_ms: int) -> SimCandle:
        """The bar as the minute starts, before any trade: flat at the previous close, volume 0.
        Not `partial_candle` at the minute's first millisecond, which holds a trade made then."""
        minute_ms = floor_minute_ms(minute_ms)
        return _aggregate(market, minute_ms, self._prev_close_ticks(market, minute_ms), ())

    def partial_candle(self, market: SimMarket, minute_ms: int, upto_ms: int) -> SimCandle:
        minute_ms = floor_minute_ms(minute_ms)
        prev = self._prev_close_ticks(market, minute_ms)
        trades = self.trades(market, minute_ms)
        if upto_ms < minute_ms + MINUTE_MS:
            upto_offset = upto_ms - minute_ms
            trades = tuple(t for t in trades if t.offset_ms <= upto_offset)
        return _aggregate(market, minute_ms, prev, trades)

    def candles(
        self, market: SimMarket, start_ms: int, end_ms: int, *, traded_only: bool = False
    ) -> Iterator[SimCandle]:
        """Final candles of every minute in [start_ms, end_ms] (both floored), oldest first; with
        `traded_only` only those with trades (Bitfinex's), a quiet minute then costing one digest.

        Cheaper than calling `final_candle` per minute: continuity is carried along, not rescanned.
        """
        minute = floor_minute_ms(start_ms)
        end = floor_minute_ms(end_ms)
        if minute > end:
            return
        finals = self._finals
        prev: int | None = None
        while minute <= end:
            kept = finals.get((market.exchange, market.symbol, minute))
            if kept is not None:
                candle, prev = kept
                if candle.trades or not traded_only:
                    yield candle
            else:
                trades = self.trades(market, minute)
                if trades or not traded_only:
                    if prev is None:
                        prev = self._prev_close_ticks(market, minute)
                    yield _aggregate(market, minute, prev, trades)
                if trades:
                    prev = trades[-1].price_ticks
            minute += MINUTE_MS

    def _keep_final(
        self, market: SimMarket, minute_ms: int, prev: int, trades: tuple[SimTrade, ...]
    ) -> SimCandle:
        """The closed bar of `trades` opening at `prev`, kept among the last `FINALS_KEPT` finals:
        what the live feed just closed is what repairs and the control port ask for next, while
        long REST ranges and snapshots would only push those out."""
        candle = _aggregate(market, minute_ms, prev, trades)
        finals = self._finals
        if len(finals) >= FINALS_KEPT:
            for key in list(itertools.islice(finals, FINALS_KEPT // 4)):
                finals.pop(key, None)  # the history thread may be evicting too
        close = trades[-1].price_ticks if trades else prev
        finals[(market.exchange, market.symbol, minute_ms)] = (candle, close)
        return candle

    def trades(self, market: SimMarket, minute_ms: int) -> tuple[SimTrade, ...]:
        """The minute's trades, sorted by offset (empty if nobody traded)."""
        minute_ms = floor_minute_ms(minute_ms)
        cache_key = (market.exchange, market.symbol, minute_ms)
        cached = self._trades_cache.get(cache_key)
        if cached is not None:
            return cached
        params = self._params_of(market)
        index = minute_ms // MINUTE_MS
        count = self._trade_count(params, index)
        if count:
            l0, l1 = self._latent(params, index), self._latent(params, index + 1)
            result = _minute_trades(params, index, count, l0, l1)
        else:
            result = ()
        if len(self._trades_cache) >= 16_384:
            self._trades_cache.clear()
        self._trades_cache[cache_key] = result
        return result

    # ---- per-market constants

    def _params_of(self, market: SimMarket) -> _Params:
        ident = (market.exchange, market.symbol)
        params = self._params.get(ident)
        if params is not None:
            return params
        key = f"{self.seed}|{market.exchange}|{market.symbol}|".encode()
        h = _digest(key + b"params", 16)
        price = _pair_price(market.base, market.quote, self.seed)
        base_ticks = int(price.scaleb(market.price_decimals))
        if market.price_decimals >= TINY_PRICE_DECIMALS and base_ticks < MIN_TICKS:
            if base_ticks < MIN_TINY_TICKS:
                base_ticks = MIN_TINY_TICKS + h % (MIN_TICKS - MIN_TINY_TICKS)
        elif base_ticks < MIN_TICKS:
            base_ticks = MIN_TICKS + h % 9_000
        notional_usd = Decimal(20_000_000 + (h >> 16) % 3_000_000_000).scaleb(-6)  # $20-3020, not round
        size = notional_usd / usd_price(market.base, self.seed)
        typical_units = max(1, int(size.scaleb(market.volume_decimals)))
        probability = market.trade_probability
        params = _Params(
            key=key,
            base_ticks=base_ticks,
            presence_threshold=int(probability * (1 << 32)),
            max_trades=max(
                1, min(_MAX_TRADES_PER_MINUTE, int(probability * probability * _MAX_TRADES_PER_MINUTE))
            ),
            typical_units=typical_units,
            trades_at_all=probability > 0,
        )
        self._params[ident] = params
        return params

    # ---- latent price and trades

    def _latent(self, params: _Params, index: int) -> int:
        """The latent price (ticks) at the start of minute `index`; memoised, as a minute's end is
        the next minute's start."""
        cache_key = (params.key, index)
        latent = self._latent_cache.get(cache_key)
        if latent is not None:
            return latent
        noise = 0
        for octave, (length, amplitude) in enumerate(_OCTAVES):
            block, frac = divmod(index, length)
            v0 = _octave_value(params.key, octave, block, amplitude)
            v1 = _octave_value(params.key, octave, block + 1, amplitude)
            noise += v0 + (v1 - v0) * frac // length
        latent = max(1, params.base_ticks * (1_000_000 + noise) // 1_000_000)
        if len(self._latent_cache) >= 16_384:
            self._latent_cache.clear()
        self._latent_cache[cache_key] = latent
        return latent

    def _traded(self, params: _Params, index: int) -> bool:
        if not params.trades_at_all:
            return False
        if index % _GUARANTEED_TRADE_EVERY == 0:
            return True
        return (
            _digest(params.key + b"p" + index.to_bytes(8, "big", signed=True), 4) < params.presence_threshold
        )

    def _trade_count(self, params: _Params, index: int) -> int:
        if not self._traded(params, index):
            return 0
        return 1 + _digest(params.key + b"n" + index.to_bytes(8, "big", signed=True), 4) % params.max_trades

    def _last_price(self, params: _Params, index: int) -> int:
        count = self._trade_count(params, index)
        l0, l1 = self._latent(params, index), self._latent(params, index + 1)
        return _minute_trades(params, index, count, l0, l1, first=count - 1)[0].price_ticks

    def _prev_close_ticks(self, market: SimMarket, minute_ms: int) -> int:
        """The close before `minute_ms`: the last trade of the last minute that traded.

        Memoised: the live feed asks for it at every open, update and final of every market, and the
        previous minute's trades are usually cached already (their last price is the answer, or, if
        that minute was quiet, its own previous close is).
        """
        params = self._params_of(market)
        if not params.trades_at_all:
            return params.base_ticks
        key = (market.exchange, market.symbol, minute_ms)
        close = self._prev_close_cache.get(key)
        if close is not None:
            return close
        before = (market.exchange, market.symbol, minute_ms - MINUTE_MS)
        trades = self._trades_cache.get(before)
        if trades:
            close = trades[-1].price_ticks
        elif trades is not None and before in self._prev_close_cache:
            close = self._prev_close_cache[before]
        else:
            index = minute_ms // MINUTE_MS - 1
            while not self._traded(params, index):
                index -= 1
            close = self._last_price(params, index)
        if len(self._prev_close_cache) >= 16_384:
            self._prev_close_cache.clear()
        self._prev_close_cache[key] = close
        return close


def _minute_trades(
    params: _Params, index: int, count: int, l0: int, l1: int, first: int = 0
) -> tuple[SimTrade, ...]:
    """Trades `first` .. `count - 1` of minute `index` (`count` in all), from the minute's latent
    prices `l0` (start) and `l1` (end). Each trade takes 128 bits of the minute's trade digests:
    offset, jitter around the latent level, size and side."""
    key, typical_units = params.key, params.typical_units
    trades = []
    fields: tuple[int, ...] = ()
    for i in range(first, count):
        slot = i % _TRADES_PER_DIGEST
        if slot == 0 or not fields:
            fields = _TRADE_FIELDS.unpack(_trade_digest(key, index, i // _TRADES_PER_DIGEST))
        piece = _TRADES_PER_DIGEST - 1 - slot  # the digest holds the last trade's piece first
        side, size_bits, jitter_bits, offset_bits = fields[4 * piece : 4 * piece + 4]
        offset = (i * MINUTE_MS + offset_bits * MINUTE_MS // 0x10000) // count
        level = l0 + (l1 - l0) * offset // MINUTE_MS
        spread = max(1, level * _SPREAD_PPM // 1_000_000)
        jitter = jitter_bits % (2 * spread + 1) - spread
        size = max(1, typical_units * (1 + size_bits % 1_000) // 250)
        trades.append(SimTrade(offset, max(1, level + jitter), size, bool(side & 1)))
    return tuple(trades)


def _aggregate(market: SimMarket, minute_ms: int, open_ticks: int, trades: tuple[SimTrade, ...]) -> SimCandle:
    """The bar of `trades` (a prefix of the minute's trades) opening at `open_ticks`."""
    pd, vd = market.price_decimals, market.volume_decimals
    if not trades:
        flat = _dec(open_ticks, pd)
        zero = Decimal(0)
        return SimCandle(
            minute_ms, flat, flat, flat, flat, zero.scaleb(-vd), zero.scaleb(-QUOTE_VOLUME_DECIMALS), 0
        )
    high = low = open_ticks
    volume = quote = taker_volume = taker_quote = 0
    for t in trades:
        price, size = t.price_ticks, t.size_units
        if price > high:
            high = price
        elif price < low:
            low = price
        volume += size
        quote += size * price
        if t.taker_buy:
            taker_volume += size
            taker_quote += size * price
    first_id = (minute_ms // MINUTE_MS) * _TRADE_ID_STRIDE
    return SimCandle(
        time_ms=minute_ms,
        open=_dec(open_ticks, pd),
        high=_dec(high, pd),
        low=_dec(low, pd),
        close=_dec(trades[-1].price_ticks, pd),
        volume=_dec(volume, vd),
        quote_volume=_quote_dec(quote, pd + vd),
        trades=len(trades),
        taker_buy_volume=_dec(taker_volume, vd),
        taker_buy_quote_volume=_quote_dec(taker_quote, pd + vd),
        first_trade_id=first_id,
        last_trade_id=first_id + len(trades) - 1,
    )


@lru_cache(maxsize=1 << 16)
def _octave_value(key: bytes, octave: int, block: int, amplitude: int) -> int:
    h = _digest(key + b"o" + bytes((octave,)) + block.to_bytes(8, "big", signed=True), 8)
    return h % (2 * amplitude + 1) - amplitude


_TRADE_FIELDS = struct.Struct(">" + "7xBHIH" * _TRADES_PER_DIGEST)
"""A trade digest's 16-byte pieces as (side byte, size bits, jitter bits, offset bits), the last
trade's piece first: bits 64, 48-63, 16-47 and 0-15 of each piece read as a big-endian number."""


def _trade_digest(key: bytes, index: int, block: int) -> bytes:
    """64 bytes for `_TRADES_PER_DIGEST` trades of minute `index`: 16 per trade, the last first."""
    data = key + b"t" + index.to_bytes(8, "big", signed=True) + block.to_bytes(2, "big")
    return hashlib.blake2b(data, digest_size=64).digest()


def _dec(units: int, decimals: int) -> Decimal:
    return Decimal(units).scaleb(-decimals)


def _quote_dec(units: int, decimals: int) -> Decimal:
    """`units * 10**-decimals` truncated (toward zero) to QUOTE_VOLUME_DECIMALS."""
    if decimals > QUOTE_VOLUME_DECIMALS:
        units //= 10 ** (decimals - QUOTE_VOLUME_DECIMALS)
        decimals = QUOTE_VOLUME_DECIMALS
    return Decimal(units).scaleb(-decimals)
