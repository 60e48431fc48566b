"""The shared rate budget, against a real Redis, with several limiter instances as separate workers."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis

from common.redis_keys import rate_budget_key
from fetchers.exchanges.base import FetchTask, RateLimit
from fetchers.rest.job_store import JobStore
from fetchers.rest.rate_limiter import HIGH, LOW, SharedRateLimiter

pytestmark = pytest.mark.integration


def max_in_any_window(events: list[tuple[float, int]], window: float) -> int:
    """Largest total weight granted inside any half-open window [t, t + window)."""
    events = sorted(events)
    best = 0
    for i, (start, _) in enumerate(events):
        total = sum(w for t, w in events[i:] if t < start + window)
        best = max(best, total)
    return best


async def grant_times(limiters, weights) -> list[tuple[float, int]]:
    granted: list[tuple[float, int]] = []

    async def one(limiter, weight):
        await limiter.acquire(weight)
        granted.append((time.monotonic(), weight))

    await asyncio.gather(*(one(limiters[i % len(limiters)], w) for i, w in enumerate(weights)))
    return granted


def test_two_workers_share_one_budget(redis_server):
    async def scenario():
        clients = [aioredis.Redis(port=redis_server.port, password=redis_server.password) for _ in range(2)]
        budget = RateLimit(capacity=40, window_seconds=1.0)
        limiters = [SharedRateLimiter(c, "binance", budget) for c in clients]
        await clients[0].flushall()
        events = await grant_times(limiters, [1] * 80)
        for c in clients:
            await c.aclose()
        return events

    events = asyncio.run(scenario())
    assert len(events) == 80
    assert max_in_any_window(events, 1.0) <= 40


def test_mixed_weights_never_exceed_capacity(redis_server):
    async def scenario():
        client = aioredis.Redis(port=redis_server.port, password=redis_server.password)
        await client.flushall()
        limiter = SharedRateLimiter(
            client, "binance", RateLimit(capacity=100, window_seconds=1.0, max_weight=10)
        )
        events = await grant_times([limiter], [10, 2, 2, 10, 2, 2, 2, 10] * 7)
        await client.aclose()
        return events

    assert max_in_any_window(asyncio.run(scenario()), 1.0) <= 100


def test_block_pauses_every_worker_and_never_shortens(redis_server):
    """Waits are the ones the limiter schedules on Redis's clock, so a busy machine cannot skew them."""

    async def scenario():
        clients = [aioredis.Redis(port=redis_server.port, password=redis_server.password) for _ in range(2)]
        await clients[0].flushall()
        budget = RateLimit(capacity=1000, window_seconds=1.0)
        first, second = (SharedRateLimiter(c, "bitfinex", budget) for c in clients)
        await first.block_for(2.0, "test ban")
        await first.block_for(0.1, "shorter block must not shorten the first")
        remaining = await second.blocked_seconds()
        waited = await second.acquire(1)
        other_waited = await SharedRateLimiter(clients[1], "binance", budget).acquire(1)
        for c in clients:
            await c.aclose()
        return remaining, waited, other_waited

    remaining, waited, other_waited = asyncio.run(scenario())
    assert 1.0 < remaining <= 2.0
    assert 1.0 < waited <= remaining
    assert other_waited == 0  # a block on one exchange leaves the others alone


def test_unlimited_mode_still_honours_exchange_blocks(redis_server):
    async def scenario():
        client = aioredis.Redis(port=redis_server.port, password=redis_server.password)
        await client.flushall()
        limiter = SharedRateLimiter(client, "bittrex", RateLimit(1, 60.0), unlimited=True)
        free = [await limiter.acquire(1) for _ in range(50)]
        await limiter.block_for(1.0, "429")
        blocked = await limiter.acquire(1)
        await client.aclose()
        return free, blocked

    free, blocked = asyncio.run(scenario())
    assert free == [0] * 50  # 50 requests against a 1-per-minute budget: pacing is really off
    assert 0.5 < blocked <= 1.0


