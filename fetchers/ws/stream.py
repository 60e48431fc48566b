"""The stream engine of one fetcher process: which markets, on which connections, and its health.

It knows no exchange: the adapter says how many subscriptions fit on a connection, how fast
connections may be opened and subscribe frames sent, how long silence may last, and how to read a
frame. The engine plans the connections, runs one `LiveConnection` loop per connection, keeps a
reference to every task it starts, re-reads `symbol_exchange` every few minutes (markets listed or
delisted while it runs), writes its health hash every second, and on start records the outage
since the previous run of the same fetcher stopped.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
import redis.asyncio as aioredis
import redis.exceptions

from common.backoff import backoff_seconds
from common.candle import Market
from common.db import connection, load_markets
from common.redis_keys import ws_health_key, ws_progress_key
from common.settings import Settings
from common.timeutil import MINUTE_MS, floor_minute_ms
from fetchers.exchanges import get_adapter
from fetchers.exchanges.base import resolve_symbol
from fetchers.ws.connection import LiveConnection, open_websocket
from fetchers.ws.coverage import track_coverage
from fetchers.ws.sink import MarketKeys, RedisSink

log = logging.getLogger(__name__)

HEALTH_SECONDS = 1.0
SHUTDOWN_SECONDS = 10.0
SUMMED = (
    "connections_up",
    "connections_total",
    "messages_per_s",
    "reconnects",
    "bad_frames",
    "markets",
    "open_outages",
)
LATEST = ("last_message_ms", "updated_ms")


@dataclass(frozen=True, slots=True)
class Shard:
    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """`i/n` with 0 <= i < n."""
        try:
            index, count = (int(part) for part in text.split("/"))
        except ValueError:
            raise ValueError(f"--shard must look like i/n (e.g. 0/2), got {text!r}") from None
        if count < 1 or not 0 <= index < count:
            raise ValueError(f"--shard {text}: need 0 <= i < n")
        return cls(index, count)

    @property
    def label(self) -> str:
        return f"shard{self.index}/{self.count}"

    def owns(self, market: Market) -> bool:
        """Stable across restarts and listings: a hash of the exchange's symbol."""
        return zlib.crc32(market.symbol.encode()) % self.count == self.index


class ConnectPacer:
    """At most `count` connection attempts per `window` seconds in this process."""

    def __init__(self, count: int, window: float) -> None:
        self.count = count
        self.window = window
        self._times: deque[float] = deque()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                now = time.monotonic()
                while self._times and now - self._times[0] >= self.window:
                    self._times.popleft()
                if len(self._times) < self.count:
                    self._times.append(now)
                    return
                await asyncio.sleep(self.window - (now - self._times[0]))


def select_markets(markets: Sequence[Market], symbols: Sequence[str] | None, shard: Shard) -> list[Market]:
    """The trading markets this process follows (`symbols` as users name them; ValueError if unknown)."""
    chosen = [resolve_symbol(markets, text) for text in symbols] if symbols else list(markets)
    return [m for m in dict.fromkeys(chosen) if m.is_trading and shard.owns(m)]


