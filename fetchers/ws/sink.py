"""The Redis side of a fetcher: every bar update becomes, in one round trip per burst,

- `ws_send_{exchange};;{base};;{quote}`: the latest bar (HSET, never back in time) and a PUBLISH
  of the same bar as compact JSON on the channel of that name;
- `ws_sub_…`: the bar for the updater (field = open time in ms), and the key in `ws_sub_list`;
- the fetcher's progress (newest bar time) and the exchange clock in its health hash;
- outage and coverage records for the updater to store (`common.redis_records`).

Bars wait in memory, newest update per (market, minute) wins, until Redis took them: while Redis is
down (or restarting) nothing is dropped, and the batch is retried with capped jittered backoff.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis.asyncio as aioredis
import redis.exceptions

from common.coverage import CoverageRange
from common.redis_keys import WS_OUTAGES, WS_SUB_LIST, ws_health_key, ws_progress_key, ws_send_key, ws_sub_key
from common.redis_records import OutageRecord, encode_record
from fetchers.exchanges.base import WsCandle

log = logging.getLogger(__name__)

MAX_BARS_PER_SCRIPT = 2000

# KEYS: ws_sub_list, progress hash, health hash, then (send key, sub key) per bar.
# ARGV: progress field, newest bar time (0: leave the clock; a flush in several scripts moves it in
# its last, as the updater may read between them), then (time, open, high, low, close, volume,
# closed 1/0) per bar. The JSON is built here, not in the fetcher: fewer and shorter arguments to
# send, and the fetcher's CPU is what limits its rate. A sub key needs SADD only when its field is
# new (HSET returns 1): the updater removes a key from the set in the same script that empties its
# hash.
STORE_BARS = """
local n = (#KEYS - 3) / 2
for i = 1, n do
  local send, sub = KEYS[2 + 2 * i], KEYS[3 + 2 * i]
  local a = 2 + (i - 1) * 7
  local t = ARGV[a + 1]
  local public = '{"time":' .. t .. ',"open":"' .. ARGV[a + 2] .. '","high":"' .. ARGV[a + 3] ..
    '","low":"' .. ARGV[a + 4] .. '","close":"' .. ARGV[a + 5] .. '","volume":"' .. ARGV[a + 6] .. '"}'
  local current = redis.call('HGET', send, 'time')
  if (not current) or tonumber(current) <= tonumber(t) then
    redis.call('HSET', send, 'time', t, 'open', ARGV[a + 2], 'high', ARGV[a + 3], 'low', ARGV[a + 4],
               'close', ARGV[a + 5], 'volume', ARGV[a + 6])
    redis.call('PUBLISH', send, public)
  end
  if ARGV[a + 7] == '1' then
    public = string.sub(public, 1, -2) .. ',"closed":true}'
  end
  if redis.call('HSET', sub, t, public) == 1 then
    redis.call('SADD', KEYS[1], sub)
  end
end
local newest = tonumber(ARGV[2])
if newest > 0 then
  if newest > tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0') then
    redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
  end
  if newest > tonumber(redis.call('HGET', KEYS[3], 'exchange_time_ms') or '0') then
    redis.call('HSET', KEYS[3], 'exchange_time_ms', ARGV[2])
  end
end
return n
"""


@dataclass(frozen=True, slots=True)
class MarketKeys:
    """A subscribed market and its Redis key names, built once."""

    exchange: str
    base_id: str
    quote_id: str
    symbol: str
    send_key: str
    sub_key: str

    @classmethod
    def build(cls, exchange: str, base_id: str, quote_id: str, symbol: str, delimiter: str) -> MarketKeys:
        return cls(
            exchange,
            base_id,
            quote_id,
            symbol,
            ws_send_key(exchange, base_id, quote_id, delimiter),
            ws_sub_key(exchange, base_id, quote_id, delimiter),
        )


class RedisSink:
    def __init__(
        self,
        client: aioredis.Redis,
        exchange: str,
        label: str,
        backoff: Callable[[int], float],
    ) -> None:
        self.client = client
        self.exchange = exchange
        self.label = label
        self.backoff = backoff
        self.health_key = ws_health_key(exchange)
        self.progress_key = ws_progress_key(exchange)
        self._bars: dict[tuple[str, int], tuple[MarketKeys, WsCandle, float]] = {}
        self._records: list[OutageRecord | CoverageRange] = []
        self._wake = asyncio.Event()
        self._sha: str | None = None
        self._stopping = False
        self.newest_ms = 0
        self.bars_stored = 0
        self.redis_up = True
        self.latencies: list[float] | None = None
        """When a list, each flushed bar appends (seconds from frame receipt to Redis reply)."""

    # ---- producers (connection loops): never block

    def add(self, market: MarketKeys, candle: WsCandle, received: float) -> None:
        key = (market.sub_key, candle.time)
        previous = self._bars.get(key)
        self._bars[key] = (market, candle, previous[2] if previous else received)
        if candle.time > self.newest_ms:
            self.newest_ms = candle.time
        self._wake.set()

    def add_records(self, records: list[OutageRecord | CoverageRange]) -> None:
        """Outage and coverage records, queued on `ws_outages` behind the bars added before them."""
        self._records.extend(records)
        self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._bars)

    # ---- the writer task

    def stop(self) -> None:
        """End `run` at its next turn, even if a Redis call swallowed the task's cancel (the owner
        then flushes what is left itself)."""
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        """Flush whatever is waiting, as one pipeline, until cancelled or stopped."""
        attempt = 0
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()
            if self._stopping:
                return
            try:
                await self.flush()
                attempt = 0
                self.redis_up = True
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
                if self.redis_up:
                    log.warning(
                        "%s: Redis unavailable (%s); keeping %d bars in memory",
                        self.exchange,
                        exc,
                        self.pending,
                    )
                self.redis_up = False
                await asyncio.sleep(self.backoff(attempt))
                attempt += 1
                self._wake.set()

    async def flush(self) -> int:
        bars, self._bars = self._bars, {}
        records, self._records = self._records, []
        if not bars and not records:
            return 0
        try:
            await self._store(list(bars.values()), records)
        except BaseException:
            bars.update(self._bars)  # updates that arrived meanwhile are newer
            self._bars = bars
            self._records[:0] = records
            raise
        done = time.perf_counter()
        if self.latencies is not None:
            self.latencies.extend(done - received for _, _, received in bars.values())
        self.bars_stored += len(bars)
        return len(bars)

    async def _store(
        self, bars: list[tuple[MarketKeys, WsCandle, float]], records: list[OutageRecord | CoverageRange]
    ) -> None:
        if self._sha is None:
            self._sha = await self.client.script_load(STORE_BARS)
        pipe = self.client.pipeline(transaction=False)
        starts = range(0, max(len(bars), 1), MAX_BARS_PER_SCRIPT)
        for start in starts:
            chunk = bars[start : start + MAX_BARS_PER_SCRIPT]
            keys = [WS_SUB_LIST, self.progress_key, self.health_key]
            # the clock closes bars by time: it moves with the flush's last script, once all are in
            args: list[str | int] = [self.label, self.newest_ms if start == starts[-1] else 0]
            for market, candle, _ in chunk:
                keys += (market.send_key, market.sub_key)
                args += (
                    candle.time,
                    candle.open,
                    candle.high,
                    candle.low,
                    candle.close,
                    candle.volume,
                    "1" if candle.closed else "0",
                )
            pipe.evalsha(self._sha, len(keys), *keys, *args)
        if records:
            pipe.rpush(WS_OUTAGES, *map(encode_record, records))
        try:
            await pipe.execute()
        except redis.exceptions.NoScriptError:
            self._sha = None  # Redis restarted and forgot the script: load it and try again
            await self._store(bars, records)
