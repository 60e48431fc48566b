"""A cache of rendered closed history for GET /api/ohlcvs, exact and dropped by every writer.

Bars are kept as the JSON text PostgreSQL renders for them (the same `format(...)` as the uncached
body), in blocks aligned to the interval: 1,000 bars, or about six weeks for intervals above 1h
(a year for 1M), keyed by (market, interval, time format, block start). A page is the newest
`limit` bars in [start, end]: the part that may still change - from the block holding the newest
stored minute less a settling time, and for 3h/14D/1M the bar holding `end` (the uncached query
builds it from the source buckets up to `end` only) - is read fresh with the uncached query; the
rest is sliced out of blocks by bisecting their bar times, and PostgreSQL renders only the blocks
not held.

Never stale: every writer bumps a version after its commit (`common.ohlcvs_versions`): one list
per market for `ohlcvs`, one for every refresh of the summaries, each entry naming the oldest bar
time written. Each request reads both versions (one Redis round trip, before anything is read from
the cache or PostgreSQL); on a change the blocks that reach that time are dropped (all of them when
more writes were missed than the list keeps), and a block rendered by a request that began before a
drop is not kept. Redis unreachable = the cache is bypassed. A block lives `WEB_CACHE_TTL_SECONDS`
at most, which bounds writes made outside the platform (psql); memory is bounded by `WEB_CACHE_MB`
with least-recently-used eviction.
"""

from __future__ import annotations

import time
from array import array
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from common.candle import MarketKey
from common.ohlcvs_versions import EARLIEST_MS, KEEP_ENTRIES, parse_entry
from common.redis_keys import OHLCVS_VERSION_SUMMARIES, ohlcvs_version_key
from common.timeutil import datetime_to_ms, ms_to_datetime
from web import reads
from web.database import AsyncPool
from web.reads import BUCKET_ORIGIN_MS, BarQuery, Interval

LATEST_MS = 253_402_300_799_999
BLOCK_BARS = 1000
BLOCK_SPAN_MS = 42 * 86_400_000


HEADS = "return {redis.call('LINDEX', KEYS[1], 0), redis.call('LINDEX', KEYS[2], 0)}"


def block_bounds(interval: Interval, time_ms: int) -> tuple[int, int]:
    """[start, end) of the block holding the bar that opens at `time_ms`."""
    if interval.width_ms == 0:
        year = ms_to_datetime(time_ms).year
        return datetime_to_ms(datetime(year, 1, 1, tzinfo=UTC)), datetime_to_ms(
            datetime(year + 1, 1, 1, tzinfo=UTC)
        )
    span = block_bars(interval) * interval.width_ms
    start = time_ms - (time_ms - BUCKET_ORIGIN_MS) % span
    return start, start + span


