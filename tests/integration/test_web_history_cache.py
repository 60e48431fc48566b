"""The cache of rendered history (`web.history_cache`): the same bytes as the uncached path for every
interval, time format, limit and window, and never stale after a REST backfill overwrites history or
the updater fills a missing minute. Two real servers on one real PostgreSQL and Redis: one with the
cache, one without (`WEB_CACHE_MB=0`)."""

from __future__ import annotations

import asyncio
import random
from contextlib import ExitStack
from urllib.parse import urlencode
from urllib.request import urlopen

import pytest
import redis
import redis.asyncio as aioredis

from common.candle import Market, MarketKey
from common.db import connection, refresh_aggregates, upsert_markets
from common.redis_keys import ws_health_key
from common.timeutil import ms_to_datetime
from fetchers.ws.updater import Updater
from tests.support.backfill import day_aligned_range, run_job
from tests.support.services import free_port
from tests.support.web import (
    BASE_MS,
    http_get,
    imitate_waiting_minute,
    known_candle,
    minute_dict,
    running_web,
    seed_known_data,
)
from web.database import AsyncPool
from web.history_cache import HistoryCache, body_from_database
from web.reads import INTERVALS, BarQuery

pytestmark = pytest.mark.integration

MIN = 60_000
DAY = 1440 * MIN
MARKET = Market("binance", "BTC", "USDT", "BTCUSDT")
SPARSE = range(0, 420 * 1440, 997)  # one minute in 997 over 420 days: every level has closed blocks
DENSE_FROM = 420 * 1440
DENSE = range(DENSE_FROM, DENSE_FROM + 3 * 1440)  # then three days of every minute
HOLES = {SPARSE[200], DENSE_FROM + 1000, DENSE_FROM + 1001}
MINUTES = sorted(i for i in {*SPARSE, *DENSE} if i not in HOLES)


def raw(base: str, **params) -> bytes:
    query = {"exchange": MARKET.exchange, "base_id": MARKET.base_id, "quote_id": MARKET.quote_id, **params}
    with urlopen(f"{base}/api/ohlcvs?" + urlencode({k: v for k, v in query.items() if v is not None})) as r:
        return r.read()


def cache_stats(base: str) -> dict:
    return http_get(f"{base}/api/health")[1]["web"]["history_cache"]


def windows(rng: random.Random, first_ms: int, last_ms: int, count: int) -> list[dict]:
    """Fixed edge cases, then random windows: unaligned ms, open ends, limits from 1 to the maximum."""
    out = [{}, {"limit": 5000}, {"end": last_ms - 3 * DAY}, {"start": first_ms, "limit": 5000}]
    for _ in range(count):
        a, b = sorted(rng.randrange(first_ms - DAY, last_ms + DAY) for _ in range(2))
        out.append(
            {
                "start": None if rng.random() < 0.2 else a,
                "end": None if rng.random() < 0.2 else b,
                "limit": rng.choice([1, 2, 17, 500, 1500, 5000]),
            }
        )
    return out


def assert_same_bytes(cached: str, plain: str, cases: list[dict]) -> int:
    """Every case through both servers for every interval and time format; returns bars compared."""
    bars = 0
    for interval in INTERVALS:
        for mls in ("true", "false"):
            for case in cases:
                params = {"interval": interval, "results_mls": mls, **case}
                body = raw(cached, **params)
                assert body == raw(plain, **params), params
                bars += body.count(b'"time"')
    return bars


@pytest.fixture
def servers(settings):
    with ExitStack() as stack:
        cached = stack.enter_context(running_web(settings))
        plain = stack.enter_context(running_web(settings.model_copy(update={"web_cache_mb": 0})))
        yield cached, plain


def test_cached_pages_are_the_uncached_bytes_and_an_updater_fill_shows_at_once(settings, servers):
    seed_known_data(settings, [MARKET], MINUTES)
    cached, plain = servers
    first_ms, last_ms = BASE_MS, BASE_MS + MINUTES[-1] * MIN
    cases = windows(random.Random(14), first_ms, last_ms, 12)

    assert assert_same_bytes(cached, plain, cases) > 100_000
    warm = cache_stats(cached)
    assert warm["blocks"] > 0 and warm["bytes"] > 0 and warm["misses"] > 0
    assert assert_same_bytes(cached, plain, cases) > 100_000
    again = cache_stats(cached)
    assert again["hits"] > warm["hits"] and again["misses"] == warm["misses"], "the second pass is served"

    # The live pipeline brings three minutes the database lacked, inside blocks the cache holds.
    client = redis.Redis.from_url(settings.redis_url)
    filled = [known_candle(MARKET, i) for i in sorted(HOLES)]
    for candle in filled:
        imitate_waiting_minute(client, settings, MARKET, minute_dict(candle))
    client.hset(ws_health_key(MARKET.exchange), "exchange_time_ms", last_ms + 10 * MIN)
    assert Updater(settings, client).flush().inserted == len(filled)

    for candle in filled:  # each filled minute is in the cached server's answer right away
        t = minute_dict(candle)["time"]
        body = raw(cached, interval="1m", start=t - 5 * MIN, end=t + 5 * MIN)
        assert raw(plain, interval="1m", start=t - 5 * MIN, end=t + 5 * MIN) == body
        assert f'"time":{t},'.encode() in body
    assert assert_same_bytes(cached, plain, cases) > 100_000
    after = cache_stats(cached)
    assert after["dropped"] > again["dropped"] and after["hits"] > again["hits"]


