"""Binance Spot: `/api/v3/exchangeInfo`, `/api/v3/klines`, and the kline market streams.

Wire promises (docs/exchanges.md, Binance): request weight per IP per window with `X-MBX-USED-WEIGHT-1M`
on every reply, 429 + Retry-After + -1003 over the limit and 418 bans for clients that keep going;
errors `{"code":..,"msg":..}`; klines are 12-field rows, prices and volumes as strings with 8
decimals, one row per minute including quiet ones, the last row the in-progress minute. Streams:
raw `/ws/<stream>` (a path that is no stream name, e.g. `/ws/0`, opens a socket with no streams),
combined `/stream?streams=a/b` (payload wrapped in `{"stream","data"}`), live
SUBSCRIBE / UNSUBSCRIBE / LIST_SUBSCRIPTIONS / SET_PROPERTY / GET_PROPERTY, unknown-but-valid symbols
accepted silently, server ping frames, the 5 messages/s incoming limit (disconnect) and 1024 streams
per connection. Kline data is produced for `<symbol>@kline_1m`; other valid streams stay silent.
Served REST intervals: 1m, 3m, 5m, 15m, 30m, 1h (others answer -1120).
Kline events carry no sequence number: a client learns that it saw a minute whole only from its
closing update (`"x": true`), which `lose_ws_closes` withholds.
"""

from __future__ import annotations

import asyncio
import collections
import json
import re
import time
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from simulator.compute import CandleWork
from simulator.core import MINUTE_MS, MarketCatalog, SimMarket
from simulator.faults import MALFORMED_FRAME
from simulator.http import (
    WsConnection,
    client_ip,
    count_reply,
    damaged_reply,
    drop_connections,
    fault_gate,
    json_response,
    serving_connection,
    spawn,
)
from simulator.limits import CountLimiter, Verdict, WeightLimiter
from simulator.live import CandleEvent, Subscription
from simulator.wire import binance_kline_event, binance_kline_row, dumps

if TYPE_CHECKING:
    from simulator.state import SimState

EXCHANGE = "binance"
WEIGHTS = {"/api/v3/klines": 2, "/api/v3/exchangeInfo": 20, "/api/v3/ping": 1, "/api/v3/time": 1}
INTERVALS = (
    "1s",
    "1m",
    "3m",
    "5m",
    "15m",
    "30m",
    "1h",
    "2h",
    "4h",
    "6h",
    "8h",
    "12h",
    "1d",
    "3d",
    "1w",
    "1M",
)
SERVED_INTERVALS_MINUTES = {"1m": 1, "3m": 3, "5m": 5, "15m": 15, "30m": 30, "1h": 60}
DEFAULT_LIMIT = 500
MAX_LIMIT = 1000

SYMBOL_RE = re.compile(r"^[A-Z0-9\-_.]{1,20}$")
NUMBER_RE = re.compile(r"^[0-9]{1,20}$")
STREAM_RE = re.compile(r"^(![A-Za-z]+@arr(@\d+ms)?|[a-z0-9]{1,20}@[A-Za-z0-9_@:+\-.]+)$")
KLINE_RE = re.compile(r"^([a-z0-9]{1,20})@kline_(" + "|".join(INTERVALS) + r")(@[+-]?\d{1,2}(:\d{2})?)?$")
ID_RE = re.compile(r"^[A-Za-z0-9]{1,36}$")
METHODS = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY", "GET_PROPERTY")


def error(code: int, msg: str, status: int = 400, headers: dict[str, str] | None = None) -> web.Response:
    return json_response(dumps({"code": code, "msg": msg}), status=status, headers=headers)


def illegal(param: str, pattern: str) -> web.Response:
    return error(-1100, f"Illegal characters found in parameter '{param}'; legal range is '{pattern}'.")


def mandatory(param: str) -> web.Response:
    return error(-1102, f"Mandatory parameter '{param}' was not sent, was empty/null, or malformed.")


