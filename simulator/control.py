"""The control port: ground truth, counters and faults, as JSON, for tests and benchmarks.

- `GET  /control/clock` -> `{now_ms, speed, start_ms, first_ms, current_minute_ms, updates_per_minute}`
- `GET  /control/markets?exchange=` -> the listed markets (all exchanges when `exchange` is absent)
- `GET  /control/candles?exchange=&symbol=&start=&end=` -> final candles with open time in
  [start, end] (ms or ISO-8601; end inclusive, clipped to the last closed minute), exchange-neutral:
  `{"time": ms, "open": "..", "high", "low", "close", "volume", "quote_volume", "trades": n}`.
  Bitfinex lists only minutes with trades (what its API serves); the others list every minute.
  `symbol` is the exchange's listing symbol; `tBTCUSD` and lower-case Binance names are accepted.
- `GET  /control/stats` -> per-exchange counters (`over_limit` = 429/418 a client earned);
  `POST /control/stats/reset`
- `GET  /control/faults`; `POST /control/faults {"exchange": "binance"|"all", <fault fields>, <actions>}`;
  `POST /control/faults/reset {"exchange": ...}` (body optional). Fields and actions: simulator/faults.py.
- `GET  /control/dropped?exchange=` -> `{"exchange": "binance", "dropped": {"BTCUSDT": [minute_ms, ...]}}`:
  per market (listing symbol), the minutes (open time, ascending) whose candle updates a fault
  (`ws_stall`, `ws_malformed_rate`, `lose_ws_frames`, `lose_ws_closes`) withheld or mangled on some
  socket since the simulator started; what a client may not claim as seen whole. `"closes"`, in the
  same shape, lists the minutes whose closing update was withheld (Binance `x`: the client that got
  the close got the whole bar). Frames lost with a socket `drop_ws` aborted are not listed (the
  client knows). See `Withheld` in simulator/faults.py.
- `GET  /control/served` -> `{"archive": [{"path", "status", "fault"}, ...], "klines": [{"symbol",
  "start", "end"}, ...]}`: every Binance archive file request and every Binance klines request since
  the start (or `stats/reset`), in order (see `Served` in simulator/stats.py).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from common.exchanges import EXCHANGES
from common.timeutil import datetime_to_ms, parse_utc
from simulator.compute import CandleWork
from simulator.core import MINUTE_MS, SimMarket
from simulator.faults import FaultError, requested_actions
from simulator.http import json_response
from simulator.wire import dumps

if TYPE_CHECKING:
    from simulator.state import ControlledState

MAX_TRUTH_MINUTES = 100_000


def _json(value: Any, status: int = 200) -> web.Response:
    return json_response(dumps(value), status)


def _bad(message: str, status: int = 400) -> web.Response:
    return _json({"error": message}, status)


def parse_time_ms(text: str) -> int:
    """Epoch ms (digits) or ISO-8601 (no zone = UTC)."""
    stripped = text.strip()
    if stripped.lstrip("-").isdigit():
        return int(stripped)
    return datetime_to_ms(parse_utc(stripped))


def market_json(market: SimMarket) -> dict[str, Any]:
    return {
        "exchange": market.exchange,
        "symbol": market.symbol,
        "base": market.base,
        "quote": market.quote,
        "status": market.status,
        "trade_probability": market.trade_probability,
        "price_decimals": market.price_decimals,
        "volume_decimals": market.volume_decimals,
    }


class ControlServer:
    port = "control"
    actions: tuple[str, ...] = ()

    def __init__(self, sim: ControlledState) -> None:
        self.sim = sim

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/control/clock", self.clock)
        app.router.add_get("/control/markets", self.markets)
        app.router.add_get("/control/candles", self.candles)
        app.router.add_get("/control/stats", self.stats)
        app.router.add_post("/control/stats/reset", self.stats_reset)
        app.router.add_get("/control/faults", self.faults)
        app.router.add_post("/control/faults", self.set_faults)
        app.router.add_post("/control/faults/reset", self.reset_faults)
        app.router.add_get("/control/dropped", self.dropped)
        app.router.add_get("/control/served", self.served)

    async def action(self, name: str, args: dict[str, Any]) -> None:
        raise ValueError(f"the control port has no action {name!r}")

    async def clock(self, request: web.Request) -> web.Response:
        clock = self.sim.clock
        return _json(
            {
                "now_ms": clock.now_ms(),
                "speed": clock.speed,
                "start_ms": clock.start_ms,
                "first_ms": self.sim.history.first_ms,
                "current_minute_ms": clock.current_minute_ms(),
                "updates_per_minute": self.sim.feed.updates_per_minute,
            }
        )

    async def markets(self, request: web.Request) -> web.Response:
        exchange = request.query.get("exchange")
        if exchange is not None and exchange not in EXCHANGES:
            return _bad(f"unknown exchange {exchange!r}")
        chosen = [exchange] if exchange else list(EXCHANGES)
        return _json([market_json(m) for ex in chosen for m in self.sim.markets[ex]])

    def _find_market(self, exchange: str, symbol: str) -> SimMarket | None:
        candidates = [symbol]
        if exchange == "bitfinex" and symbol.startswith("t"):
            candidates.append(symbol[1:])
        if exchange in ("binance", "bittrex"):
            candidates.append(symbol.upper())
        for candidate in candidates:
            market = self.sim.feed.market(exchange, candidate)
            if market is not None:
                return market
        return None

    async def candles(self, request: web.Request) -> web.Response:
        query = request.query
        exchange = query.get("exchange", "")
        if exchange not in EXCHANGES:
            return _bad("exchange must be one of " + ", ".join(EXCHANGES))
        market = self._find_market(exchange, query.get("symbol", ""))
        if market is None:
            return _bad(f"{exchange} does not list {query.get('symbol')!r}", status=404)
        history = self.sim.history
        try:
            start = parse_time_ms(query["start"]) if "start" in query else history.first_ms
            end = parse_time_ms(query["end"]) if "end" in query else history.last_closed_minute()
        except ValueError as exc:
            return _bad(str(exc))
        end = min(end, history.last_closed_minute())
        if (end - start) // MINUTE_MS > MAX_TRUTH_MINUTES:
            return _bad(f"at most {MAX_TRUTH_MINUTES} minutes per request")
        rows = await self.sim.compute(truth_rows, exchange, market.symbol, start, end)
        return _json({"exchange": exchange, "symbol": market.symbol, "candles": rows})

    async def stats(self, request: web.Request) -> web.Response:
        data = self.sim.stats.as_dict()
        data["feed"] = {
            "events_delivered": self.sim.feed.events_delivered,
            "subscriptions": self.sim.feed.subscriber_count(),
        }
        return _json(data)

    async def stats_reset(self, request: web.Request) -> web.Response:
        self.sim.stats.reset()
        return _json({"ok": True})

    async def faults(self, request: web.Request) -> web.Response:
        return _json(self.sim.faults.as_dict())

    async def _body(self, request: web.Request) -> dict[str, Any]:
        text = await request.text()
        if not text.strip():
            return {}
        value = json.loads(text)
        if not isinstance(value, dict):
            raise ValueError("body must be a JSON object")
        return value

    def _exchanges(self, body: dict[str, Any]) -> list[str]:
        exchange = body.get("exchange", "all")
        if exchange == "all":
            return list(EXCHANGES)
        if exchange not in EXCHANGES:
            raise ValueError(f"unknown exchange {exchange!r}")
        return [exchange]

    async def set_faults(self, request: web.Request) -> web.Response:
        try:
            body = await self._body(request)
            exchanges = self._exchanges(body)
            for exchange in exchanges:
                self.sim.faults.apply(exchange, body)
            for action in requested_actions(body):
                targets = [e for e in exchanges if self.sim.supports_action(e, action)]
                if len(exchanges) == 1 and not targets:
                    raise ValueError(f"{exchanges[0]} has no action {action!r}")
                for exchange in targets:
                    await self.sim.fault_action(exchange, action, body)
        except (ValueError, FaultError, KeyError) as exc:
            return _bad(str(exc))
        return _json(self.sim.faults.as_dict())

    async def reset_faults(self, request: web.Request) -> web.Response:
        try:
            body = await self._body(request)
            exchanges = self._exchanges(body)
        except ValueError as exc:
            return _bad(str(exc))
        for exchange in exchanges:
            self.sim.faults.reset(exchange)
        return _json(self.sim.faults.as_dict())

    async def served(self, request: web.Request) -> web.Response:
        served = self.sim.stats.served
        return _json({"archive": served.archive, "klines": served.klines})

    async def dropped(self, request: web.Request) -> web.Response:
        exchange = request.query.get("exchange", "")
        if exchange not in EXCHANGES:
            return _bad("exchange must be one of " + ", ".join(EXCHANGES))
        withheld = self.sim.faults.withheld
        return _json(
            {"exchange": exchange, "dropped": withheld.of(exchange), "closes": withheld.closes_of(exchange)}
        )


def truth_rows(work: CandleWork, exchange: str, symbol: str, start: int, end: int) -> list[dict[str, Any]]:
    """The final minute bars of [start, end] as the control port serves them (a compute job);
    Bitfinex's only where somebody traded, as its REST has them."""
    bars = work.history.interval_candles(
        work.market(exchange, symbol),
        MINUTE_MS,
        start,
        end,
        traded_only=exchange == "bitfinex",
        include_current=False,
    )
    return [
        {
            "time": c.time_ms,
            "open": format(c.open, "f"),
            "high": format(c.high, "f"),
            "low": format(c.low, "f"),
            "close": format(c.close, "f"),
            "volume": format(c.volume, "f"),
            "quote_volume": format(c.quote_volume, "f"),
            "trades": c.trades,
        }
        for c in bars
    ]
