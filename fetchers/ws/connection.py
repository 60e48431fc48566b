"""One websocket connection of a fetcher: connect -> subscribe -> read, again and again.

The loop owns everything about its socket: the per-connection protocol session (so channel ids are
keyed by connection), the watchdog (armed at connect: a socket that never sends a frame is noticed
too), the paced subscribe task (referenced and cancelled with the socket), and the evidence of
which minutes its markets received in full (`WsEvidence`, fed every event; a reconnect, a
maintenance pause or a resubscription ends every market's run of proof, and none starts while the
exchange's data is paused). A frame that cannot be
parsed is logged, counted and dropped; it never costs a reconnect.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import aiohttp

from common.candle import OHLCV_TEXT
from fetchers.exchanges.base import WsAction, WsCandle, WsError, WsHeartbeat, WsInfo, WsSession
from fetchers.ws import signalr
from fetchers.ws.sink import MarketKeys

if TYPE_CHECKING:
    from fetchers.ws.stream import StreamEngine

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 15.0
MAX_FRAME_BYTES = 8 << 20


class ConnectionLost(Exception):
    """Why a connection ended (the message goes to the log and the outage record)."""


_OHLCV_MATCH = OHLCV_TEXT.fullmatch


def plain_decimals(candle: WsCandle) -> bool:
    """Every value is plain decimal text (one regex match per bar: this runs for every update)."""
    return (
        _OHLCV_MATCH(f"{candle.open}\t{candle.high}\t{candle.low}\t{candle.close}\t{candle.volume}")
        is not None
    )


class Watchdog:
    """Cancels the task that armed it once nothing was `fed` for `seconds`, then raises TimeoutError
    on exit (like `asyncio.timeout`, whose semantics it keeps: a cancel from outside stays a cancel).

    Feeding costs an attribute store per frame; the timer is re-armed only when it fires early, so
    the read loop does not create and cancel a timer for every frame."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.last = time.perf_counter()
        self.fired = False
        self._task: asyncio.Task | None = None
        self._handle: asyncio.TimerHandle | None = None

    def feed(self, now: float) -> None:
        self.last = now

    def _check(self) -> None:
        idle = time.perf_counter() - self.last
        assert self._task is not None
        if idle >= self.seconds:
            self.fired = True
            self._handle = None
            self._task.cancel()
        else:
            self._handle = asyncio.get_running_loop().call_later(self.seconds - idle, self._check)

    async def __aenter__(self) -> Watchdog:
        self._task = asyncio.current_task()
        self.last = time.perf_counter()
        self._handle = asyncio.get_running_loop().call_later(self.seconds, self._check)
        return self

    async def __aexit__(self, kind, exc, traceback) -> bool | None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if (
            self.fired
            and kind is asyncio.CancelledError
            and self._task is not None
            and self._task.uncancel() == 0
        ):
            raise TimeoutError from exc
        return None