def block_bars(interval: Interval) -> int:
    """Bars a block holds at most."""
    if interval.width_ms == 0:
        return 12
    return max(1, min(BLOCK_BARS, BLOCK_SPAN_MS // interval.width_ms))


@dataclass(slots=True)
class Block:
    """Bars of one block: open times, and their JSON objects joined by commas."""

    times: array
    offsets: array  # offsets[i]: where bar i starts in `text`; offsets[n] = len(text) + 1
    text: bytes
    end_ms: int
    made: float

    @property
    def size(self) -> int:
        return len(self.text) + 8 * (len(self.times) + len(self.offsets)) + 200

    def window(self, lo: int, hi: int, most: int) -> tuple[bytes, int]:
        """The newest `most` bars with open time in [lo, hi]: (their text, how many)."""
        j = bisect_right(self.times, hi)
        i = max(bisect_left(self.times, lo, 0, j), j - most)
        if i >= j:
            return b"", 0
        return self.text[self.offsets[i] : self.offsets[j] - 1], j - i


@dataclass(slots=True)
class MarketState:
    synced: bool = False
    version: int | None = None
    generation: int = 0
    extent: tuple[int | None, int | None] | None = None
    extent_made: float = 0.0


@dataclass(slots=True)
class Stats:
    hits: int = 0
    misses: int = 0
    bypassed: int = 0
    dropped: int = 0
    evicted: int = 0


def changed_from(entries: list[bytes], seen: int | None) -> tuple[int | None, int | None]:
    """(newest version, oldest bar time written since `seen`) from a version list, newest first:
    None when nothing changed, `EARLIEST_MS` when the writes since `seen` are not all listed."""
    parsed = [parse_entry(e) for e in entries]
    if not parsed or parsed[0] is None:
        return None, EARLIEST_MS
    newest = parsed[0][0]
    lowest: int | None = None
    expect = newest
    for entry in parsed:
        if entry is None:
            break
        if entry[0] != expect:
            break
        if entry[0] == seen:
            return newest, lowest
        lowest = entry[1] if lowest is None else min(lowest, entry[1])
        expect -= 1
    return newest, EARLIEST_MS


async def body_from_database(fast: AsyncPool, query: BarQuery, as_ms: bool) -> tuple[int, str]:
    """(number of bars, comma-joined bar objects) of the bars `query` asks for, written by
    PostgreSQL in one prepared query (the uncached path)."""
    if reads.needs_minute_floor(query):
        row = await fast.fetchrow(reads.MINUTE_FLOOR_QUERY, *reads.minute_floor_arguments(query))
        query = reads.with_minute_floor(query, row[0] if row else None)
    sql = reads.bars_body_query(query.interval.name, as_ms)
    count, text = await fast.fetchrow(sql.text, *sql.arguments(reads.bars_body_values(query)))
    return count, text


class HistoryCache:
    def __init__(
        self, client: aioredis.Redis, fast: AsyncPool, delimiter: str, budget_bytes: int, ttl_seconds: float
    ):
        self._client = client
        self._heads = client.register_script(HEADS)  # one command: ~40 us less than a pipeline of two
        self._fast = fast
        self._delimiter = delimiter
        self.budget_bytes = budget_bytes
        self.ttl_seconds = ttl_seconds
        self._blocks: OrderedDict[tuple, Block] = OrderedDict()
        self._markets: dict[MarketKey, MarketState] = {}
        self._summaries_synced = False
        self._summaries_version: int | None = None
        self._summaries_generation = 0
        self.bytes = 0
        self.stats = Stats()

    @property
    def blocks(self) -> int:
        return len(self._blocks)

    async def body(self, query: BarQuery, as_ms: bool) -> tuple[int, bytes]:
        """(number of bars, JSON array) exactly as the uncached query gives them."""
        market, interval = query.market, query.interval
        start_ms, end_ms, limit = query.start_ms, query.end_ms, query.limit
        try:
            state = await self._sync(market)
        except (RedisError, OSError):
            self.stats.bypassed += 1
            count, text = await body_from_database(self._fast, query, as_ms)
            return count, ("[" + text + "]").encode()
        generation = (self._summaries_generation, state.generation)
        now = time.monotonic()
        extent = state.extent
        if extent is None or now - state.extent_made > self.ttl_seconds:
            row = await self._fast.fetchrow(reads.MARKET_EXTENT_QUERY, *market)
            extent = (row[0], row[1])
            if generation == (self._summaries_generation, state.generation):
                state.extent, state.extent_made = extent, now
        first, newest = extent
        lo = EARLIEST_MS if start_ms is None else start_ms
        hi = LATEST_MS if end_ms is None else end_ms
        fresh_from = (
            LATEST_MS + 1 if newest is None else block_bounds(interval, newest - interval.settle_ms)[0]
        )
        if end_ms is not None and interval.rollup_sql is not None:
            fresh_from = min(fresh_from, interval.bucket_start(hi))
        need, tail = limit, ""
        if newest is None or hi >= fresh_from:
            fresh = replace(query, start_ms=max(lo, fresh_from) if newest is not None else start_ms)
            count, tail = await body_from_database(self._fast, fresh, as_ms)
            if count >= limit or lo >= fresh_from or newest is None:
                return count, ("[" + tail + "]").encode()
            need, hi = limit - count, fresh_from - 1
        pieces: list[bytes] = []
        floor = max(lo, interval.bucket_start(first))
        cursor = hi
        while need > 0 and cursor >= floor:
            block_start, block_end = block_bounds(interval, cursor)
            wanted = BarQuery(market, interval, block_start, block_end - 1, block_bars(interval))
            block = await self._block(wanted, as_ms, generation, now)
            text, count = block.window(lo, hi, need)
            if count:
                pieces.append(text)
                need -= count
            cursor = block_start - 1
        pieces.reverse()
        if tail:
            pieces.append(tail.encode())
        return limit - need, b"[" + b",".join(pieces) + b"]"

    async def _block(self, query: BarQuery, as_ms: bool, generation: tuple[int, int], now: float) -> Block:
        """The block `query` spans (every bar of it), cached or read."""
        market, start_ms, end_ms = query.market, query.start_ms, query.end_ms + 1
        key = (market, query.interval.name, as_ms, start_ms)
        block = self._blocks.get(key)
        if block is not None and now - block.made <= self.ttl_seconds:
            self._blocks.move_to_end(key)
            self.stats.hits += 1
            return block
        self.stats.misses += 1
        sql = reads.bars_chunk_query(query.interval.name, as_ms)
        times, objects = await self._fast.fetchrow(sql.text, *sql.arguments(reads.bars_body_values(query)))
        offsets = array("q", [0])
        for text in objects:
            offsets.append(offsets[-1] + len(text) + 1)
        block = Block(array("q", times), offsets, ",".join(objects).encode(), end_ms, now)
        state = self._markets.get(market)
        if (
            self.budget_bytes > 0
            and state is not None
            and generation == (self._summaries_generation, state.generation)
        ):
            old = self._blocks.pop(key, None)
            if old is not None:
                self.bytes -= old.size
            self._blocks[key] = block
            self.bytes += block.size
            while self.bytes > self.budget_bytes and self._blocks:
                _, evicted = self._blocks.popitem(last=False)
                self.bytes -= evicted.size
                self.stats.evicted += 1
        return block

    async def _sync(self, market: MarketKey) -> MarketState:
        """Read the market's and the summaries' versions and drop what changed since last seen."""
        market_key = ohlcvs_version_key(*market, delimiter=self._delimiter)
        market_head, summaries_head = await self._heads(keys=[market_key, OHLCVS_VERSION_SUMMARIES])
        state = self._markets.get(market)
        if state is None:
            state = self._markets[market] = MarketState()
        version = _version(market_head)
        if not state.synced or version != state.version:
            entries = await self._client.lrange(market_key, 0, KEEP_ENTRIES - 1) if state.synced else []
            newest, from_ms = changed_from(entries, state.version) if state.synced else (version, None)
            if state.synced and (newest != state.version or from_ms is not None):
                self._drop(market, False, EARLIEST_MS if from_ms is None else from_ms)
                state.generation += 1
                state.extent = None
            state.synced, state.version = True, newest
        version = _version(summaries_head)
        if not self._summaries_synced or version != self._summaries_version:
            synced = self._summaries_synced
            entries = (
                await self._client.lrange(OHLCVS_VERSION_SUMMARIES, 0, KEEP_ENTRIES - 1) if synced else []
            )
            newest, from_ms = changed_from(entries, self._summaries_version) if synced else (version, None)
            if synced and (newest != self._summaries_version or from_ms is not None):
                self._drop(None, True, EARLIEST_MS if from_ms is None else from_ms)
                self._summaries_generation += 1
            self._summaries_synced, self._summaries_version = True, newest
        return state

    def _drop(self, market: MarketKey | None, summaries_only: bool, from_ms: int) -> None:
        """Forget the blocks (of `market`, or of every market) that reach `from_ms` or later."""
        for key in [
            k
            for k, block in self._blocks.items()
            if (market is None or k[0] == market)
            and not (summaries_only and k[1] == "1m")
            and block.end_ms > from_ms
        ]:
            self.bytes -= self._blocks.pop(key).size
            self.stats.dropped += 1


def _version(head: bytes | None) -> int | None:
    entry = parse_entry(head)
    return None if entry is None else entry[0]
