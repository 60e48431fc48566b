"""Bittrex v3 websocket: ASP.NET SignalR classic (protocol 1.5), hub `c3`, on the Bittrex port.

Wire promises (docs/exchanges.md, the Bittrex SignalR websocket):

- `GET /signalr/negotiate?clientProtocol=1.5&connectionData=[{"name":"c3"}]` answers the negotiate
  JSON: `Url` "/signalr", a `ConnectionToken` (~128 characters that always contain `+`, `/` and `=`,
  so a client that does not URL-encode it fails here as it would on Bittrex), a uuid `ConnectionId`,
  `KeepAliveTimeout` / `DisconnectTimeout` (2x and 3x `bittrex_keepalive_seconds`: 20.0 / 30.0 by
  default), `ConnectionTimeout` 110.0, `TryWebSockets` true, `ProtocolVersion` "1.5" (the client's
  version clamped to 1.2..1.5), `TransportConnectTimeout` 5.0, `LongPollDelay` 0.0.
- `GET /signalr/connect?transport=webSockets&clientProtocol=1.5&connectionToken=..&connectionData=..`
  upgrades to a websocket whose first frame is the init `{"C":"d-..","S":1,"M":[]}`. A token this
  server did not issue answers 400, another transport 400 "Protocol error: Unknown transport.", a
  hub other than `c3` in `connectionData` 500. A second socket for the same ConnectionId replaces the
  first. `GET /signalr/start` answers `{"Response":"started"}` but is not required; `/signalr/ping`
  answers `{"Response":"pong"}`; `/signalr/abort` closes the socket of that token; `/signalr/reconnect`
  opens a socket without the init frame and restores the subscriptions named by its `groupsToken`.
- Invocations `{"H":"c3","M":"Subscribe"|"Unsubscribe","A":[[streams]],"I":n}` get one `G` (groups
  token) frame, then `{"R":[{"Success":..,"ErrorCode":..}, ...one per stream],"I":"n"}` with `I` as a
  string. Streams: `heartbeat`; `candle_<MARKET>_<MINUTE_1|MINUTE_5|HOUR_1|DAY_1>`; `trade_`,
  `ticker_`, `market_summary_<MARKET>`, `orderbook_<MARKET>_<1|25|500>`, `market_summaries`,
  `tickers`. A stream naming a market the simulator does not list fails with ErrorCode
  `MARKET_DOES_NOT_EXIST`, any other name with `INVALID_STREAM` (Bittrex's own codes for these are
  undocumented). Only `candle_*_MINUTE_1` and `heartbeat` carry data; the other valid streams are
  accepted and stay silent. `IsAuthenticated` answers false, `Authenticate` `INVALID_APIKEY`. Any
  other method, hub or argument shape answers `{"I":"n","E":"There was an error invoking Hub method
  'c3.<Method>'."}` (what SignalR says with detailed errors off).
- Pushes are `{"C":"d-..","M":[{"H":"C3","M":"candle","A":["<base64 raw-deflate JSON>"]}, ...]}`;
  entries due at the same moment share one frame (a minute's last change and the next minute's
  placeholder usually do). The JSON is `{"sequence","marketSymbol","interval","delta","candleType"}`
  with `delta` a REST-style candle (strings, `startsAt` ISO `Z`). Per minute: the zero-volume
  placeholder at the start (always), then the running candle whenever it changed, and the closed
  candle at the boundary if it differs from the last push - so the last push for a `startsAt` is
  always the final bar, equal to REST and `/control/candles`.
- `sequence` is per stream, not per socket: +1 per message, the same number on every connection,
  and never lower than the REST `Sequence` header of the moment it is pushed (so the documented
  REST/socket sync rule never drops a newer message). Messages lost to a stall still use numbers.
- `{}` keep-alives every `bittrex_keepalive_seconds` on every socket; `{"C":..,"M":[{"H":"C3",
  "M":"heartbeat","A":[]}]}` every `bittrex_heartbeat_seconds` to sockets subscribed to `heartbeat`.

Faults (simulator/faults.py): `ws_stall` stops candle pushes, heartbeats and keep-alives (replies to
invocations still go out); `ws_malformed_rate` cuts frames that carry candle data short;
`lose_ws_frames` N loses the next N frames that carry candle data (their sequence numbers stay
used); `drop_ws` aborts every socket. The REST faults do not touch the SignalR endpoints.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import secrets
import uuid
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from simulator.core import MINUTE_MS, SimMarket
from simulator.http import WsConnection, drop_connections, json_response, serving_connection, spawn
from simulator.live import CandleEvent, Subscription
from simulator.wire import bittrex_candle, dumps

if TYPE_CHECKING:
    from simulator.state import SimState

EXCHANGE = "bittrex"
HUB = "c3"
PUSH_HUB = "C3"
ROOT = "/signalr"
MIN_PROTOCOL = (1, 2)
MAX_PROTOCOL = (1, 5)
CONNECTION_TIMEOUT = 110.0
TRANSPORT_CONNECT_TIMEOUT = 5.0
LIVE_INTERVAL = "MINUTE_1"
CANDLE_INTERVALS = ("MINUTE_1", "MINUTE_5", "HOUR_1", "DAY_1")

_MARKET = r"([A-Za-z0-9]+-[A-Za-z0-9]+)"
CANDLE_RE = re.compile(rf"^candle_{_MARKET}_({'|'.join(CANDLE_INTERVALS)})$")
MARKET_STREAM_RE = re.compile(rf"^(trade|ticker|market_summary)_{_MARKET}$")
ORDERBOOK_RE = re.compile(rf"^orderbook_{_MARKET}_(1|25|500)$")
GLOBAL_STREAMS = ("heartbeat", "market_summaries", "tickers")

TOKEN_BYTES = 95
"""95 bytes of base64 are 128 characters ending in one `=`, the size of Bittrex's tokens."""


