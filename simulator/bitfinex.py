"""Bitfinex API v2 (public): conf lists, candles REST, and the `/ws/2` candles channel.

Wire promises (docs/exchanges.md, Bitfinex): errors are `["error",code,"msg"]` arrays (HTTP 500 for
bad parameters, 429 + 11010 for the rate limit, after which the IP is blocked); candles are
`[MTS,OPEN,CLOSE,HIGH,LOW,VOLUME]` with JSON numbers written from Decimal text; minutes without
trades have no candle; `sort` defaults to -1 (newest first); the in-progress minute is included.
Conf keys (joinable with commas): the pair and currency lists, `pub:map:currency:sym`,
`pub:info:pair` (one row per listed pair), `pub:list:pair:margin` (a plausible subset, see
`MARGIN_BASES`), and empty lists for `pub:info:pair:futures` / `pub:list:pair:securities` /
`pub:list:pair:futures` (the simulator lists spot pairs only); other keys answer `null`.
The websocket sends the info event first, `subscribed` (every field of the request echoed, plus
`chanId`) with a random-looking chanId, a snapshot (newest first) then flat updates, `[chanId,"hb"]`
after `bitfinex_heartbeat_seconds` without data, and honours ping, conf (SEQ_ALL, TIMESTAMP) and
unsubscribe; error events echo the request's fields too. Served timeframes: 1m, 5m, 15m, 30m, 1h
over REST, 1m over the websocket; the others answer 10020 / 10300.
SEQ_ALL numbers every array frame the socket would have sent, heartbeats and frames withheld by
`ws_stall` or `lose_ws_frames` included, so a client checking them sees every loss as a gap.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import ROUND_UP, Decimal
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from common.timeutil import floor_minute_ms
from simulator.compute import CandleWork
from simulator.core import MINUTE_MS, MarketCatalog, SimMarket, usd_price
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
from simulator.limits import CountLimiter, Verdict
from simulator.live import CandleEvent, Subscription
from simulator.wire import bitfinex_candle, bitfinex_candles, dumps

if TYPE_CHECKING:
    from simulator.state import SimState

EXCHANGE = "bitfinex"
SERVED_REST_TIMEFRAMES_MINUTES: dict[str, int] = {"1m": 1, "5m": 5, "15m": 15, "30m": 30, "1h": 60}
DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000

FLAG_TIMESTAMP = 32_768
FLAG_SEQ_ALL = 65_536

CURRENCY_SYMBOLS: dict[str, str] = {
    "UST": "USDt",
    "UDC": "USDC",
    "MNA": "MANA",
    "WBT": "WBTC",
    "XAUT": "XAUt",
    "TESTBTC": "BTC",
    "TESTUSD": "USD",
    "TESTUSDT": "USDt",
    "BCHN": "BCH",
    "DSH": "DASH",
    "IOT": "IOTA",
    "QTM": "QTUM",
    "DAT": "DATA",
    "QSH": "QASH",
    "YYW": "YOYOW",
    "ATO": "ATOM",
    "ALG": "ALGO",
    "DOG": "MDOGE",
}
"""`pub:map:currency:sym`: API code -> display symbol, only where they differ."""

INFO_MESSAGES: dict[int, str] = {
    20051: "Stopping. Please try to reconnect",
    20060: "Entering in Maintenance mode. Please pause any activity and resume after receiving the "
    "info message 20061 (it should take 120 seconds at most).",
    20061: "Maintenance ended. You can resume normal activity. It is advised to unsubscribe/subscribe "
    "again all channels.",
}


MARGIN_BASES = frozenset(
    {"BTC", "ETH", "LTC", "XRP", "EOS", "ETC", "XMR", "DSH", "ZEC", "IOT", "NEO", "XLM", "TRX", "LINK"}
    | {"DOT", "ADA", "SOL", "UNI", "AVAX", "DOGE", "XTZ", "XAUT", "BCHN", "FIL", "LEO", "EUR", "GBP", "JPY"}
)
MARGIN_QUOTES = frozenset({"USD", "UST", "BTC", "EUR", "JPY", "GBP"})
"""`pub:list:pair:margin`: the simulator's rule for a plausible subset of the exchange pairs (majors
against fiat, Tether and BTC, as on the real list); no test or client depends on which ones."""

MIN_ORDER_USD = Decimal(5)
MAX_ORDER_USD = Decimal(50_000_000)


def error_body(code: int, message: str) -> str:
    return dumps(["error", code, message])


def is_margin_pair(market: SimMarket) -> bool:
    return market.base in MARGIN_BASES and market.quote in MARGIN_QUOTES


def pair_info(market: SimMarket, seed: int, margin: bool) -> list[Any]:
    """One `pub:info:pair` row body: `[null,null,null,minOrderSize,maxOrderSize,null,null,null,
    initialMargin,minMargin]`, sizes as decimal strings worth about $5 and $50M of the base currency
    (margins only for margin pairs)."""
    price = usd_price(market.base, seed)
    low = _one_significant(MIN_ORDER_USD / price)
    high = _one_significant(MAX_ORDER_USD / price)
    margins = [0.2, 0.1] if margin else [None, None]
    return [None, None, None, f"{low:f}", f"{high:f}", None, None, None, *margins]


def _one_significant(value: Decimal) -> Decimal:
    return value.quantize(Decimal(1).scaleb(value.adjusted()), rounding=ROUND_UP).normalize()


class BitfinexServer:
    port = EXCHANGE
    actions = ("drop_ws", "ws_info", "lose_ws_frames")

    def __init__(self, sim: SimState) -> None:
        self.sim = sim
        cfg = sim.config
        self.limiter = CountLimiter(
            cfg.bitfinex_candle_requests_per_window, cfg.rate_window_seconds, cfg.bitfinex_block_seconds
        )
        self.ws_limiter = CountLimiter(
            cfg.bitfinex_ws_connections_per_window, cfg.ws_connections_window_seconds
        )
        self.markets: dict[str, SimMarket] = {m.symbol: m for m in sim.markets[EXCHANGE]}
        self.maintenance_until = 0.0
        self._rng = random.Random(f"{cfg.seed}|bitfinex-chanids")
        self.margin_pairs = frozenset(m.symbol for m in sim.markets[EXCHANGE] if is_margin_pair(m))
        self._info_pairs: str | None = None

    # ------------------------------------------------------------------------------------ app

    def add_routes(self, app: web.Application) -> None:
        app.middlewares.append(self._middleware)
        app.router.add_get("/v2/conf/{keys}", self.conf)
        app.router.add_get("/v2/candles/{key}/{section}", self.candles)
        app.router.add_get("/v2/platform/status", self.platform_status)
        app.router.add_get("/ws/2", self.websocket)

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith("/ws/"):
            return await handler(request)
        forced = await fault_gate(
            self.sim,
            EXCHANGE,
            storm_reply=lambda: json_response(error_body(11010, "ratelimit: error"), status=429),
            error_reply=lambda: json_response(error_body(10000, "unknown error"), status=500),
        )
        if forced is not None:
            response = forced
        else:
            response = await damaged_reply(self.sim, EXCHANGE, request, await self._limited(request, handler))
        count_reply(self.sim, EXCHANGE, response)
        return response

    async def _limited(self, request: web.Request, handler: Any) -> web.StreamResponse:
        cfg = self.sim.config
        verdict: Verdict | None
        if request.path.startswith("/v2/candles/"):
            verdict = self.limiter.hit(client_ip(request), "candles")
        elif request.path.startswith("/v2/conf/"):
            verdict = self.limiter.hit(client_ip(request), "conf", cfg.bitfinex_conf_requests_per_window)
        else:
            verdict = self.limiter.blocked(client_ip(request))
        if verdict is not None and not verdict.allowed:
            stats = self.sim.stats[EXCHANGE]
            stats.over_limit += 1
            stats.http_429 += 1
            return json_response(error_body(11010, "ratelimit: error"), status=429)
        try:
            return await handler(request)
        except web.HTTPNotFound:
            return json_response(error_body(10020, "request: invalid"), status=404)

    # ----------------------------------------------------------------------------------- REST

    async def platform_status(self, request: web.Request) -> web.Response:
        return json_response("[0]" if self.in_maintenance() else "[1]")

    async def conf(self, request: web.Request) -> web.Response:
        sections = []
        for key in request.match_info["keys"].split(","):
            if key == "pub:list:pair:exchange":
                sections.append(dumps([m.symbol for m in self.sim.markets[EXCHANGE]]))
            elif key == "pub:info:pair":
                sections.append(self._info_pairs_text())
            elif key in ("pub:info:pair:futures", "pub:list:pair:securities", "pub:list:pair:futures"):
                sections.append("[]")
            elif key == "pub:list:pair:margin":
                sections.append(dumps(sorted(self.margin_pairs)))
            elif key == "pub:list:currency":
                sections.append(dumps(self.currencies()))
            elif key == "pub:map:currency:sym":
                listed = set(self.currencies())
                sections.append(
                    dumps([[code, sym] for code, sym in CURRENCY_SYMBOLS.items() if code in listed])
                )
            else:
                sections.append("null")
        return json_response("[" + ",".join(sections) + "]")

    def _info_pairs_text(self) -> str:
        if self._info_pairs is None:
            rows = [
                [m.symbol, pair_info(m, self.sim.config.seed, m.symbol in self.margin_pairs)]
                for m in self.sim.markets[EXCHANGE]
            ]
            self._info_pairs = dumps(rows)
        return self._info_pairs

    def currencies(self) -> list[str]:
        listed = MarketCatalog.fixture("bitfinex_conf_pub_list_currency.json")[0]
        if self.sim.config.markets is None:
            return list(listed)
        used = {c for m in self.sim.markets[EXCHANGE] for c in (m.base, m.quote)}
        return [c for c in listed if c in used]

    async def candles(self, request: web.Request) -> web.Response:
        key, section = request.match_info["key"], request.match_info["section"]
        parts = key.split(":", 2)
        if len(parts) != 3 or parts[0] != "trade":
            return json_response(error_body(10020, "key: invalid"), status=500)
        timeframe, symbol = parts[1], parts[2]
        if timeframe not in SERVED_REST_TIMEFRAMES_MINUTES:
            return json_response(error_body(10020, "time_interval: invalid"), status=500)
        if section not in ("hist", "last"):
            return json_response(error_body(10020, "section: invalid"), status=500)
        query = request.query
        params: dict[str, int | None] = {}
        for name in ("limit", "start", "end", "sort"):
            raw = query.get(name)
            if raw is None or raw == "":
                params[name] = None
                continue
            try:
                params[name] = int(raw)
            except ValueError:
                return json_response(error_body(10020, f"{name}: invalid"), status=500)
        limit = DEFAULT_LIMIT if params["limit"] is None else params["limit"]
        if not 1 <= limit <= MAX_LIMIT:
            return json_response(error_body(10020, "limit: invalid"), status=500)
        market = self.markets.get(symbol[1:]) if symbol.startswith("t") else None
        if market is None:
            return json_response("[]")
        interval = SERVED_REST_TIMEFRAMES_MINUTES[timeframe] * MINUTE_MS
        start, end = params["start"], params["end"]
        ascending = params["sort"] == 1
        end_ms = end if end is not None else self.sim.clock.now_ms()
        args = (market.symbol, section, interval, start, end_ms, limit, ascending)
        return json_response(await self.sim.compute(candles_body, *args))

    # ------------------------------------------------------------------------------ websocket

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        stats = self.sim.stats[EXCHANGE]
        verdict = self.ws_limiter.hit(client_ip(request))
        if not verdict.allowed:
            stats.ws_connections_refused += 1
            stats.over_limit += 1
            return json_response(error_body(11010, "ratelimit: error"), status=429)
        ws = web.WebSocketResponse(autoping=True, max_msg_size=1 << 20, compress=False)
        transport = request.transport
        await ws.prepare(request)
        conn = BitfinexConnection(self, ws, transport)
        async with serving_connection(self.sim, EXCHANGE, conn):
            await conn.serve()
        return ws

    def new_chan_id(self, taken: set[int]) -> int:
        while True:
            chan_id = self._rng.randrange(10_000, 999_999)
            if chan_id not in taken:
                return chan_id

    def in_maintenance(self) -> bool:
        return self.maintenance_until > time.time()

    # ----------------------------------------------------------------------------- fault actions

    async def action(self, name: str, args: dict[str, Any]) -> None:
        if name == "drop_ws":
            drop_connections(self.sim, EXCHANGE)
            return
        if name == "lose_ws_frames":
            self.sim.faults.lose(EXCHANGE, name, args[name])
            return
        conns = self.sim.stats.connections.of(EXCHANGE)
        if name == "ws_info":
            code = int(args["ws_info"])
            if code not in INFO_MESSAGES:
                raise ValueError(f"ws_info must be one of {sorted(INFO_MESSAGES)}")
            if code == 20060:
                seconds = float(args.get("maintenance_seconds", self.sim.config.maintenance_seconds))
                self.maintenance_until = time.time() + seconds
                asyncio.get_running_loop().call_later(seconds, self._end_maintenance)
            elif code == 20061:
                self.maintenance_until = 0.0
            for conn in conns:
                conn.send_event({"event": "info", "code": code, "msg": INFO_MESSAGES[code]})
                if code == 20051:
                    spawn(conn.close_soon())
        else:
            raise ValueError(f"bitfinex has no action {name!r}")

    def _end_maintenance(self) -> None:
        if self.maintenance_until and self.maintenance_until <= time.time() + 0.01:
            self.maintenance_until = 0.0
            for conn in self.sim.stats.connections.of(EXCHANGE):
                conn.send_event({"event": "info", "code": 20061, "msg": INFO_MESSAGES[20061]})


@dataclass
class Channel:
    chan_id: int
    key: str
    market: SimMarket
    subscription: Subscription | None = None
    opened_ms: int = 0
    """Where the server's stream stood when the channel was subscribed (`LiveFeed.stamp_ms`, which
    may trail the clock): the snapshot is the history as of then, never ahead of the stream."""
    last_sent: float = field(default_factory=time.monotonic)
    pending: list[CandleEvent] | None = field(default_factory=list)

    @property
    def since_ms(self) -> int:
        """The minute in progress at `opened_ms`: its client can claim none before."""
        return floor_minute_ms(self.opened_ms)


class BitfinexConnection(WsConnection):
    """One `/ws/2` socket: its channels, flags and per-socket sequence number."""

    def __init__(self, server: BitfinexServer, ws: web.WebSocketResponse, transport: Any) -> None:
        super().__init__(server.sim, EXCHANGE, ws, transport)
        self.server = server
        self.channels: dict[int, Channel] = {}
        self.by_key: dict[str, int] = {}
        self.flags = 0
        self.seq = 0

    async def close_soon(self) -> None:
        await self.writer.close(code=1001, message=b"restart")

    async def serve(self) -> None:
        self.writer.start()
        self._tasks.append(asyncio.get_running_loop().create_task(self._heartbeats()))
        status = 0 if self.server.in_maintenance() else 1
        self.send_event(
            {"event": "info", "version": 2, "serverId": str(uuid.uuid4()), "platform": {"status": status}}
        )
        stats = self.sim.stats[EXCHANGE]
        async for msg in self.ws:
            if msg.type == WSMsgType.TEXT:
                stats.ws_frames_received += 1
                await self._handle(msg.data)
            elif msg.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                break

    async def cleanup(self) -> None:
        for channel in self.channels.values():
            if channel.subscription is not None:
                channel.subscription.close()
        self.channels.clear()
        await super().cleanup()

    # ---- sending

    def send_event(self, event: dict[str, Any]) -> None:
        self.writer.send(dumps(event))

    def send_channel(
        self, channel: Channel, payload: str, bar_times: Sequence[int] | None = None, lost: bool = False
    ) -> None:
        """Send one array frame: candle data (`payload`, carrying the bars of `bar_times`) or, with
        None, a heartbeat. A frame a fault withholds (`ws_stall`, `lose_ws_frames`), the feed could not
        send in time (`lost`) or mangles still takes its SEQ_ALL number, as on a lossy path, so the
        client sees the gap; and it counts as sent for the channel's heartbeat timer, so a stall
        withholds one heartbeat per period, not one per timer tick."""
        faults = self.sim.faults[EXCHANGE]
        self.seq += 1
        channel.last_sent = time.monotonic()
        if lost or faults.ws_stall or (bar_times is not None and faults.lose_frame()):
            self.sim.stats[EXCHANGE].ws_frames_withheld += 1
            if bar_times:
                self._record_withheld(channel, bar_times)
            return
        text = f"[{channel.chan_id},{payload}"
        if self.flags & FLAG_SEQ_ALL:
            text += f",{self.seq}"
        if self.flags & FLAG_TIMESTAMP:
            text += f",{self.sim.feed.stamp_ms(self.sim.clock.now_ms())}"
        text += "]"
        if bar_times is not None and faults.malformed():
            self._record_withheld(channel, bar_times)
            text = MALFORMED_FRAME
        self.writer.send(text)

    def _record_withheld(self, channel: Channel, bar_times: Sequence[int]) -> None:
        """Record the minutes a fault kept from this channel. A snapshot's history before the
        subscription is left out: sockets before this one were sent it, and this channel's client
        can claim no minute before its first frame, so withholding it hides nothing it could vouch
        for."""
        withheld = self.sim.faults.withheld
        for time_ms in bar_times:
            if time_ms >= channel.since_ms:
                withheld.add(EXCHANGE, channel.market.symbol, time_ms)

    async def _heartbeats(self) -> None:
        period = self.sim.config.bitfinex_heartbeat_seconds
        while True:
            await asyncio.sleep(min(1.0, period / 4))
            now = time.monotonic()
            for channel in list(self.channels.values()):
                if channel.pending is None and now - channel.last_sent >= period:
                    self.send_channel(channel, '"hb"')

    # ---- receiving

    async def _handle(self, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            self.send_event({"event": "error", "msg": "json: invalid", "code": 10000})
            return
        if not isinstance(message, dict):
            self.send_event({"event": "error", "msg": "event: invalid", "code": 10000})
            return
        event = message.get("event")
        if event == "subscribe":
            await self._subscribe(message)
        elif event == "unsubscribe":
            self._unsubscribe(message)
        elif event == "ping":
            reply: dict[str, Any] = {"event": "pong", "ts": self.sim.clock.now_ms()}
            if "cid" in message:
                reply["cid"] = message["cid"]
            self.send_event(reply)
        elif event == "conf":
            flags = message.get("flags")
            if not isinstance(flags, int) or isinstance(flags, bool):
                self.send_event({**message, "event": "error", "msg": "flags: invalid", "code": 10000})
                return
            self.flags = flags
            self.send_event({"event": "conf", "status": "OK", "flags": flags})
        else:
            self.send_event({**message, "event": "error", "msg": f"event: invalid ({event})", "code": 10000})

    def _error(self, request: dict[str, Any], code: int, msg: str, **extra: Any) -> None:
        self.sim.stats[EXCHANGE].ws_subscribe_errors += 1
        self.send_event({**request, "event": "error", "msg": msg, "code": code, **extra})

    async def _subscribe(self, request: dict[str, Any]) -> None:
        channel_name = request.get("channel")
        if channel_name != "candles":
            self._error(request, 10300, "channel: unknown")
            return
        key = request.get("key")
        parts = key.split(":", 2) if isinstance(key, str) else []
        if len(parts) != 3 or parts[0] != "trade" or parts[1] != "1m":
            self._error(request, 10300, "key: invalid")
            return
        symbol = parts[2]
        market = self.server.markets.get(symbol[1:]) if symbol.startswith("t") else None
        if market is None:
            self._error(request, 10300, "symbol: invalid")
            return
        assert isinstance(key, str)
        if key in self.by_key:
            self._error(request, 10301, "subscribe: dup", chanId=self.by_key[key])
            return
        if len(self.channels) >= self.sim.config.bitfinex_channels_per_connection:
            self.sim.stats[EXCHANGE].over_limit += 1
            self._error(request, 10305, "subscribe: limit")
            return
        chan_id = self.server.new_chan_id(set(self.channels))
        opened_ms = self.sim.feed.stamp_ms(self.sim.clock.now_ms())
        channel = Channel(chan_id, key, market, opened_ms=opened_ms)
        self.channels[chan_id] = channel
        self.by_key[key] = chan_id
        channel.subscription = self.sim.feed.subscribe(
            EXCHANGE, market.symbol, lambda e, c=channel: self._on_event(c, e)
        )
        echoed = {name: value for name, value in request.items() if name != "event"}
        self.send_event({"event": "subscribed", **echoed, "chanId": chan_id})
        await self._send_snapshot(channel)

    async def _send_snapshot(self, channel: Channel) -> None:
        count = self.sim.config.bitfinex_snapshot_candles
        payload, bar_times = await self.sim.compute_prompt(
            snapshot, channel.market.symbol, channel.opened_ms, count
        )
        if self.channels.get(channel.chan_id) is not channel:
            return
        if not self.server.in_maintenance():
            self.send_channel(channel, payload, bar_times)
        pending, channel.pending = channel.pending or [], None
        for event in pending:
            self._on_event(channel, event)

    def _unsubscribe(self, request: dict[str, Any]) -> None:
        chan_id = request.get("chanId")
        channel = self.channels.pop(chan_id, None) if isinstance(chan_id, int) else None
        if channel is None:
            self.send_event({**request, "event": "error", "msg": "unsubscribe: invalid", "code": 10400})
            return
        self.by_key.pop(channel.key, None)
        if channel.subscription is not None:
            channel.subscription.close()
        self.send_event({"event": "unsubscribed", "status": "OK", "chanId": chan_id})

    # ---- live data

    def _on_event(self, channel: Channel, event: CandleEvent) -> None:
        if channel.pending is not None:
            channel.pending.append(event)
            return
        if event.candle.trades == 0 or not event.changed:
            return
        if self.server.in_maintenance():
            return
        self.send_channel(channel, bitfinex_candle(event.candle), (event.candle.time_ms,), lost=event.missed)


def candles_body(
    work: CandleWork,
    symbol: str,
    section: str,
    interval: int,
    start: int | None,
    end_ms: int,
    limit: int,
    ascending: bool,
) -> str:
    """`/v2/candles/…/hist` or `…/last` as Bitfinex's JSON (a compute job): traded bars only."""
    market, history = work.market(EXCHANGE, symbol), work.history
    if section == "last":
        bars = history.newest(market, interval, end_ms, 1, lo_ms=start, traded_only=True)
        return bitfinex_candle(bars[0]) if bars else "[]"
    if ascending:
        lo = start if start is not None else history.first_ms
        bars = history.oldest(market, interval, lo, limit, hi_ms=end_ms, traded_only=True)
    else:
        bars = list(reversed(history.newest(market, interval, end_ms, limit, lo_ms=start, traded_only=True)))
    return bitfinex_candles(bars)


def snapshot(work: CandleWork, symbol: str, end: int, count: int) -> tuple[str, list[int]]:
    """A channel's snapshot as of `end` (a compute job): the newest `count` traded bars, the one
    in progress then included, as the frame's payload (newest first) and the bars' open times.
    Text and numbers, not bars, cross back: unpickling bars cost the feed's process more than
    working them out."""
    market, history = work.market(EXCHANGE, symbol), work.history
    partial = history.minute_candles(market, end, end, traded_only=True, now_ms=end)
    bars = history.traded_before(market, end, max(0, count - len(partial))) + partial[:count]
    return bitfinex_candles(list(reversed(bars))), [bar.time_ms for bar in bars]