def test_a_backfill_overwriting_cached_history_is_served_at_once(platform_settings, simulator):
    settings = platform_settings
    start_ms, end_ms = day_aligned_range(simulator, days_back=25, days=1)  # within the simulator's history
    with connection(settings) as conn:
        upsert_markets(conn, [MARKET])
    # Our own values over the range the backfill will overwrite, and history up to yesterday.
    offset = (start_ms - BASE_MS) // MIN
    minutes = [*range(offset - 3 * 1440, offset + 1440), *range(offset + 1440, offset + 24 * 1440, 61)]
    seed_known_data(settings, [MARKET], minutes)
    cases = windows(random.Random(7), start_ms - DAY, end_ms + DAY, 10)
    with ExitStack() as stack:
        cached = stack.enter_context(running_web(settings))
        plain = stack.enter_context(running_web(settings.model_copy(update={"web_cache_mb": 0})))
        before = raw(cached, interval="1m", start=start_ms, end=end_ms - 1, limit=1440)
        assert_same_bytes(cached, plain, cases)
        warm = cache_stats(cached)
        assert warm["blocks"] > 0

        job = run_job(settings, MARKET.exchange, start_ms, end_ms, [MARKET.symbol])
        assert job.finished and job.failed == 0 and job.refreshed

        after = raw(cached, interval="1m", start=start_ms, end=end_ms - 1, limit=1440)
        assert after != before and after == raw(
            plain, interval="1m", start=start_ms, end=end_ms - 1, limit=1440
        )
        assert_same_bytes(cached, plain, cases)
        assert cache_stats(cached)["dropped"] > warm["dropped"]


def test_a_write_outside_the_platform_shows_in_every_summary_after_a_refresh(settings, servers):
    seed_known_data(settings, [MARKET], MINUTES)
    cached, plain = servers
    first_ms, last_ms = BASE_MS, BASE_MS + MINUTES[-1] * MIN
    cases = windows(random.Random(3), first_ms, last_ms, 8)
    assert_same_bytes(cached, plain, cases)
    warm = cache_stats(cached)

    # A psql UPDATE of old minutes (no version bump), then the refresh command's function.
    changed_ms = BASE_MS + SPARSE[100] * MIN
    with connection(settings) as conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE ohlcvs SET high = high + 1000, volume = volume + 1 WHERE exchange = %s AND time >= %s",
            (MARKET.exchange, ms_to_datetime(changed_ms)),
        )
    refresh_aggregates(settings, ms_to_datetime(changed_ms), None)

    summaries = [i for i in INTERVALS if i != "1m"]
    for interval in summaries:
        for mls in ("true", "false"):
            for case in cases:
                params = {"interval": interval, "results_mls": mls, **case}
                assert raw(cached, **params) == raw(plain, **params), params
    assert cache_stats(cached)["dropped"] > warm["dropped"]


def test_without_redis_the_cache_is_bypassed_never_trusted(settings):
    seed_known_data(settings, [MARKET], MINUTES)
    interval = INTERVALS["1m"]
    key = MarketKey(MARKET.exchange, MARKET.base_id, MARKET.quote_id)
    end_ms = BASE_MS + DENSE_FROM * MIN - 1

    async def go() -> tuple[bytes, str, HistoryCache]:
        fast = AsyncPool(settings, 2)
        await fast.open()
        gone = aioredis.from_url(f"redis://127.0.0.1:{free_port()}", socket_connect_timeout=1)
        cache = HistoryCache(gone, fast, settings.redis_key_delimiter, 2**20, 60)
        try:
            query = BarQuery(key, interval, None, end_ms, 500)
            _, body = await cache.body(query, True)
            _, text = await body_from_database(fast, query, True)
            return body, text, cache
        finally:
            await gone.aclose()
            await fast.close()

    body, text, cache = asyncio.run(go())
    assert body == ("[" + text + "]").encode() and body.count(b'"time"') == 500
    assert cache.stats.bypassed == 1 and cache.blocks == 0 and cache.stats.misses == 0