class LiveConnection:
    def __init__(self, engine: StreamEngine, number: int, markets: list[MarketKeys]) -> None:
        self.engine = engine
        self.number = number
        self.markets: dict[str, MarketKeys] = {m.symbol: m for m in markets}
        self.up = False
        self.paused = False
        self.subscribed = False
        self.reconnects = 0
        self.bad_frames = 0
        self.errors = 0
        self.evidence = engine.adapter.ws_evidence(list(self.markets), engine.limits)
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._session: WsSession | None = None
        self._subscriber: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return f"{self.engine.exchange}#{self.number}"

    # ---- the loop

    async def run(self) -> None:
        attempt = 0
        while self.markets and not self.engine.stopping:
            await self.engine.pacer.acquire()
            reason = "closed by the server"
            delay = None
            try:
                if await self._connected_session():
                    attempt = 0
            except ConnectionLost as exc:
                reason = str(exc)
            except aiohttp.WSServerHandshakeError as exc:
                reason = f"handshake refused: HTTP {exc.status}"
                if exc.status == 429:  # too many connections: the exchange counts per window
                    delay = self.engine.limits.connect_window_seconds
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            finally:
                await self._close()
            self.reconnects += 1
            self.engine.reconnects += 1
            self.evidence.restart(f"connection lost: {reason}")
            delay = self.engine.backoff(attempt) if delay is None else delay
            log.warning("%s: %s; reconnecting in %.1fs", self.name, reason, delay)
            attempt += 1
            await asyncio.sleep(delay)

    async def _connected_session(self) -> bool:
        """Returns whether data flowed (so the backoff starts over)."""
        engine = self.engine
        async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):  # unlike wait_for, never loses a cancel
            self._ws = await engine.open_socket()
        self._session = WsSession()
        self.subscribed = False
        self.paused = False
        self._subscriber = asyncio.create_task(self._subscribe(list(self.markets.values())))
        got_data = False
        silence = engine.limits.silence_seconds
        ws = self._ws
        watchdog = Watchdog(silence)
        perf_counter = time.perf_counter
        try:
            async with watchdog:
                while True:
                    msg = await ws.receive()
                    received = perf_counter()
                    watchdog.feed(received)
                    kind = msg.type
                    if kind is aiohttp.WSMsgType.TEXT:
                        self.up = True
                        got_data |= self._handle(msg.data, received)
                    elif kind is aiohttp.WSMsgType.PING:
                        await ws.pong(msg.data)
                        engine.frame_seen(received)
                    elif kind is aiohttp.WSMsgType.PONG:
                        engine.frame_seen(received)
                    elif kind is aiohttp.WSMsgType.BINARY:
                        self._bad_frame("binary frame")
                    else:
                        return got_data
        except TimeoutError:
            raise ConnectionLost(f"silent for {silence:g}s") from None

    async def _subscribe(self, markets: list[MarketKeys]) -> None:
        assert self._ws is not None and self._session is not None
        pause = 1.0 / self.engine.limits.subscribe_frames_per_second
        frames = self.engine.adapter.subscribe_frames(
            [self.engine.market_objects[m.symbol] for m in markets], self._session
        )
        for frame in frames:
            await self._ws.send_str(frame)
            await asyncio.sleep(pause)
        self.subscribed = True

    async def _close(self) -> None:
        self.up = False
        if self._subscriber is not None:
            self._subscriber.cancel()
            try:
                await self._subscriber
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - it died with its socket
                pass
            self._subscriber = None
        if self._ws is not None:
            try:
                await self._ws.close()
            except Exception:  # noqa: BLE001 - the socket is already gone
                pass
            self._ws = None

    # ---- frames

    def _handle(self, text: str, received: float) -> bool:
        engine = self.engine
        engine.frame_seen(received)
        assert self._session is not None
        try:
            events = engine.adapter.parse_ws_frame(text, self._session)
        except ValueError as exc:
            self._bad_frame(str(exc))
            return False
        got_data = False
        evidence = self.evidence
        for event in events:
            if type(event) is WsCandle:
                market = self.markets.get(event.symbol)
                if market is None:
                    continue  # a market we no longer follow
                if not plain_decimals(event):
                    self._bad_frame(f"not a plain decimal in {event!r}")
                    evidence.market_lost(event.symbol, "a bar with a value that is not a plain decimal")
                    continue
                engine.sink.add(market, event, received)
                evidence.observe(event, received)
                if event.time > engine.clock_ms:
                    engine.clock_ms = event.time
                got_data = True
            elif type(event) is WsHeartbeat:
                evidence.observe(event, received)
            elif type(event) is WsInfo:
                self._info(event)
            elif type(event) is WsError:
                self.errors += 1
                log.warning(
                    "%s: exchange error %s: %s (%s)", self.name, event.code, event.message, event.symbol
                )
        return got_data

    def _info(self, info: WsInfo) -> None:
        if info.action is WsAction.NONE:
            return
        log.warning("%s: info %s %s -> %s", self.name, info.code, info.message, info.action.value)
        if info.action is WsAction.RECONNECT:
            raise ConnectionLost(f"server asked to reconnect ({info.code or info.message})")
        if info.action is WsAction.PAUSE:
            self.paused = True
            self.evidence.pause(f"maintenance ({info.code})")
        elif info.action is WsAction.RESUBSCRIBE:
            self.paused = False
            self.evidence.restart(f"resubscribed after maintenance ({info.code})")
            self._resubscribe()

    def _resubscribe(self) -> None:
        assert self._session is not None
        markets = [self.engine.market_objects[s] for s in self.markets]
        frames = self.engine.adapter.unsubscribe_frames(markets, self._session)
        self._session.channels.clear()
        if self._subscriber is not None:
            self._subscriber.cancel()
        self.subscribed = False
        self._subscriber = asyncio.create_task(self._send_then_subscribe(frames))

    async def _send_then_subscribe(self, frames: list[str]) -> None:
        assert self._ws is not None
        for frame in frames:
            await self._ws.send_str(frame)
            await asyncio.sleep(1.0 / self.engine.limits.subscribe_frames_per_second)
        await self._subscribe(list(self.markets.values()))

    def _bad_frame(self, why: str) -> None:
        """Drop the frame. It may have carried bar updates: the evidence shows which minutes of
        which markets that touched (a sequence jump, a missing close) and keeps them uncovered."""
        self.bad_frames += 1
        self.engine.bad_frames += 1
        self.evidence.frame_lost(why)
        log.warning("%s: dropped a bad frame: %s", self.name, why[:300])

    # ---- market changes while running

    async def remove(self, symbols: list[str]) -> None:
        gone = [self.engine.market_objects[s] for s in symbols if s in self.markets]
        for symbol in symbols:
            self.markets.pop(symbol, None)
        self.evidence.remove(symbols)
        if gone and self._ws is not None and self._session is not None and not self._ws.closed:
            for frame in self.engine.adapter.unsubscribe_frames(gone, self._session):
                await self._ws.send_str(frame)
                await asyncio.sleep(1.0 / self.engine.limits.subscribe_frames_per_second)


async def open_websocket(
    http: aiohttp.ClientSession, url: str, transport: str
) -> aiohttp.ClientWebSocketResponse:
    options = {"autoping": False, "max_msg_size": MAX_FRAME_BYTES, "compress": 0}
    if transport == "signalr":
        return await signalr.open_socket(http, url, **options)
    return await http.ws_connect(url, **options)
