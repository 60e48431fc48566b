"""Live bars to websocket clients: ONE Redis pub/sub listener per process fans out to every socket.

The listener pattern-subscribes to the `ws_send_*` channels once; each published bar is looked up
in a dict of local subscriptions, encoded once per (market, interval, time format) and put on the
bounded queue of every subscribed client (a slow client loses its oldest bars, never stalls the
others). Intervals above 1m get the live minute rolled up into the interval's bar: the minutes of
the bar before the live one come from the database and the `ws_sub_` hash, once per minute per
market and interval, not per client.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from common.backoff import backoff_seconds
from common.candle import Bar, MarketKey
from common.redis_keys import ws_send_key
from web import reads
from web.bars import bar_dict, combine, parse_live_bar
from web.candles import live_bucket, live_minutes
from web.database import ConnectionPool, DatabaseUnavailable
from web.reads import Interval

log = logging.getLogger(__name__)

RECONNECT_BASE_SECONDS = 0.2
RECONNECT_MAX_SECONDS = 5.0
LIVE_CACHE_SECONDS = 1.0
KNOWN_MARKET_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class Subscription:
    market: MarketKey
    interval: Interval
    as_ms: bool = True

    def describe(self) -> dict:
        return {
            "exchange": self.market.exchange,
            "base_id": self.market.base_id,
            "quote_id": self.market.quote_id,
            "interval": self.interval.name,
        }

    def message(self, bar: Bar) -> str:
        return json.dumps({**self.describe(), **bar_dict(bar, self.as_ms)}, separators=(",", ":"))


@dataclass(eq=False)
class Client:
    """One websocket's outbox and subscriptions."""

    queue_size: int
    subscriptions: set[Subscription] = field(default_factory=set)
    dropped: int = 0
    last_push: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.outbox: asyncio.Queue[str] = asyncio.Queue(maxsize=self.queue_size)

    def push(self, text: str) -> None:
        if self.outbox.full():
            self.outbox.get_nowait()
            self.dropped += 1
        self.outbox.put_nowait(text)
        self.last_push = time.monotonic()


