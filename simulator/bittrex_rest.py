"""Bittrex v3 REST: currencies, markets and candles (the SignalR websocket is `bittrex_signalr.py`).

Wire promises (docs/exchanges.md, Bittrex): numbers are strings; `/currencies` lists one object
per currency the market list uses (base or quote), `/currencies/{symbol}` one of them (404 NOT_FOUND
for any other); candles are objects with
`startsAt` ISO-8601 `Z`, sorted ascending, one per interval including quiet ones (flat at the
previous close, volume "0"); the `TRADE` segment may be omitted; `historical` takes exactly the
date parts its interval needs (else 400 INVALID_DATE) and refuses the current or a future period
(400 STARTDATE_OUT_OF_RANGE); unknown markets answer 404 MARKET_DOES_NOT_EXIST; more than
`bittrex_requests_per_window` requests in a window answer 429 TOO_MANY_REQUESTS until it resets.
`recent` includes the in-progress candle (`bittrex_recent_includes_current`). MIDPOINT candles carry
the same prices with zero volumes and exist from 2020-12-02. Closed minute bars are encoded once
and kept per market and day (`simulator/encoded_days.py`): a repair asks for the same days again
and again.
"""

from __future__ import annotations

import calendar
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from aiohttp import web

from common.timeutil import datetime_to_ms
from simulator.compute import CandleWork
from simulator.core import MINUTE_MS, MarketCatalog, SimCandle, SimMarket
from simulator.encoded_days import EncodedDays
from simulator.http import client_ip, count_reply, damaged_reply, fault_gate, json_response
from simulator.limits import CountLimiter
from simulator.wire import bittrex_candle, dumps

if TYPE_CHECKING:
    from simulator.state import SimState

EXCHANGE = "bittrex"
DAY_MS = 86_400_000
INTERVALS_MS = {"MINUTE_1": MINUTE_MS, "MINUTE_5": 5 * MINUTE_MS, "HOUR_1": 60 * MINUTE_MS, "DAY_1": DAY_MS}
DATE_PARTS = {"MINUTE_1": 3, "MINUTE_5": 3, "HOUR_1": 2, "DAY_1": 1}
RECENT_SPAN_MS = {"MINUTE_1": DAY_MS, "MINUTE_5": DAY_MS, "HOUR_1": 31 * DAY_MS, "DAY_1": 366 * DAY_MS}
CANDLE_TYPES = ("TRADE", "MIDPOINT")
MIDPOINT_FROM_MS = 1_606_867_200_000
"""2020-12-02T00:00:00Z: Bittrex has midpoint candles from this day on."""
DAYS_KEPT_PER_MARKET = 2
"""Encoded minute days kept per market: `recent` spans two UTC days."""


FIAT = frozenset({"USD", "EUR"})
COIN_TYPES = {"BTC": "BITCOIN", "ETH": "ETH", "USD": "FIAT", "EUR": "FIAT"}
NAMES = {"BTC": "Bitcoin", "ETH": "Ethereum", "USDT": "Tether", "USDC": "USD Coin", "USD": "US Dollar"}
NAMES |= {"EUR": "Euro", "1INCH": "1inch", "ANT": "Aragon", "ADA": "Cardano", "DOGE": "Dogecoin"}


def currency_object(symbol: str) -> dict[str, Any]:
    """A `Currency` as `/v3/currencies` lists it (all fields of the spec; invented but stable values)."""
    fiat = symbol in FIAT
    return {
        "symbol": symbol,
        "name": NAMES.get(symbol, symbol),
        "coinType": COIN_TYPES.get(symbol, "ETH_CONTRACT"),
        "status": "ONLINE",
        "minConfirmations": 0 if fiat else 36,
        "notice": "",
        "txFee": "0.00000000" if fiat else "0.00100000",
        "logoUrl": f"https://bittrexblobstorage.blob.core.windows.net/public/{symbol.lower()}.png",
        "prohibitedIn": [],
        "baseAddress": "",
        "associatedTermsOfService": [],
        "tags": [],
    }


def error(code: str, status: int = 400, **extra: Any) -> web.Response:
    return json_response(dumps({"code": code, **extra}), status=status)


def bad_request(parameter: str) -> web.Response:
    return error(
        "BAD_REQUEST",
        detail="Refer to the data field for specific field validation failures.",
        data={"invalidRequestParameter": parameter},
    )