def encode_payload(value: Any) -> str:
    """Bittrex's push encoding: JSON, raw DEFLATE (no zlib header), base64."""
    compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -zlib.MAX_WBITS)
    data = compressor.compress(dumps(value).encode()) + compressor.flush()
    return base64.b64encode(data).decode("ascii")


def invocation_error(hub: str, method: str) -> str:
    return f"There was an error invoking Hub method '{hub}.{method}'."


class Signer:
    """Self-checking opaque tokens: whatever this server issued, it can read back (and nothing else)."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)

    def _mac(self, data: bytes) -> bytes:
        return hmac.new(self._key, data, hashlib.sha256).digest()[:16]

    def connection_token(self, connection_id: str) -> str:
        """`connection_id` (16 bytes) + random filler + MAC, base64; always has `+`, `/` and `=`."""
        raw_id = uuid.UUID(connection_id).bytes
        while True:
            filler = secrets.token_bytes(TOKEN_BYTES - 32)
            token = base64.b64encode(raw_id + filler + self._mac(raw_id + filler)).decode("ascii")
            if "+" in token and "/" in token:
                return token

    def connection_id(self, token: str | None) -> str | None:
        try:
            data = base64.b64decode(token or "", validate=True)
        except ValueError:
            return None
        if len(data) != TOKEN_BYTES or not hmac.compare_digest(self._mac(data[:-16]), data[-16:]):
            return None
        return str(uuid.UUID(bytes=data[:16]))

    def groups_token(self, connection_id: str, streams: Iterable[str]) -> str:
        body = f"{connection_id}:{dumps(sorted(streams))}".encode()
        return base64.b64encode(body + self._mac(body)).decode("ascii")

    def groups(self, token: str | None, connection_id: str) -> list[str]:
        try:
            data = base64.b64decode(token or "", validate=True)
            body, mac = data[:-16], data[-16:]
            if not hmac.compare_digest(self._mac(body), mac):
                return []
            owner, _, streams = body.decode().partition(":")
            names = json.loads(streams)
        except ValueError:
            return []
        if owner != connection_id or not isinstance(names, list):
            return []
        return [n for n in names if isinstance(n, str)]


@dataclass
class CandleStream:
    """One live `candle_<MARKET>_MINUTE_1` stream, fanned out to every connection subscribed to it."""

    name: str
    market: SimMarket
    connections: set[SignalRConnection] = field(default_factory=set)
    subscription: Subscription | None = None


class BittrexSignalRServer:
    port = EXCHANGE
    actions = ("drop_ws", "lose_ws_frames")

    def __init__(self, sim: SimState) -> None:
        self.sim = sim
        self.signer = Signer()
        self.markets: dict[str, SimMarket] = {m.symbol: m for m in sim.markets[EXCHANGE]}
        self.streams: dict[str, CandleStream] = {}
        self.sequences: dict[str, int] = {}
        self.connections: dict[str, SignalRConnection] = {}

    def add_routes(self, app: web.Application) -> None:
        for method in ("GET", "POST"):
            app.router.add_route(method, f"{ROOT}/negotiate", self.negotiate)
            app.router.add_route(method, f"{ROOT}/start", self.start)
            app.router.add_route(method, f"{ROOT}/abort", self.abort)
            app.router.add_route(method, f"{ROOT}/ping", self.ping)
        app.router.add_get(f"{ROOT}/connect", self.connect)
        app.router.add_get(f"{ROOT}/reconnect", self.reconnect)

    # ------------------------------------------------------------------------ HTTP endpoints

    @staticmethod
    def _protocol(request: web.Request) -> str:
        """SignalR's resolution: the client's version clamped to the supported range, else the minimum."""
        match = re.fullmatch(r"(\d+)\.(\d+)", request.query.get("clientProtocol", "").strip())
        version = (int(match.group(1)), int(match.group(2))) if match else MIN_PROTOCOL
        version = min(max(version, MIN_PROTOCOL), MAX_PROTOCOL)
        return f"{version[0]}.{version[1]}"

    @staticmethod
    def _hub_error(request: web.Request) -> web.Response | None:
        """A 500 if `connectionData` is present but is not a list of known hubs."""
        raw = request.query.get("connectionData")
        if raw is None:
            return None
        try:
            hubs = json.loads(raw)
        except ValueError:
            hubs = None
        if not isinstance(hubs, list) or not all(isinstance(h, dict) for h in hubs):
            return web.Response(status=500, text="Invalid connection data.")
        for hub in hubs:
            name = hub.get("name") or hub.get("Name")
            if not isinstance(name, str) or name.lower() != HUB:
                return web.Response(status=500, text=f"'{name}' Hub could not be resolved.")
        return None

    def _connection_id(self, request: web.Request) -> str | web.Response:
        """The ConnectionId of a valid request carrying a token, or the 400/500 SignalR would answer."""
        if request.query.get("transport") != "webSockets":
            return web.Response(status=400, text="Protocol error: Unknown transport.")
        token = request.query.get("connectionToken")
        if not token:
            return web.Response(status=400, text="Protocol error: Missing connection token.")
        connection_id = self.signer.connection_id(token)
        if connection_id is None:
            return web.Response(status=400, text="The connection id is in the incorrect format.")
        hub_error = self._hub_error(request)
        return hub_error if hub_error is not None else connection_id

    async def negotiate(self, request: web.Request) -> web.Response:
        hub_error = self._hub_error(request)
        if hub_error is not None:
            return hub_error
        keepalive = self.sim.config.bittrex_keepalive_seconds
        connection_id = str(uuid.uuid4())
        return json_response(
            dumps(
                {
                    "Url": ROOT,
                    "ConnectionToken": self.signer.connection_token(connection_id),
                    "ConnectionId": connection_id,
                    "KeepAliveTimeout": float(2 * keepalive),
                    "DisconnectTimeout": float(3 * keepalive),
                    "ConnectionTimeout": CONNECTION_TIMEOUT,
                    "TryWebSockets": True,
                    "ProtocolVersion": self._protocol(request),
                    "TransportConnectTimeout": TRANSPORT_CONNECT_TIMEOUT,
                    "LongPollDelay": 0.0,
                }
            )
        )

    async def start(self, request: web.Request) -> web.Response:
        checked = self._connection_id(request)
        if isinstance(checked, web.Response):
            return checked
        return json_response('{"Response":"started"}')

    async def ping(self, request: web.Request) -> web.Response:
        return json_response('{"Response":"pong"}')

    async def action(self, name: str, args: dict[str, Any]) -> None:
        if name == "drop_ws":
            drop_connections(self.sim, EXCHANGE)
        elif name == "lose_ws_frames":
            self.sim.faults.lose(EXCHANGE, name, args[name])
        else:
            raise ValueError(f"bittrex has no action {name!r}")

    async def abort(self, request: web.Request) -> web.Response:
        checked = self._connection_id(request)
        if isinstance(checked, web.Response):
            return checked
        conn = self.connections.get(checked)
        if conn is not None:
            conn.close_soon()
        return web.Response(status=200, text="")

    async def connect(self, request: web.Request) -> web.StreamResponse:
        return await self._websocket(request, reconnecting=False)

    async def reconnect(self, request: web.Request) -> web.StreamResponse:
        return await self._websocket(request, reconnecting=True)

    async def _websocket(self, request: web.Request, reconnecting: bool) -> web.StreamResponse:
        checked = self._connection_id(request)
        if isinstance(checked, web.Response):
            return checked
        connection_id = checked
        ws = web.WebSocketResponse(autoping=True, max_msg_size=1 << 20, compress=False)
        if not ws.can_prepare(request).ok:
            return web.Response(status=400, text="Not a valid websocket request.")
        previous = self.connections.get(connection_id)
        if previous is not None:
            previous.close_soon()
        transport = request.transport
        await ws.prepare(request)
        conn = SignalRConnection(self, ws, transport, connection_id)
        self.connections[connection_id] = conn
        async with serving_connection(self.sim, EXCHANGE, conn):
            try:
                if reconnecting:
                    for group in self.signer.groups(request.query.get("groupsToken"), connection_id):
                        conn.subscribe(group.removeprefix(f"{HUB}."))
                await conn.serve(send_init=not reconnecting)
            finally:
                if self.connections.get(connection_id) is conn:
                    del self.connections[connection_id]
        return ws

    # ------------------------------------------------------------------------------ streams

    def check_stream(self, stream: str) -> tuple[str | None, str | None]:
        """(canonical name, None) for a stream this server accepts, else (None, ErrorCode)."""
        if stream in GLOBAL_STREAMS:
            return stream, None
        for pattern in (CANDLE_RE, MARKET_STREAM_RE, ORDERBOOK_RE):
            match = pattern.match(stream)
            if match is None:
                continue
            symbol = match.group(1 if pattern is not MARKET_STREAM_RE else 2).upper()
            if symbol not in self.markets:
                return None, "MARKET_DOES_NOT_EXIST"
            if pattern is CANDLE_RE:
                return f"candle_{symbol}_{match.group(2)}", None
            if pattern is ORDERBOOK_RE:
                return f"orderbook_{symbol}_{match.group(2)}", None
            return f"{match.group(1)}_{symbol}", None
        return None, "INVALID_STREAM"

    def join(self, conn: SignalRConnection, stream: str) -> None:
        """Add `conn` to a live candle stream (other streams carry no data and need no bookkeeping)."""
        match = CANDLE_RE.match(stream)
        if match is None or match.group(2) != LIVE_INTERVAL:
            return
        live = self.streams.get(stream)
        if live is None:
            market = self.markets[match.group(1)]
            live = CandleStream(stream, market)
            live.subscription = self.sim.feed.subscribe(
                EXCHANGE, market.symbol, lambda e, s=live: self._on_event(s, e)
            )
            self.streams[stream] = live
        live.connections.add(conn)

    def leave(self, conn: SignalRConnection, stream: str) -> None:
        live = self.streams.get(stream)
        if live is None:
            return
        live.connections.discard(conn)
        if not live.connections:
            del self.streams[stream]
            if live.subscription is not None:
                live.subscription.close()

    def _on_event(self, stream: CandleStream, event: CandleEvent) -> None:
        if event.kind != "open" and not event.changed:
            return
        sequence = max(self.sequences.get(stream.name, 0) + 1, event.sim_ms // MINUTE_MS + 1)
        self.sequences[stream.name] = sequence
        if event.missed or self.sim.faults[EXCHANGE].ws_stall:
            self.sim.stats[EXCHANGE].ws_frames_withheld += len(stream.connections)
            self.sim.faults.withheld.add(EXCHANGE, stream.market.symbol, event.minute_ms)
            return
        payload = {
            "sequence": sequence,
            "marketSymbol": stream.market.symbol,
            "interval": LIVE_INTERVAL,
            "delta": bittrex_candle(event.candle),
            "candleType": "TRADE",
        }
        entry = dumps({"H": PUSH_HUB, "M": "candle", "A": [encode_payload(payload)]})
        for conn in list(stream.connections):
            conn.push(entry, event)


HEARTBEAT_ENTRY = dumps({"H": PUSH_HUB, "M": "heartbeat", "A": []})


class SignalRConnection(WsConnection):
    """One websocket: its subscriptions, message cursor, keep-alives, heartbeats and batched pushes."""

    def __init__(
        self, server: BittrexSignalRServer, ws: web.WebSocketResponse, transport: Any, connection_id: str
    ) -> None:
        super().__init__(server.sim, EXCHANGE, ws, transport)
        self.server = server
        self.connection_id = connection_id
        self.streams: set[str] = set()
        self.messages = 0
        self._cursor_prefix = f"d-{secrets.token_hex(4).upper()}-B"
        self._pending: list[str] = []
        self._pending_candles: list[CandleEvent] = []
        self._flush_scheduled = False

    def close_soon(self) -> None:
        """Close from outside the socket's own task (`ws.close` may wait for the peer's answer)."""
        spawn(self.ws.close(code=1000))

    # ---- lifecycle

    async def serve(self, send_init: bool) -> None:
        self.writer.start()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._keepalives()))
        self._tasks.append(loop.create_task(self._heartbeats()))
        if send_init:
            self.writer.send(dumps({"C": self._cursor(), "S": 1, "M": []}))
        stats = self.sim.stats[EXCHANGE]
        async for msg in self.ws:
            if msg.type == WSMsgType.TEXT:
                stats.ws_frames_received += 1
                self._handle(msg.data)
            elif msg.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                break

    async def cleanup(self) -> None:
        for stream in list(self.streams):
            self.server.leave(self, stream)
        self.streams.clear()
        await super().cleanup()

    # ---- sending

    def _cursor(self) -> str:
        """An opaque, ever-changing message id in the shape SignalR's scale-out cursors have."""
        self.messages += 1
        return f"{self._cursor_prefix},0|{_base36(self.messages)},0|{_base36(self.messages + 1)},1"

    def push(self, entry: str, candle: CandleEvent | None = None) -> None:
        """Queue one `M` entry (`candle`: the event a candle entry carries); everything queued in
        the same loop iteration leaves in one frame."""
        self._pending.append(entry)
        if candle is not None:
            self._pending_candles.append(candle)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Send the queued entries as one frame. A frame with candle data may be lost
        (`lose_ws_frames`: its message id and the candles' sequence numbers stay used) or cut short
        (`ws_malformed_rate`); either way every candle entry in it is recorded as withheld."""
        entries, candles = self._pending, self._pending_candles
        self._pending, self._pending_candles, self._flush_scheduled = [], [], False
        if not entries:
            return
        text = f'{{"C":"{self._cursor()}","M":[{",".join(entries)}]}}'
        if candles:
            faults = self.sim.faults[EXCHANGE]
            if faults.lose_frame():
                self.sim.stats[EXCHANGE].ws_frames_withheld += 1
                self._record_withheld(candles)
                return
            if faults.malformed():
                self._record_withheld(candles)
                text = text[: len(text) // 2]
        self.writer.send(text)

    def _record_withheld(self, candles: list[CandleEvent]) -> None:
        withheld = self.sim.faults.withheld
        for event in candles:
            withheld.add(EXCHANGE, event.market.symbol, event.minute_ms)

    async def _keepalives(self) -> None:
        period = self.sim.config.bittrex_keepalive_seconds
        while True:
            await asyncio.sleep(period)
            if self.sim.faults[EXCHANGE].ws_stall:
                self.sim.stats[EXCHANGE].ws_frames_withheld += 1
            else:
                self.writer.send("{}")

    async def _heartbeats(self) -> None:
        period = self.sim.config.bittrex_heartbeat_seconds
        while True:
            await asyncio.sleep(period)
            if "heartbeat" not in self.streams:
                continue
            if self.sim.faults[EXCHANGE].ws_stall:
                self.sim.stats[EXCHANGE].ws_frames_withheld += 1
            else:
                self.push(HEARTBEAT_ENTRY)

    # ---- subscriptions

    def subscribe(self, stream: str) -> dict[str, Any]:
        canonical, error = self.server.check_stream(stream)
        if canonical is None:
            self.sim.stats[EXCHANGE].ws_subscribe_errors += 1
            return {"Success": False, "ErrorCode": error}
        if canonical not in self.streams:
            self.streams.add(canonical)
            self.server.join(self, canonical)
        return {"Success": True, "ErrorCode": None}

    def unsubscribe(self, stream: str) -> dict[str, Any]:
        canonical, error = self.server.check_stream(stream)
        if canonical is None:
            return {"Success": False, "ErrorCode": error}
        if canonical in self.streams:
            self.streams.discard(canonical)
            self.server.leave(self, canonical)
        return {"Success": True, "ErrorCode": None}

    # ---- receiving

    def _handle(self, text: str) -> None:
        """A hub invocation; anything that is not JSON is ignored, as SignalR drops what it cannot read."""
        try:
            message = json.loads(text)
        except ValueError:
            return
        if not isinstance(message, dict):
            return
        ident = message.get("I")
        reply_id = None if ident is None else str(ident)
        hub, method, args = message.get("H"), message.get("M"), message.get("A")
        method_name = method if isinstance(method, str) else ""
        hub_name = hub if isinstance(hub, str) else ""
        if hub_name.lower() != HUB or not isinstance(args, list):
            self._fail(reply_id, hub_name, method_name)
            return
        name = method_name.lower()
        if name in ("subscribe", "unsubscribe"):
            streams = args[0] if len(args) == 1 else None
            if not isinstance(streams, list) or not all(isinstance(s, str) for s in streams):
                self._fail(reply_id, hub_name, method_name)
                return
            act = self.subscribe if name == "subscribe" else self.unsubscribe
            results = [act(stream) for stream in streams]
            if name == "subscribe":
                self._send_groups_tokens(sum(1 for result in results if result["Success"]))
            self.writer.send(dumps({"R": results, "I": reply_id}))
        elif name == "isauthenticated" and not args:
            self.writer.send(dumps({"R": False, "I": reply_id}))
        elif name == "authenticate" and len(args) == 4:
            self.writer.send(dumps({"R": {"Success": False, "ErrorCode": "INVALID_APIKEY"}, "I": reply_id}))
        else:
            self._fail(reply_id, hub_name, method_name)

    def _fail(self, reply_id: str | None, hub: str, method: str) -> None:
        self.sim.stats[EXCHANGE].ws_subscribe_errors += 1
        self.writer.send(dumps({"I": reply_id, "E": invocation_error(hub or HUB, method)}))

    def _send_groups_tokens(self, count: int) -> None:
        """One groups-token frame per stream subscribed, as Bittrex sends; the token is the same in each."""
        if not count:
            return
        token = self.server.signer.groups_token(self.connection_id, [f"{HUB}.{s}" for s in self.streams])
        for _ in range(count):
            self.writer.send(dumps({"C": self._cursor(), "G": token, "M": []}))


def _base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    text = ""
    while True:
        number, rest = divmod(number, 36)
        text = digits[rest] + text
        if number == 0:
            return text
