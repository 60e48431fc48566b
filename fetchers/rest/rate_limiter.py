"""One REST rate budget per exchange, shared by every worker on every machine through Redis.

Each request reserves its slot atomically (a Lua script on Redis's own clock, so machines with
skewed clocks still agree): slots are spaced `window / capacity` apart per unit of weight, which
keeps every sliding window — and so every fixed window an exchange may count in — at or under the
limit while running right at it. A small safety margin absorbs network jitter between our send
and the exchange's count. When the exchange signals trouble (429 + Retry-After, Binance's 418 ban,
a used-weight header near the limit) `block_until`/`block_for` pauses every worker of that exchange.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import redis.asyncio as aioredis

from common.redis_keys import rate_budget_key

log = logging.getLogger(__name__)

SAFETY_FRACTION = 0.98

_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local weight = tonumber(ARGV[2])
local start = now
local blocked = tonumber(redis.call('GET', KEYS[2]) or '0')
if blocked > start then start = blocked end
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat > start then start = tat end
local next_tat = start + interval * weight
redis.call('SET', KEYS[1], string.format('%d', next_tat), 'PX', math.ceil((next_tat - now) / 1000) + 60000)
return start - now
"""

_BLOCK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local until_us = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if until_us > current then
  redis.call('SET', KEYS[1], string.format('%d', until_us), 'PX', math.ceil(tonumber(ARGV[1]) / 1000) + 1000)
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


@dataclass(frozen=True, slots=True)
class Budget:
    """`capacity` weight units per `window_seconds`; `max_weight` is the heaviest single request."""

    capacity: int
    window_seconds: float
    max_weight: int = 1

    def effective_capacity(self) -> float:
        """Capacity kept after the safety margin and the mixed-weight slack (see module doc)."""
        return max(self.capacity * SAFETY_FRACTION - (self.max_weight - 1), 1.0)

    def interval_us(self) -> float:
        return self.window_seconds * 1_000_000 / self.effective_capacity()


def budget_for(adapter, settings) -> Budget:
    """The budget of an exchange adapter under the configured limits (room kept for its heaviest
    request)."""
    limit = adapter.rate_limit(settings)
    return Budget(limit.capacity, limit.window_seconds, adapter.max_request_weight)


class SharedRateLimiter:
    """Reserve-then-wait pacing for one exchange; `unlimited=True` turns pacing off (benchmarks)."""

    def __init__(self, client: aioredis.Redis, exchange: str, budget: Budget, unlimited: bool = False):
        self.client = client
        self.exchange = exchange
        self.budget = budget
        self.unlimited = unlimited
        base = rate_budget_key(exchange)
        self._tat_key = f"{base}:tat"
        self._blocked_key = f"{base}:blocked"
        self._reserve = client.register_script(_RESERVE)
        self._block = client.register_script(_BLOCK)
        self._blocked_for = client.register_script(_BLOCKED_FOR)

    async def acquire(self, weight: int = 1) -> float:
        """Wait for this request's slot; returns the seconds waited."""
        if self.unlimited:
            wait_us = await self._blocked_for(keys=[self._blocked_key])
        else:
            wait_us = await self._reserve(
                keys=[self._tat_key, self._blocked_key], args=[self.budget.interval_us(), weight]
            )
        wait = int(wait_us) / 1_000_000
        if wait > 0:
            await asyncio.sleep(wait)
        return wait

    async def block_for(self, seconds: float, reason: str) -> None:
        """Pause every worker of this exchange for `seconds` (never shortens an existing block)."""
        extended = await self._block(keys=[self._blocked_key], args=[int(seconds * 1_000_000)])
        if extended:
            log.warning("%s: all requests paused for %.1fs: %s", self.exchange, seconds, reason)

    async def blocked_seconds(self) -> float:
        return int(await self._blocked_for(keys=[self._blocked_key])) / 1_000_000

    async def note_used_weight(self, used: int) -> None:
        """React to the exchange's own count (e.g. Binance X-MBX-USED-WEIGHT-1M): when other users
        of this IP push it near the limit, wait for the exchange's window to reset."""
        if used >= self.budget.capacity * SAFETY_FRACTION:
            window = self.budget.window_seconds
            remaining = window - (time.time() % window) + 0.05
            await self.block_for(remaining, f"exchange reports {used}/{self.budget.capacity} weight used")
