"""One REST rate budget per exchange, shared by every worker on every machine through Redis.

Each request reserves its slot atomically (a Lua script on Redis's own clock, so machines with
skewed clocks still agree): slots are spaced `window / capacity` apart per unit of weight, which
keeps every sliding window — and so every fixed window an exchange may count in — at or under the
limit while running right at it (`RateLimit` keeps a safety margin for network jitter).

When the exchange signals trouble (429 + Retry-After, Binance's 418 ban, a used-weight header near
the limit) `block_for` pauses every worker of that exchange: nothing is sent until the pause ends.
A request that reserved its slot before the pause looks at the pause again right before it is
sent, and if one began meanwhile it plans a new slot after it — so reserved requests never go out
inside a pause, and the slots planned before it are void (the pacing restarts at its end).

Requests have a priority. User backfills are `HIGH`; the automatic repair is `LOW` and uses only
the budget they leave free: every high-priority reservation marks the exchange busy until
`yield_seconds` after its slot, and a low-priority request reserves nothing while that mark is on
(it waits and asks again), so a user backfill that starts while a repair runs loses at most the
few slots the repair had already reserved.

A refusal that carries the exchange's own count (Binance's used weight) also tells us the real limit
for this IP — lower than configured when another program shares it: `learn_refusal` slows every
worker to that pace for `LEARNED_WINDOWS` windows, so the next windows do not overflow again.
"""

from __future__ import annotations

import asyncio
import logging
import time

import redis.asyncio as aioredis

from common.redis_keys import rate_budget_key
from fetchers.exchanges.base import RateLimit
from fetchers.rest.metrics import PAUSE_SECONDS

log = logging.getLogger(__name__)

LEARNED_WINDOWS = 10

GATE_LUA = """
local function gate(k, a)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  if a[1] == 'unlimited' then
    local current = tonumber(redis.call('GET', k[2]) or '0')
    if current > now then return current - now end
    return 0
  end
  if a[4] == 'low' then
    local busy = tonumber(redis.call('GET', k[4]) or '0')
    if busy > now then return now - busy end
  end
  local interval = tonumber(a[2])
  local learned = tonumber(redis.call('GET', k[3]) or '0')
  if learned > interval then interval = learned end
  local weight = tonumber(a[3])
  local start = now
  local blocked = tonumber(redis.call('GET', k[2]) or '0')
  if blocked > start then start = blocked end
  local tat = tonumber(redis.call('GET', k[1]) or '0')
  if tat > start then start = tat end
  local next_tat = start + interval * weight
  redis.call('SET', k[1], string.format('%d', next_tat), 'PX', math.ceil((next_tat - now) / 1000) + 60000)
  if a[4] == 'high' then
    local busy_until = next_tat + tonumber(a[5])
    if busy_until > tonumber(redis.call('GET', k[4]) or '0') then
      local ttl = math.ceil((busy_until - now) / 1000) + 1000
      redis.call('SET', k[4], string.format('%d', busy_until), 'PX', ttl)
    end
  end
  return start - now
end
"""
"""The Lua function `gate(keys, args)` behind `acquire`'s first ask, for scripts that do more in the
same round trip (the job store's claim): with the limit off it only reads the pause (microseconds
left, 0 if none); with it on it reserves the slot (microseconds until it, negative when a
low-priority request must wait for user backfills and reserved nothing). `keys` and `args` come from
`SharedRateLimiter.gate_call`."""

_GATE = GATE_LUA + "return gate(KEYS, ARGV)\n"

_BLOCK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local until_us = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if until_us > current then
  local ttl = math.ceil(tonumber(ARGV[1]) / 1000) + 60000
  redis.call('SET', KEYS[1], string.format('%d', until_us), 'PX', ttl)
  redis.call('SET', KEYS[2], string.format('%d', until_us), 'PX', ttl)
  return 1
end
return 0
"""

_BLOCKED_FOR = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current > now then return current - now end
return 0
"""


HIGH = "high"
LOW = "low"
PRIORITIES = (HIGH, LOW)
DEFAULT_YIELD_SECONDS = 2.0