class BinanceServer:
    port = EXCHANGE
    actions = ("drop_ws", "server_shutdown", "lose_ws_frames", "lose_ws_closes")

    def __init__(self, sim: SimState) -> None:
        self.sim = sim
        cfg = sim.config
        self.weights = WeightLimiter(
            cfg.binance_weight_per_window,
            cfg.rate_window_seconds,
            cfg.binance_ban_seconds,
            cfg.binance_429s_before_ban,
        )
        self.ws_limiter = CountLimiter(
            cfg.binance_ws_connections_per_window, cfg.binance_ws_connections_window_seconds
        )
        self.markets: dict[str, SimMarket] = {m.symbol: m for m in sim.markets[EXCHANGE]}
        self._symbols_text: str | None = None

    def add_routes(self, app: web.Application) -> None:
        app.middlewares.append(self._middleware)
        app.router.add_get("/api/v3/exchangeInfo", self.exchange_info)
        app.router.add_get("/api/v3/klines", self.klines)
        app.router.add_get("/api/v3/ping", self.ping)
        app.router.add_get("/api/v3/time", self.server_time)
        app.router.add_get("/ws", self.ws_raw)
        app.router.add_get("/ws/{streams:.*}", self.ws_raw)
        app.router.add_get("/stream", self.ws_combined)

    # ---------------------------------------------------------------------------- limits

    def window_label(self) -> tuple[str, str]:
        """(`1M`, `1 MINUTE`) for the real 60 s window, (`3S`, `3 SECOND`) for a test window."""
        seconds = self.sim.config.rate_window_seconds
        if seconds == 60:
            return "1M", "1 MINUTE"
        return f"{seconds:g}S", f"{seconds:g} SECOND"

    def _weight_headers(self, ip: str) -> dict[str, str]:
        used = str(self.weights.used(ip))
        headers = {"X-MBX-USED-WEIGHT-1M": used, "x-mbx-used-weight": used}
        label, _ = self.window_label()
        if label != "1M":
            headers[f"X-MBX-USED-WEIGHT-{label}"] = used
        return headers

    def _too_much(self, verdict: Verdict) -> web.Response:
        headers = {"Retry-After": verdict.retry_after_header}
        if verdict.banned:
            until = int((time.time() + verdict.retry_after) * 1000)
            msg = (
                f"Way too much request weight used; IP banned until {until}. Please use WebSocket Streams "
                "for live updates to avoid bans."
            )
            return error(-1003, msg, status=418, headers=headers)
        _, window = self.window_label()
        msg = (
            f"Too much request weight used; current limit is {self.weights.limit} "
            f"request weight per {window}. "
            "Please use WebSocket Streams for live updates to avoid polling the API."
        )
        return error(-1003, msg, status=429, headers=headers)

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith(("/ws", "/stream", "/data/")):  # the archive: simulator/binance_archive.py
            return await handler(request)
        ip = client_ip(request)
        forced = await fault_gate(
            self.sim,
            EXCHANGE,
            storm_reply=lambda: self._too_much(Verdict(False, self.sim.config.rate_window_seconds)),
            error_reply=lambda: error(
                -1001, "Internal error; unable to process your request. Please try again.", status=503
            ),
        )
        served = False
        if forced is not None:
            response: web.StreamResponse = forced
        else:
            verdict = self.weights.hit(ip, WEIGHTS.get(request.path, 1))
            if verdict.allowed:
                served = True
                try:
                    response = await handler(request)
                except web.HTTPException as exc:
                    response = web.Response(status=exc.status, text=exc.text or "", content_type="text/html")
            else:
                stats = self.sim.stats[EXCHANGE]
                stats.over_limit += 1
                if verdict.banned:
                    stats.http_418 += 1
                else:
                    stats.http_429 += 1
                response = self._too_much(verdict)
        for name, value in self._weight_headers(ip).items():
            response.headers[name] = value
        if served:  # after the headers: a reply cut short still carried them
            response = await damaged_reply(self.sim, EXCHANGE, request, response)
        count_reply(self.sim, EXCHANGE, response)
        return response

    # ------------------------------------------------------------------------------ REST

    async def ping(self, request: web.Request) -> web.Response:
        return json_response("{}")

    async def server_time(self, request: web.Request) -> web.Response:
        return json_response(dumps({"serverTime": self.sim.clock.now_ms()}))

    def _rate_limits(self) -> list[dict[str, Any]]:
        seconds = self.sim.config.rate_window_seconds
        if seconds == 60:
            interval, num = "MINUTE", 1
        else:
            interval, num = "SECOND", int(seconds) if float(seconds).is_integer() else seconds
        fixture = MarketCatalog.fixture("binance_exchangeInfo.json")["rateLimits"]
        others = [r for r in fixture if r["rateLimitType"] != "REQUEST_WEIGHT"]
        weight = {
            "rateLimitType": "REQUEST_WEIGHT",
            "interval": interval,
            "intervalNum": num,
            "limit": self.weights.limit,
        }
        return [weight, *others]

    async def exchange_info(self, request: web.Request) -> web.Response:
        query = request.query
        raw = MarketCatalog.raw_entries(EXCHANGE)
        wanted: list[str] | None = None
        if "symbol" in query or "symbols" in query:
            if "symbolStatus" in query:
                return error(-1128, "Combination of optional parameters invalid.")
            if "symbol" in query:
                symbol = query["symbol"]
                if not SYMBOL_RE.match(symbol):
                    return illegal("symbol", "^[A-Z0-9-_.]{1,20}$")
                wanted = [symbol]
            else:
                try:
                    parsed = json.loads(query["symbols"])
                except ValueError:
                    parsed = None
                if (
                    not isinstance(parsed, list)
                    or not parsed
                    or not all(isinstance(s, str) and SYMBOL_RE.match(s) for s in parsed)
                ):
                    return illegal("symbols", '^\\[("[A-Z0-9-_.]{1,20}"(,"[A-Z0-9-_.]{1,20}"){0,}){0,1}\\]$')
                wanted = parsed
            if any(s not in self.markets for s in wanted):
                return error(-1121, "Invalid symbol.")
            symbols_text = dumps([raw[s] for s in wanted])
        elif "symbolStatus" in query:
            status = query["symbolStatus"]
            if status not in ("TRADING", "HALT", "BREAK"):
                return error(-1130, "Data sent for parameter 'symbolStatus' is not valid.")
            symbols_text = dumps([raw[m.symbol] for m in self.markets.values() if m.status == status])
        else:
            if self._symbols_text is None:
                self._symbols_text = dumps([raw[m.symbol] for m in self.sim.markets[EXCHANGE]])
            symbols_text = self._symbols_text
        head = dumps(
            {
                "timezone": "UTC",
                "serverTime": self.sim.clock.now_ms(),
                "rateLimits": self._rate_limits(),
                "exchangeFilters": [],
            }
        )
        return json_response(head[:-1] + ',"symbols":' + symbols_text + "}")

    async def klines(self, request: web.Request) -> web.Response:
        query = request.query
        symbol = query.get("symbol", "")
        if not symbol:
            return mandatory("symbol")
        if not SYMBOL_RE.match(symbol):
            return illegal("symbol", "^[A-Z0-9-_.]{1,20}$")
        interval = query.get("interval", "")
        if not interval:
            return mandatory("interval")
        numbers: dict[str, int | None] = {}
        for name in ("startTime", "endTime", "limit"):
            raw = query.get(name)
            if raw is None:
                numbers[name] = None
            elif not NUMBER_RE.match(raw):
                return illegal(name, "^[0-9]{1,20}$")
            else:
                numbers[name] = int(raw)
        market = self.markets.get(symbol)
        if market is None:
            return error(-1121, "Invalid symbol.")
        if interval not in SERVED_INTERVALS_MINUTES:
            return error(-1120, "Invalid interval.")
        limit = DEFAULT_LIMIT if numbers["limit"] is None else numbers["limit"]
        if not 1 <= limit <= MAX_LIMIT:
            return error(-1130, "Data sent for parameter 'limit' is not valid.")
        start, end = numbers["startTime"], numbers["endTime"]
        if start is not None and end is not None and start > end:
            return error(-1023, "Start time is greater than end time.")
        interval_ms = SERVED_INTERVALS_MINUTES[interval] * MINUTE_MS
        self.sim.stats.served.klines.append({"symbol": symbol, "start": start, "end": end})
        return json_response(
            await self.sim.compute(klines_body, market.symbol, interval_ms, start, end, limit)
        )

    # ------------------------------------------------------------------------- websocket

    async def ws_raw(self, request: web.Request) -> web.StreamResponse:
        """`/ws/<stream>`; a path that is not a stream name (`/ws/0`, a client's own id) opens a socket
        with no streams, as on Binance, where clients then send SUBSCRIBE."""
        path = request.match_info.get("streams", "")
        streams = [s for s in path.split("/") if s]
        if not all(STREAM_RE.match(s) for s in streams):
            streams = []
        return await self._websocket(request, streams, combined=False)

    async def ws_combined(self, request: web.Request) -> web.StreamResponse:
        streams = request.query.get("streams", "")
        return await self._websocket(request, [s for s in streams.split("/") if s], combined=True)

    async def _websocket(
        self, request: web.Request, streams: list[str], combined: bool
    ) -> web.StreamResponse:
        stats = self.sim.stats[EXCHANGE]
        if not self.ws_limiter.hit(client_ip(request)).allowed:
            stats.ws_connections_refused += 1
            stats.over_limit += 1
            return error(-1003, "Too many connection attempts.", status=429, headers={"Retry-After": "60"})
        if len(streams) > self.sim.config.binance_streams_per_connection:
            stats.over_limit += 1
            return error(-1130, "Too many streams requested.", status=400)
        if any(not STREAM_RE.match(s) for s in streams):
            return error(-1100, "Invalid stream name.", status=400)
        ws = web.WebSocketResponse(autoping=False, max_msg_size=1 << 20, compress=False)
        transport = request.transport
        await ws.prepare(request)
        conn = BinanceConnection(self, ws, transport, combined)
        async with serving_connection(self.sim, EXCHANGE, conn):
            for stream in streams:
                conn.add_stream(stream)
            await conn.serve()
        return ws

    async def action(self, name: str, args: dict[str, Any]) -> None:
        if name == "drop_ws":
            drop_connections(self.sim, EXCHANGE)
        elif name == "server_shutdown":
            for conn in self.sim.stats.connections.of(EXCHANGE):
                conn.server_shutdown()
        elif name in ("lose_ws_frames", "lose_ws_closes"):
            self.sim.faults.lose(EXCHANGE, name, args[name])
        else:
            raise ValueError(f"binance has no action {name!r}")