class LiveHub:
    def __init__(
        self,
        redis_factory: Callable[[], aioredis.Redis],
        client: aioredis.Redis,
        pool: ConnectionPool,
        delimiter: str,
    ):
        self._redis_factory = redis_factory
        self._client = client
        self._pool = pool
        self._delimiter = delimiter
        self._channels: dict[str, dict[Subscription, set[Client]]] = {}
        self._bases: dict[tuple[str, str], tuple[int, Bar | None]] = {}
        self._recent: dict[str, tuple[float, list[Bar]]] = {}
        self._versions: dict[str, int] = {}
        self._known: dict[MarketKey, float] = {}
        self._clients: set[Client] = set()
        self.listening = asyncio.Event()
        self.delivered = 0

    def channel(self, market: MarketKey) -> str:
        return ws_send_key(*market, delimiter=self._delimiter)

    @property
    def subscriber_count(self) -> int:
        return sum(len(clients) for subs in self._channels.values() for clients in subs.values())

    def connect(self, client: Client) -> None:
        self._clients.add(client)

    def disconnect(self, client: Client) -> None:
        """Forget a client that went away, with every subscription it had."""
        self._clients.discard(client)
        for subscription in list(client.subscriptions):
            self.remove(client, subscription)

    async def heartbeats(self, every_seconds: float) -> None:
        """One task for the whole process: a heartbeat to each socket idle for `every_seconds`."""
        while True:
            await asyncio.sleep(every_seconds / 2)
            idle_since = time.monotonic() - every_seconds
            beat = None
            for client in list(self._clients):
                if client.last_push <= idle_since:
                    beat = beat or json.dumps({"event_type": "heartbeat", "time": int(time.time() * 1000)})
                    client.push(beat)

    def add(self, client: Client, subscription: Subscription) -> None:
        client.subscriptions.add(subscription)
        channel = self.channel(subscription.market)
        self._channels.setdefault(channel, {}).setdefault(subscription, set()).add(client)

    def remove(self, client: Client, subscription: Subscription) -> bool:
        if subscription not in client.subscriptions:
            return False
        client.subscriptions.discard(subscription)
        channel = self.channel(subscription.market)
        subs = self._channels.get(channel, {})
        clients = subs.get(subscription, set())
        clients.discard(client)
        if not clients:
            subs.pop(subscription, None)
            self._bases.pop((channel, subscription.interval.name), None)
        if not subs:
            self._channels.pop(channel, None)
        return True

    async def market_known(self, market: MarketKey) -> bool:
        """Is the market in `symbol_exchange`? A yes is remembered for a minute, so a crowd of
        subscribers costs one query per market, not one per socket."""
        seen = self._known.get(market)
        if seen is not None and time.monotonic() - seen < KNOWN_MARKET_SECONDS:
            return True
        known = await self._pool.run(lambda conn: reads.market_exists(conn, market))
        if known:
            self._known[market] = time.monotonic()
        return known

    async def recent_minutes(self, market: MarketKey) -> list[Bar]:
        """The market's minutes in Redis (see `live_minutes`), read at most once a second per market
        while the listener runs: every PUBLISH on the market's channel drops the cached copy. A
        minute the updater has meanwhile written is harmless (the database wins when merging)."""
        channel = self.channel(market)
        now = time.monotonic()
        cached = self._recent.get(channel)
        if cached is not None and now - cached[0] < LIVE_CACHE_SECONDS and self.listening.is_set():
            return cached[1]
        version = self._versions.get(channel, 0)
        minutes = await live_minutes(self._client, market, self._delimiter)
        if self._versions.get(channel, 0) == version:
            self._recent[channel] = (now, minutes)
        return minutes

    async def current_bar(self, subscription: Subscription) -> Bar | None:
        """The market's newest minute in Redis, rolled up to the interval."""
        minutes = await self.recent_minutes(subscription.market)
        if not minutes:
            return None
        return await self._rolled(self.channel(subscription.market), subscription, minutes[-1])

    async def run(self) -> None:
        """Listen until cancelled; reconnects (and re-subscribes) when Redis goes away."""
        attempt = 0
        pattern = self.channel(MarketKey("", "", "")).split(self._delimiter)[0] + "*"
        while True:
            redis = self._redis_factory()
            pubsub = redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.psubscribe(pattern)
                self.listening.set()
                attempt = 0
                log.info("listening for live bars on %s", pattern)
                async for message in pubsub.listen():
                    if message.get("type") == "pmessage":
                        await self._dispatch(message["channel"], message["data"])
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as error:
                self.listening.clear()
                self._recent.clear()
                delay = backoff_seconds(attempt, RECONNECT_BASE_SECONDS, RECONNECT_MAX_SECONDS)
                attempt += 1
                log.warning("live bar listener lost Redis (%s); retrying in %.1fs", error, delay)
                await asyncio.sleep(delay)
            finally:
                try:
                    await pubsub.aclose()
                    await redis.aclose()
                except (RedisError, OSError):
                    pass

    async def _dispatch(self, channel: bytes | str, data: bytes) -> None:
        name = channel.decode() if isinstance(channel, bytes) else channel
        self._versions[name] = self._versions.get(name, 0) + 1
        self._recent.pop(name, None)
        subscriptions = self._channels.get(name)
        if not subscriptions:
            return
        bar = parse_live_bar(data)
        if bar is None:
            log.warning("ignored a malformed bar on %s: %.200r", name, data)
            return
        for subscription, clients in list(subscriptions.items()):
            rolled = await self._rolled(name, subscription, bar)
            if rolled is None:
                continue
            text = subscription.message(rolled)
            for client in list(clients):
                client.push(text)
            self.delivered += len(clients)

    async def _rolled(self, channel: str, subscription: Subscription, bar: Bar) -> Bar | None:
        interval = subscription.interval
        if interval.name == "1m":
            return bar
        bucket_ms = interval.bucket_start(bar[0])
        key = (channel, interval.name)
        cached = self._bases.get(key)
        if cached is None or cached[0] != bar[0]:
            try:
                base = await self._base(subscription.market, bucket_ms, bar[0])
            except (DatabaseUnavailable, RedisError, OSError) as error:
                log.warning("cannot roll up %s %s: %s", channel, interval.name, error)
                return None
            cached = self._bases[key] = (bar[0], base)
        base = cached[1]
        return combine([base, bar], bucket_ms) if base is not None else (bucket_ms, *bar[1:])

    async def _base(self, market: MarketKey, bucket_ms: int, live_ms: int) -> Bar | None:
        """The bar of the minutes in [bucket_ms, live_ms): stored ones plus those waiting in Redis."""
        waiting = [
            b
            for b in await live_minutes(self._client, market, self._delimiter)
            if bucket_ms <= b[0] < live_ms
        ]
        return await self._pool.run(lambda conn: live_bucket(conn, market, bucket_ms, live_ms, waiting))