class SharedRateLimiter:
    """Reserve-then-wait pacing for one exchange; `unlimited=True` turns pacing off (benchmarks),
    never the pauses."""

    def __init__(
        self,
        client: aioredis.Redis,
        exchange: str,
        limit: RateLimit,
        unlimited: bool = False,
        priority: str = HIGH,
        yield_seconds: float = DEFAULT_YIELD_SECONDS,
    ):
        if priority not in PRIORITIES:
            raise ValueError(f"unknown priority {priority!r}")
        self.client = client
        self.exchange = exchange
        self.limit = limit
        self.unlimited = unlimited
        self.priority = priority
        self.yield_us = int(yield_seconds * 1_000_000)
        base = rate_budget_key(exchange)
        self._busy_key = f"{base}:high-busy-until"
        self._tat_key = f"{base}:tat"
        self._blocked_key = f"{base}:blocked"
        self._learned_key = f"{base}:learned-interval"
        self._gate = client.register_script(_GATE)
        self._block = client.register_script(_BLOCK)
        self._blocked_for = client.register_script(_BLOCKED_FOR)

    def gate_call(self, weight: int = 1) -> tuple[list[str], list[str | int]]:
        """The keys and args of `GATE_LUA`'s `gate` for one request of `weight`."""
        mode = "unlimited" if self.unlimited else "paced"
        return (
            [self._tat_key, self._blocked_key, self._learned_key, self._busy_key],
            [mode, self.limit.interval_us(), weight, self.priority, self.yield_us],
        )

    async def acquire(self, weight: int = 1, first_wait_us: int | None = None) -> float:
        """Wait until this request may be sent: its slot has come and no pause is on. Returns the
        seconds waited. Call it right before sending; nothing awaited in between. `first_wait_us`:
        what a `gate` run in the same script as the request's claim answered (saves a round trip)."""
        waited = 0.0
        while True:
            if first_wait_us is None:
                keys, args = self.gate_call(weight)
                wait_us = await self._gate(keys=keys, args=args)
            else:
                wait_us, first_wait_us = first_wait_us, None
            wait = int(wait_us) / 1_000_000
            if wait < 0:  # low priority, and user backfills are using the budget: nothing reserved
                await asyncio.sleep(-wait)
                waited -= wait
                continue
            if wait <= 0:
                return waited  # the script saw no pause at this very moment
            await asyncio.sleep(wait)
            waited += wait
            if await self.blocked_seconds() <= 0:
                return waited

    async def block_for(self, seconds: float, reason: str) -> None:
        """Pause every worker of this exchange for `seconds` (never shortens an existing pause);
        slots reserved before it are void."""
        extended = await self._block(keys=[self._blocked_key, self._tat_key], args=[int(seconds * 1_000_000)])
        if extended:
            PAUSE_SECONDS.labels(self.exchange).inc(seconds)
            log.warning("%s: all requests paused for %.1fs: %s", self.exchange, seconds, reason)

    async def learn_refusal(self, used: int) -> None:
        """The exchange refused a request when its count for this IP was `used`: pace every worker
        to that for the next windows (only ever slower than configured)."""
        interval = self.limit.refused_interval_us(used)
        if interval <= self.limit.interval_us():
            return
        ttl = int(self.limit.window_seconds * LEARNED_WINDOWS * 1000)
        previous = float(await self.client.get(self._learned_key) or 0)
        await self.client.set(self._learned_key, f"{max(interval, previous):.0f}", px=ttl)
        if interval > previous:
            log.warning(
                "%s: refused at %d weight used (configured %d): pacing to that for %d windows",
                self.exchange,
                used,
                self.limit.capacity,
                LEARNED_WINDOWS,
            )

    async def busy_seconds(self) -> float:
        """How long user backfills keep the budget busy: what a low-priority request waits now."""
        return int(await self._blocked_for(keys=[self._busy_key])) / 1_000_000

    async def blocked_seconds(self) -> float:
        return int(await self._blocked_for(keys=[self._blocked_key])) / 1_000_000

    async def note_used_weight(self, used: int) -> None:
        """React to the exchange's own count (e.g. Binance X-MBX-USED-WEIGHT-1M): when other users
        of this IP push it near the limit, wait for the exchange's window to reset."""
        if self.limit.near_limit(used):
            window = self.limit.window_seconds
            remaining = window - (time.time() % window) + 0.05
            await self.block_for(remaining, f"exchange reports {used}/{self.limit.capacity} weight used")