class BinanceConnection(WsConnection):
    """One market-stream socket: its streams, its `combined` property, pings and the message limit."""

    def __init__(
        self, server: BinanceServer, ws: web.WebSocketResponse, transport: Any, combined: bool
    ) -> None:
        super().__init__(server.sim, EXCHANGE, ws, transport)
        self.server = server
        self.combined = combined
        self.streams: dict[str, Subscription | None] = {}
        self.incoming: collections.deque[float] = collections.deque()
        self.unanswered_since: float | None = None
        """When the oldest ping still without a pong went out (None: every ping was answered)."""
        self.opened = time.monotonic()

    def server_shutdown(self) -> None:
        event = {"e": "serverShutdown", "E": self.sim.clock.now_ms()}
        self.writer.send(dumps({"stream": "!serverShutdown", "data": event} if self.combined else event))
        spawn(self.writer.close(code=1001, message=b""))

    def add_stream(self, stream: str) -> None:
        if stream in self.streams:
            return
        subscription = None
        match = KLINE_RE.match(stream)
        if match and match.group(2) == "1m" and match.group(3) is None:
            market = self.server.markets.get(match.group(1).upper())
            if market is not None:
                subscription = self.sim.feed.subscribe(
                    EXCHANGE, market.symbol, lambda e, s=stream: self._on_event(s, e)
                )
        self.streams[stream] = subscription

    def remove_stream(self, stream: str) -> None:
        if stream in self.streams:
            subscription = self.streams.pop(stream)
            if subscription is not None:
                subscription.close()

    async def serve(self) -> None:
        self.writer.start()
        self._tasks.append(asyncio.get_running_loop().create_task(self._pinger()))
        stats = self.sim.stats[EXCHANGE]
        async for msg in self.ws:
            stats.ws_frames_received += 1
            if not self._count_incoming():
                stats.ws_closed_for_violation += 1
                stats.over_limit += 1
                await self.writer.close(code=1008, message=b"Too many requests")
                break
            if msg.type == WSMsgType.TEXT:
                self._handle(msg.data)
            elif msg.type == WSMsgType.PING:
                await self.ws.pong(msg.data)
            elif msg.type == WSMsgType.PONG:
                self.unanswered_since = None
            elif msg.type == WSMsgType.ERROR:
                break

    async def cleanup(self) -> None:
        for stream in list(self.streams):
            self.remove_stream(stream)
        await super().cleanup()

    def _count_incoming(self) -> bool:
        now = time.monotonic()
        self.incoming.append(now)
        while self.incoming and now - self.incoming[0] > 1.0:
            self.incoming.popleft()
        return len(self.incoming) <= self.sim.config.binance_incoming_messages_per_second

    async def _pinger(self) -> None:
        cfg = self.sim.config
        while not self.ws.closed:
            await asyncio.sleep(cfg.binance_ping_seconds)
            now = time.monotonic()
            if now - self.opened >= cfg.binance_max_connection_seconds:
                await self.ws.close(code=1000, message=b"lifetime")
                return
            if self.sim.faults[EXCHANGE].ws_stall:
                continue
            waited = now - self.unanswered_since if self.unanswered_since is not None else 0.0
            if waited > cfg.binance_pong_timeout_seconds:
                self.sim.stats[EXCHANGE].ws_closed_for_violation += 1
                await self.ws.close(code=1008, message=b"pong timeout")
                return
            try:
                await self.ws.ping(str(self.sim.clock.now_ms()).encode())
            except (ConnectionError, RuntimeError):
                return
            if self.unanswered_since is None:
                self.unanswered_since = now

    # ---- control messages

    def _reply(self, request_id: Any, result: Any = None) -> None:
        self.writer.send(dumps({"result": result, "id": request_id}))

    def _error(self, request_id: Any, code: int, msg: str) -> None:
        self.sim.stats[EXCHANGE].ws_subscribe_errors += 1
        self.writer.send(dumps({"error": {"code": code, "msg": msg}, "id": request_id}))

    def _handle(self, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError as exc:
            line, col = getattr(exc, "lineno", 1), getattr(exc, "colno", 1)
            self._error(None, 3, f"Invalid JSON: expected value at line {line} column {col}")
            return
        if not isinstance(message, dict):
            self._error(None, 2, "Invalid request: expected an object")
            return
        request_id = message.get("id")
        if not (
            request_id is None
            or (isinstance(request_id, int) and not isinstance(request_id, bool) and request_id >= 0)
            or (isinstance(request_id, str) and ID_RE.match(request_id))
        ):
            self._error(None, 2, "Invalid request: request ID must be an unsigned integer")
            return
        method = message.get("method")
        if method is None:
            self._error(request_id, 2, "Invalid request: missing field `method`")
            return
        if method not in METHODS:
            options = ", ".join(f"`{m}`" for m in METHODS)
            self._error(
                request_id, 2, f"Invalid request: unknown variant `{method}`, expected one of {options}"
            )
            return
        params = message.get("params", [])
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            if not isinstance(params, list) or not all(
                isinstance(p, str) and STREAM_RE.match(p) for p in params
            ):
                self._error(request_id, 2, "Invalid request: invalid stream")
                return
            if method == "SUBSCRIBE":
                new = [p for p in dict.fromkeys(params) if p not in self.streams]
                if len(self.streams) + len(new) > self.sim.config.binance_streams_per_connection:
                    self.sim.stats[EXCHANGE].over_limit += 1
                    self._error(request_id, 2, "Invalid request: too many streams")
                    return
                for stream in new:
                    self.add_stream(stream)
            else:
                for stream in params:
                    self.remove_stream(stream)
            self._reply(request_id)
        elif method == "LIST_SUBSCRIPTIONS":
            self._reply(request_id, list(self.streams))
        elif method == "SET_PROPERTY":
            if not isinstance(params, list) or len(params) != 2 or params[0] != "combined":
                self._error(request_id, 0, "Unknown property")
                return
            if not isinstance(params[1], bool):
                self._error(request_id, 1, "Invalid value type: expected Boolean")
                return
            self.combined = params[1]
            self._reply(request_id)
        else:
            if not isinstance(params, list) or len(params) != 1 or params[0] != "combined":
                self._error(request_id, 0, "Unknown property")
                return
            self._reply(request_id, self.combined)

    # ---- live data

    def _on_event(self, stream: str, event: CandleEvent) -> None:
        if event.kind == "open":
            return
        if event.kind == "update" and (not event.changed or event.candle.trades == 0):
            return
        faults = self.sim.faults[EXCHANGE]
        if event.missed:
            self.sim.stats[EXCHANGE].ws_frames_withheld += 1
            self.sim.faults.withheld.add(EXCHANGE, event.market.symbol, event.minute_ms, True)
            return
        if faults.ws_stall or (event.final and faults.lose_close()) or faults.lose_frame():
            self.sim.stats[EXCHANGE].ws_frames_withheld += 1
            self.sim.faults.withheld.add(EXCHANGE, event.market.symbol, event.minute_ms, event.final)
            return
        payload = binance_kline_event(event.market.symbol, event.candle, event.final, event.sim_ms)
        text = dumps({"stream": stream, "data": payload} if self.combined else payload)
        if faults.malformed():
            self.sim.faults.withheld.add(EXCHANGE, event.market.symbol, event.minute_ms, event.final)
            text = MALFORMED_FRAME
        self.writer.send(text)


def klines_body(
    work: CandleWork, symbol: str, interval_ms: int, start: int | None, end: int | None, limit: int
) -> str:
    """The klines asked for as Binance's JSON list (a compute job): the oldest `limit` from
    `start`, else the newest up to `end` (now by default)."""
    market, history = work.market(EXCHANGE, symbol), work.history
    if start is not None:
        bars = history.oldest(market, interval_ms, start, limit, hi_ms=end)
    else:
        bars = history.newest(market, interval_ms, end if end is not None else history.clock.now_ms(), limit)
    return dumps([binance_kline_row(bar, interval_ms) for bar in bars])