def test_a_slot_reserved_before_a_pause_is_not_used_inside_it(redis_server):
    """The defect this guards: a request that had reserved its slot slept until it and went out
    although a 429 had paused the exchange meanwhile."""

    async def scenario():
        client = aioredis.Redis(port=redis_server.port, password=redis_server.password)
        await client.flushall()
        limiter = SharedRateLimiter(client, "binance", RateLimit(capacity=4, window_seconds=1.0))
        await limiter.acquire(1)  # the next slot is about 0.26 s away
        tat_key = limiter._tat_key
        before = int(await client.get(tat_key))
        waiting = asyncio.create_task(limiter.acquire(1))
        while int(await client.get(tat_key)) == before:  # until the waiting request holds its slot
            await asyncio.sleep(0.005)
        await limiter.block_for(1.0, "429 while a request waits for its slot")
        await waiting
        left_at_send = await limiter.blocked_seconds()
        await client.aclose()
        return left_at_send

    assert asyncio.run(scenario()) == 0


def test_low_priority_uses_only_the_budget_high_priority_leaves_free(redis_server):
    """A repair (low) that runs while a user backfill (high) drains gets a handful of slots at most;
    once the backfill is done, the repair gets the whole budget."""

    async def scenario():
        client = aioredis.Redis(port=redis_server.port, password=redis_server.password)
        await client.flushall()
        budget = RateLimit(capacity=60, window_seconds=1.0)
        high = SharedRateLimiter(client, "binance", budget, priority=HIGH, yield_seconds=0.5)
        low = SharedRateLimiter(client, "binance", budget, priority=LOW, yield_seconds=0.5)
        grants: list[str] = []

        async def worker(limiter, name: str, count: int | None) -> None:
            while count is None or count > 0:
                await limiter.acquire()
                grants.append(name)
                await asyncio.sleep(0.005)  # the request's round trip
                if count is not None:
                    count -= 1

        lows = [asyncio.create_task(worker(low, "low", None)) for _ in range(4)]
        await asyncio.sleep(0.2)  # the repair had the exchange to itself for a moment
        before = len(grants)
        await asyncio.gather(*(worker(high, "high", 30) for _ in range(4)))
        during = grants[before:]
        for task in lows:
            task.cancel()
        await asyncio.gather(*lows, return_exceptions=True)
        mark = len(grants)
        await asyncio.gather(*(worker(low, "low", 5) for _ in range(4)))
        await client.aclose()
        return before, during, grants[mark:]

    before, during, after = asyncio.run(scenario())
    assert before > 0
    assert during.count("high") == 120
    assert during.count("high") >= 0.9 * len(during), during.count("low")
    assert after == ["low"] * 20  # with the backfill over, the repair has the budget again


def test_a_claim_asks_the_limiter_in_the_same_round_trip(redis_server):
    """`JobStore.claim(..., gate=limiter)`: one script claims the request and asks the limiter, so a
    pause is seen, a paced slot is reserved only when a request was taken, and a backfill request
    costs one Redis command before it is sent instead of two."""

    async def scenario():
        client = aioredis.Redis(port=redis_server.port, password=redis_server.password)
        await client.flushall()
        store = JobStore(client)
        tasks = [
            FetchTask("binance", "BTCUSDT", "BTC", "USDT", i * 60_000, (i + 1) * 60_000) for i in range(3)
        ]
        job = await store.create("binance", 0, 3 * 60_000, ["BTCUSDT"], tasks)
        unlimited = SharedRateLimiter(client, "binance", RateLimit(1, 60.0), unlimited=True)
        paced = SharedRateLimiter(client, "binance", RateLimit(capacity=2, window_seconds=60.0))

        free = await store.claim(job.id, "w", unlimited)
        await unlimited.block_for(30.0, "429")
        await client.config_resetstat()
        paused = await store.claim(job.id, "w", unlimited)
        stats = await client.info("commandstats")
        commands = int(stats["cmdstat_evalsha"]["calls"])  # (the commands the script ran count too)
        slot = await store.claim(job.id, "w", paced, weight=1)
        tat_after_slot = await client.get(f"{rate_budget_key('binance')}:tat")
        empty = await store.claim(job.id, "w", paced, weight=1)
        tat_after_empty = await client.get(f"{rate_budget_key('binance')}:tat")
        await client.aclose()
        return free, commands, paused, slot, empty, tat_after_slot, tat_after_empty

    free, commands, paused, slot, empty, tat_after_slot, tat_after_empty = asyncio.run(scenario())
    assert free.task.start_ms == 0 and free.gate_wait_us == 0
    assert commands == 1
    assert 29_000_000 < paused.gate_wait_us <= 30_000_000  # the pause, as `acquire` would see it
    assert slot.task.start_ms == 2 * 60_000 and slot.gate_wait_us > 29_000_000  # at the pause end
    assert empty is None
    assert tat_after_slot is not None and tat_after_empty == tat_after_slot  # nothing reserved for no request