class BittrexRestServer:
    port = EXCHANGE
    actions: tuple[str, ...] = ()

    def __init__(self, sim: SimState) -> None:
        self.sim = sim
        self.limiter = CountLimiter(sim.config.bittrex_requests_per_window, sim.config.rate_window_seconds)
        self.markets: dict[str, SimMarket] = {m.symbol: m for m in sim.markets[EXCHANGE]}
        used = sorted({c for m in sim.markets[EXCHANGE] for c in (m.base, m.quote)})
        self.currency_objects: dict[str, dict[str, Any]] = {c: currency_object(c) for c in used}

    def add_routes(self, app: web.Application) -> None:
        app.middlewares.append(self._middleware)
        app.router.add_get("/v3/ping", self.ping)
        app.router.add_get("/v3/currencies", self.currencies)
        app.router.add_get("/v3/currencies/{symbol}", self.currency)
        app.router.add_get("/v3/markets", self.markets_list)
        app.router.add_get("/v3/markets/{symbol}", self.market)
        app.router.add_get("/v3/markets/{symbol}/candles/{tail:.*}", self.candles)

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if not request.path.startswith("/v3/"):
            return await handler(request)
        forced = await fault_gate(
            self.sim,
            EXCHANGE,
            storm_reply=lambda: error("TOO_MANY_REQUESTS", status=429),
            error_reply=lambda: error("SERVICE_UNAVAILABLE", status=503),
        )
        response: web.StreamResponse
        if forced is not None:
            response = forced
        elif not self.limiter.hit(client_ip(request)).allowed:
            stats = self.sim.stats[EXCHANGE]
            stats.over_limit += 1
            stats.http_429 += 1
            response = error("TOO_MANY_REQUESTS", status=429)
        else:
            try:
                response = await handler(request)
            except web.HTTPNotFound:
                response = error("NOT_FOUND", status=404)
            response = await damaged_reply(self.sim, EXCHANGE, request, response)
        count_reply(self.sim, EXCHANGE, response)
        return response

    async def ping(self, request: web.Request) -> web.Response:
        return json_response(dumps({"serverTime": self.sim.clock.now_ms()}))

    async def currencies(self, request: web.Request) -> web.Response:
        return json_response(dumps(list(self.currency_objects.values())))

    async def currency(self, request: web.Request) -> web.Response:
        found = self.currency_objects.get(request.match_info["symbol"].upper())
        if found is None:
            return error("NOT_FOUND", status=404)
        return json_response(dumps(found))

    async def markets_list(self, request: web.Request) -> web.Response:
        raw = MarketCatalog.raw_entries(EXCHANGE)
        return json_response(dumps([raw[m.symbol] for m in self.sim.markets[EXCHANGE]]))

    async def market(self, request: web.Request) -> web.Response:
        market = self.markets.get(request.match_info["symbol"].upper())
        if market is None:
            return error("MARKET_DOES_NOT_EXIST", status=404)
        return json_response(dumps(MarketCatalog.raw_entries(EXCHANGE)[market.symbol]))

    async def candles(self, request: web.Request) -> web.StreamResponse:
        segments = request.match_info["tail"].split("/")
        candle_type = "TRADE"
        if segments and segments[0] in CANDLE_TYPES:
            candle_type, segments = segments[0], segments[1:]
        if not segments or segments[0] not in INTERVALS_MS:
            return bad_request("candleInterval")
        interval, rest = segments[0], segments[1:]
        interval_ms = INTERVALS_MS[interval]
        now = self.sim.clock.now_ms()
        if rest == ["recent"]:
            include_current = self.sim.config.bittrex_recent_includes_current
            current = now - now % interval_ms
            hi = current if include_current else current - interval_ms
            lo = current - RECENT_SPAN_MS[interval] + interval_ms
        elif rest and rest[0] == "historical":
            period = self._period(interval, rest[1:])
            if isinstance(period, web.Response):
                return period
            lo, end = period
            if end > now - now % MINUTE_MS:
                return error("STARTDATE_OUT_OF_RANGE")
            hi, include_current = end - interval_ms, False
        else:
            return error("NOT_FOUND", status=404)
        market = self.markets.get(request.match_info["symbol"].upper())
        if market is None:
            return error("MARKET_DOES_NOT_EXIST", status=404)
        headers = {"Sequence": str(now // MINUTE_MS)}
        if request.method == "HEAD":
            return web.Response(status=200, headers=headers, content_type="application/json")
        midpoint = candle_type == "MIDPOINT"
        if midpoint:
            lo = max(lo, MIDPOINT_FROM_MS)
        body = await self.sim.compute(
            candles_body, market.symbol, interval_ms, lo, hi, include_current, midpoint
        )
        return json_response(body, headers=headers)

    @staticmethod
    def _period(interval: str, parts: list[str]) -> tuple[int, int] | web.Response:
        """[start, end) of the historical window the date parts name."""
        if len(parts) != DATE_PARTS[interval] or not all(p.isdigit() for p in parts):
            return error("INVALID_DATE")
        numbers = [int(p) for p in parts]
        try:
            start = datetime(*numbers, *[1] * (3 - len(numbers)), tzinfo=UTC)
        except ValueError:
            return error("INVALID_DATE")
        if len(numbers) == 3:
            days = 1
        elif len(numbers) == 2:
            days = calendar.monthrange(start.year, start.month)[1]
        else:
            days = 366 if calendar.isleap(start.year) else 365
        start_ms = datetime_to_ms(start)
        return start_ms, start_ms + days * DAY_MS


def candles_body(
    work: CandleWork, symbol: str, interval_ms: int, lo: int, hi: int, include_current: bool, midpoint: bool
) -> str:
    """The bars of [lo, hi] as Bittrex's JSON list (a compute job)."""
    market = work.market(EXCHANGE, symbol)
    if interval_ms != MINUTE_MS:
        bars = work.history.interval_candles(market, interval_ms, lo, hi, include_current=include_current)
        return dumps([bittrex_candle(bar, midpoint) for bar in bars])
    now = work.history.clock.now_ms()
    current = now - now % MINUTE_MS
    parts = [minute_days(work, midpoint).closed_text(market, lo, min(hi, current - MINUTE_MS))]
    if include_current and lo <= current <= hi:
        in_progress = work.history.minute_candles(market, current, current, now_ms=now)
        parts += [dumps(bittrex_candle(bar, midpoint)) for bar in in_progress]
    return "[" + ",".join(part for part in parts if part) + "]"


def minute_days(work: CandleWork, midpoint: bool) -> EncodedDays:
    """The closed minute bars as served, kept per market and day, for one candle type."""
    key = (EXCHANGE, "minute days", midpoint)
    kept = work.kept.get(key)
    if kept is None:
        days_kept = DAYS_KEPT_PER_MARKET * len(work.markets[EXCHANGE])
        kept = work.kept[key] = EncodedDays(work.history, partial(_encode, midpoint=midpoint), days_kept)
    return kept


def _encode(bar: SimCandle, midpoint: bool) -> str:
    return dumps(bittrex_candle(bar, midpoint))