class StreamEngine:
    def __init__(
        self,
        settings: Settings,
        exchange: str,
        client: aioredis.Redis,
        symbols: Sequence[str] | None = None,
        shard: Shard = Shard(0, 1),
    ) -> None:
        self.settings = settings
        self.exchange = exchange
        self.adapter = get_adapter(exchange)
        self.limits = self.adapter.ws_limits(settings)
        self.url = self.adapter.ws_url(settings)
        self.redis = client
        self.symbols = list(symbols) if symbols else None
        self.shard = shard
        self.pacer = ConnectPacer(self.limits.connections_per_window, self.limits.connect_window_seconds)
        self.sink = RedisSink(client, exchange, shard.label, self.backoff)
        self.connections: list[LiveConnection] = []
        self.market_objects: dict[str, Market] = {}
        self.clock_ms = 0
        """The exchange's clock as this process sees it: the newest bar time received."""
        self.previous_progress_ms = 0
        self.frames = 0
        self.bad_frames = 0
        self.reconnects = 0
        self.outages_recorded = 0
        """Per-process totals for the metrics (connections come and go with market changes)."""
        self.last_frame = 0.0
        """`time.perf_counter()` of the newest frame (0: none yet); see `last_frame_ms`."""
        self.stopping = False
        self._tasks: dict[asyncio.Task[None], LiveConnection | None] = {}
        self._http: aiohttp.ClientSession | None = None

    def backoff(self, attempt: int) -> float:
        return backoff_seconds(
            attempt, self.settings.ws_backoff_base_seconds, self.settings.ws_backoff_max_seconds
        )

    def frame_seen(self, received: float) -> None:
        """Count a frame received at `received` (`time.perf_counter()`); runs for every frame."""
        self.frames += 1
        self.last_frame = received

    @property
    def last_frame_ms(self) -> int:
        """Wall-clock time of the newest frame in ms (0: none yet)."""
        if not self.last_frame:
            return 0
        return int((time.time() - (time.perf_counter() - self.last_frame)) * 1000)

    async def open_socket(self) -> aiohttp.ClientWebSocketResponse:
        assert self._http is not None
        return await open_websocket(self._http, self.url, self.limits.transport)

    # ---- markets

    def load_markets(self) -> list[Market]:
        with connection(self.settings) as conn:
            listed = load_markets(conn, self.exchange)
        return select_markets(listed, self.symbols, self.shard)

    def _keys(self, market: Market) -> MarketKeys:
        self.market_objects[market.symbol] = market
        return MarketKeys.build(
            market.exchange, market.base_id, market.quote_id, market.symbol, self.settings.redis_key_delimiter
        )

    def _start_connections(self, markets: Sequence[Market]) -> None:
        for group in self.adapter.plan_ws_connections(markets, self.limits):
            conn = LiveConnection(self, len(self.connections), [self._keys(m) for m in group])
            if self.previous_progress_ms:  # a bar of the minute before may have died in memory too
                conn.evidence.outage_since(
                    floor_minute_ms(self.previous_progress_ms) - MINUTE_MS, "fetcher stopped"
                )
            self.connections.append(conn)
            self._spawn(conn.run(), conn)

    def _spawn(self, coro, owner: LiveConnection | None) -> None:
        task = asyncio.create_task(coro)
        self._tasks[task] = owner
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: task failed", self.exchange, exc_info=task.exception())

    async def apply_market_changes(self, markets: Sequence[Market]) -> tuple[int, int]:
        """Subscribe markets that appeared, unsubscribe those that went; returns (added, removed)."""
        wanted = {m.symbol: m for m in markets}
        followed = {s for conn in self.connections for s in conn.markets}
        added = [m for s, m in wanted.items() if s not in followed]
        removed = followed - set(wanted)
        for conn in self.connections:
            gone = [s for s in conn.markets if s in removed]
            if gone:
                await conn.remove(gone)
        for task, owner in list(self._tasks.items()):
            if owner is not None and not owner.markets:
                task.cancel()
        self.connections = [c for c in self.connections if c.markets]
        if added:
            self._start_connections(added)
        if added or removed:
            log.info("%s: markets changed: %d added, %d removed", self.exchange, len(added), len(removed))
        return len(added), len(removed)

    async def _refresh_markets(self) -> None:
        while True:
            await asyncio.sleep(self.settings.ws_markets_refresh_seconds)
            try:
                markets = await asyncio.to_thread(self.load_markets)
            except Exception as exc:  # noqa: BLE001 - the database may be away; try again later
                log.warning("%s: cannot re-read symbol_exchange: %s", self.exchange, exc)
                continue
            await self.apply_market_changes(markets)

    # ---- health

    async def _health(self) -> None:
        """Every HEALTH_SECONDS until shutdown. The loop also checks `stopping`: a cancel that lands
        inside a Redis call can be swallowed by the client, and shutdown must not wait for it."""
        key = ws_health_key(self.exchange)
        label = self.shard.label
        frames_before, before = self.frames, time.monotonic()
        while not self.stopping:
            await asyncio.sleep(HEALTH_SECONDS)
            if self.stopping:
                return
            now = time.monotonic()
            rate = (self.frames - frames_before) / max(now - before, 1e-6)
            frames_before, before = self.frames, now
            mine = {
                "connections_up": sum(c.up for c in self.connections),
                "connections_total": len(self.connections),
                "messages_per_s": round(rate, 1),
                "reconnects": sum(c.reconnects for c in self.connections),
                "last_message_ms": self.last_frame_ms,
                "updated_ms": int(time.time() * 1000),
                "bad_frames": self.bad_frames,
                "markets": sum(len(c.markets) for c in self.connections),
                "open_outages": sum(c.evidence.open_outages() for c in self.connections),
            }
            try:
                await self._write_health(key, label, mine)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
                pass  # the sink reports Redis trouble; health resumes with Redis

    async def _write_health(self, key: str, label: str, mine: dict[str, float]) -> None:
        await self.redis.hset(key, mapping={f"{label}:{name}": value for name, value in mine.items()})
        fields = await self.redis.hgetall(key)
        totals: dict[str, float] = {}
        for raw_name, raw_value in fields.items():
            name = raw_name.decode()
            if ":" not in name:
                continue
            field = name.split(":", 1)[1]
            value = float(raw_value)
            if field in SUMMED:
                totals[field] = totals.get(field, 0) + value
            elif field in LATEST:
                totals[field] = max(totals.get(field, 0), value)
        await self.redis.hset(
            key, mapping={k: (int(v) if k != "messages_per_s" else round(v, 1)) for k, v in totals.items()}
        )

    # ---- running

    async def run(self, stop: asyncio.Event) -> None:
        markets = await asyncio.to_thread(self.load_markets)
        if not markets:
            raise ValueError(f"no trading {self.exchange} markets to follow (refresh the markets first)")
        progress = await self.redis.hget(ws_progress_key(self.exchange), self.shard.label)
        self.previous_progress_ms = int(progress) if progress else 0
        self._http = aiohttp.ClientSession()
        try:
            self._start_connections(markets)
            log.info(
                "%s: following %d markets on %d connections",
                self.exchange,
                len(markets),
                len(self.connections),
            )
            self._spawn(self.sink.run(), None)
            self._spawn(self._health(), None)
            self._spawn(self._refresh_markets(), None)
            self._spawn(track_coverage(self), None)
            await stop.wait()
        finally:
            await self.shutdown()

    async def shutdown(self) -> None:
        """Stop every task (bounded: a task that lost its cancel cannot hold the exit), close the
        sockets, hand the last bars to Redis."""
        self.stopping = True
        self.sink.stop()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=SHUTDOWN_SECONDS)
            if stuck:
                log.warning("%s: %d tasks did not stop in %gs", self.exchange, len(stuck), SHUTDOWN_SECONDS)
        for conn in self.connections:
            await conn._close()
        try:
            await asyncio.wait_for(self.sink.flush(), 10)
            final = {"connections_up": 0, "messages_per_s": 0, "updated_ms": int(time.time() * 1000)}
            await asyncio.wait_for(
                self._write_health(ws_health_key(self.exchange), self.shard.label, final), 5
            )
        except Exception as exc:  # noqa: BLE001 - Redis gone at shutdown: the next start records the gap
            log.warning("%s: could not flush the last bars to Redis: %s", self.exchange, exc)
        if self._http is not None:
            await self._http.close()
