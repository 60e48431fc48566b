"""The automatic repair against the simulator, real PostgreSQL and real Redis: gaps found from
coverage, outages and failed requests are backfilled exactly, and a repair leaves user backfills
their rate budget."""

from __future__ import annotations

import asyncio
import time

import pytest

from common.candle import Market
from common.coverage import REST, read_coverage
from common.db import connection, upsert_markets
from common.timeutil import MINUTE_MS, floor_minute_ms, ms_to_datetime
from fetchers.exchanges import get_adapter
from fetchers.rest.engine import BackfillEngine, EngineOptions
from fetchers.rest.job_store import JobStore, job_scope
from fetchers.rest.jobs import create_job, plan_job
from fetchers.rest.markets import refresh_markets
from fetchers.rest.repair import plan_repair, submit_repair
from tests.support.backfill import day_aligned_range, run_job, stored_candles, truth_candles

pytestmark = pytest.mark.integration

HOUR = 60 * MINUTE_MS
SYMBOLS = ["BTCUSDT", "ETHBTC"]


def market_of(settings, exchange: str, symbol: str) -> tuple[str, str]:
    with connection(settings) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT base_id, quote_id FROM symbol_exchange WHERE exchange = %s AND symbol = %s",
            (exchange, symbol),
        )
        return cur.fetchone()


def test_gaps_outages_and_failed_requests_are_repaired_exactly(platform_settings, simulator):
    exchange = "binance"
    start, _ = day_aligned_range(simulator, days_back=3, days=1)
    run_job(platform_settings, exchange, start, start + 6 * HOUR, SYMBOLS)
    run_job(platform_settings, exchange, start + 8 * HOUR, start + 12 * HOUR, SYMBOLS)
    btc = market_of(platform_settings, exchange, "BTCUSDT")
    with connection(platform_settings) as conn, conn.cursor() as cur:
        cur.execute(  # the live feed lost half an hour after the last bar
            "INSERT INTO ohlcvs_outages (exchange, base_id, quote_id, start_time, end_time, reason) "
            "VALUES (%s, %s, %s, %s, %s, 'connection lost: test')",
            (
                exchange,
                *btc,
                ms_to_datetime(start + 12 * HOUR),
                ms_to_datetime(start + 12 * HOUR + 30 * MINUTE_MS),
            ),
        )
        cur.execute(  # a request before the first bar failed for good (more than a request before it)
            "INSERT INTO ohlcvs_errors (exchange, symbol, start_date, end_date, time_frame, ohlcv_section) "
            "VALUES (%s, 'BTCUSDT', %s, %s, '1m', 'hist')",
            (exchange, ms_to_datetime(start - 20 * HOUR), ms_to_datetime(start - 19 * HOUR)),
        )

    now_ms = simulator.clock()["current_minute_ms"]
    plan = plan_repair(platform_settings, exchange, now_ms)
    eth = market_of(platform_settings, exchange, "ETHBTC")
    assert plan.gaps == {
        btc: [
            (start - 20 * HOUR, start - 19 * HOUR),
            (start + 6 * HOUR, start + 8 * HOUR),
            (start + 12 * HOUR, start + 12 * HOUR + 30 * MINUTE_MS),
        ],
        eth: [(start + 6 * HOUR, start + 8 * HOUR)],
    }
    assert plan.missing_minutes == 60 + 120 + 30 + 120

    submission = asyncio.run(submit_repair(platform_settings, exchange))
    assert submission.new and submission.job.priority == "low"
    again = asyncio.run(submit_repair(platform_settings, exchange))
    assert not again.new and again.job.id == submission.job.id  # one repair at a time
    job = asyncio.run(BackfillEngine(platform_settings, submission.job.id).run())
    assert job.finished and job.failed == 0

    for symbol, ranges in (("BTCUSDT", plan.gaps[btc]), ("ETHBTC", plan.gaps[eth])):
        for begin, end in [*ranges, (start, start + 12 * HOUR)]:
            assert stored_candles(platform_settings, exchange, symbol, begin, end) == truth_candles(
                simulator, exchange, symbol, begin, end
            )
    # history now starts 20 hours earlier: the hours between are a gap too, for the next run
    assert plan_repair(platform_settings, exchange, now_ms).gaps == {btc: [(start - 19 * HOUR, start)]}
    second = asyncio.run(submit_repair(platform_settings, exchange))
    assert second.new and asyncio.run(BackfillEngine(platform_settings, second.job.id).run()).failed == 0
    assert plan_repair(platform_settings, exchange, now_ms).gaps == {}
    with connection(platform_settings) as conn:
        coverage = read_coverage(conn, exchange)
    assert coverage[eth][REST] == [(start, start + 12 * HOUR)]
    assert coverage[btc][REST] == [(start - 20 * HOUR, start + 12 * HOUR + 30 * MINUTE_MS)]
    assert asyncio.run(submit_repair(platform_settings, exchange)).job is None


@pytest.mark.parametrize("settle_minutes", [None, 10])
def test_the_newest_settle_minutes_are_left_to_the_live_feed(platform_settings, simulator, settle_minutes):
    """README: the repair plans up to the exchange's own present less `REPAIR_SETTLE_MINUTES` (3 by
    default): a gap reaching the present is planned up to there, and none of the newest minutes."""
    settings = platform_settings
    if settle_minutes is not None:
        settings = settings.model_copy(update={"repair_settle_minutes": settle_minutes})
    settle_ms = settings.repair_settle_minutes * MINUTE_MS
    exchange = "binance"
    btc = ("BTC", "USDT")
    clock_ms = simulator.clock()["current_minute_ms"]
    with connection(settings) as conn, conn.cursor() as cur:
        # Not from the exchange: a request of ours would keep the budget busy and the repair would
        # plan with this machine's clock instead of asking the exchange (see the test below).
        upsert_markets(conn, [Market(exchange, *btc, "BTCUSDT")])
        cur.execute(  # the live feed was lost an hour ago and is not back yet
            "INSERT INTO ohlcvs_outages (exchange, base_id, quote_id, start_time, end_time, reason) "
            "VALUES (%s, %s, %s, %s, %s, 'connection lost: test')",
            (exchange, *btc, ms_to_datetime(clock_ms - HOUR), ms_to_datetime(clock_ms + 24 * HOUR)),
        )

    before = simulator.clock()["current_minute_ms"]
    submission = asyncio.run(submit_repair(settings, exchange))
    after = simulator.clock()["current_minute_ms"]

    until = submission.plan.until_ms
    assert before - settle_ms <= until <= after - settle_ms, "the exchange's present less the settle time"
    assert submission.plan.gaps == {btc: [(clock_ms - HOUR, until)]}
    assert max(t.end_ms for t in submission.plan.tasks) == submission.job.end_ms == until


def test_a_user_backfill_keeps_at_least_90_percent_of_the_budget_while_a_repair_runs(
    platform_settings, simulator
):
    exchange = "binance"
    asyncio.run(refresh_markets(platform_settings, exchange))
    adapter = get_adapter(exchange)
    start, _ = day_aligned_range(simulator, days_back=25, days=20)

    async def scenario() -> tuple[int, int, int]:
        import redis.asyncio as aioredis

        from common.db import load_markets

        with connection(platform_settings) as conn:
            markets = load_markets(conn, exchange, trading_only=True)
        client = aioredis.from_url(platform_settings.redis_url)
        store = JobStore(client, job_scope(platform_settings))
        repair_job = await store.create(
            exchange,
            start,
            start + 20 * 1440 * MINUTE_MS,
            [m.symbol for m in markets],
            plan_job(adapter, markets, start, start + 20 * 1440 * MINUTE_MS),
            priority="low",
        )
        options = EngineOptions.from_settings(platform_settings, concurrency=2)
        repair = BackfillEngine(platform_settings, repair_job.id, options)
        repair_task = asyncio.create_task(repair.run())
        while repair.requests_sent < 5:
            await asyncio.sleep(0.05)
        user_job = await create_job(
            platform_settings,
            exchange,
            ms_to_datetime(start),
            ms_to_datetime(start + 10 * 1440 * MINUTE_MS),
            SYMBOLS,
        )
        user = BackfillEngine(platform_settings, user_job.id)
        before = repair.requests_sent
        user_task = asyncio.create_task(user.run())
        while user.requests_sent < user_job.total:  # the window in which the user backfill sends
            await asyncio.sleep(0.01)
        during = repair.requests_sent - before
        finished = await user_task
        while repair.requests_sent <= before + during + 3:  # the repair goes on once the budget is free
            await asyncio.sleep(0.05)
        await store.cancel(repair_job.id)
        await repair_task
        await client.aclose()
        assert finished.finished and finished.failed == 0
        return user.requests_sent, during, finished.total

    user_sent, repair_sent, user_total = asyncio.run(scenario())
    assert user_sent >= user_total
    assert user_sent >= 0.9 * (user_sent + repair_sent), (user_sent, repair_sent)
    assert simulator.stats()[exchange]["over_limit"] == 0


def two_hours_apart(platform_settings, simulator, exchange: str) -> None:
    """BTCUSDT backfilled for an hour 20 days ago and an hour 2 days ago: a repair has days to fill."""
    asyncio.run(refresh_markets(platform_settings, exchange))
    old, _ = day_aligned_range(simulator, days_back=20, days=1)
    recent, _ = day_aligned_range(simulator, days_back=2, days=1)
    run_job(platform_settings, exchange, old, old + HOUR, ["BTCUSDT"])
    run_job(platform_settings, exchange, recent, recent + HOUR, ["BTCUSDT"])


def test_a_repair_run_leaves_a_repair_being_drained_to_its_worker(platform_settings, simulator):
    """Beat runs come every interval; a repair that lasts longer must not take one more worker
    process per run: a run that finds the repair job drained by a live worker returns at once."""
    from celery_app.celery_tasks import repair_gaps

    exchange = "binance"
    two_hours_apart(platform_settings, simulator, exchange)
    submission = asyncio.run(submit_repair(platform_settings, exchange))
    assert submission.new and submission.job.total > 10

    async def scenario():
        draining = BackfillEngine(
            platform_settings, submission.job.id, EngineOptions.from_settings(platform_settings)
        )
        task = asyncio.create_task(draining.run())
        while draining.requests_sent < 2:
            await asyncio.sleep(0.02)
        result = await asyncio.to_thread(repair_gaps, exchange)
        job = await task
        return result, job, draining.requests_sent

    result, job, sent_by_first = asyncio.run(scenario())
    assert result["job"] == submission.job.id and result.get("busy") is True, result
    assert job.finished and job.failed == 0
    # the job counts every request any worker sent (retries too): all of them were the first's
    assert sent_by_first == job.sent >= job.total, "the run joined none: the first worker sent them all"


def test_repair_runs_that_start_together_plan_one_job_and_one_of_them_drains_it(platform_settings, simulator):
    """The beat's run at start-up can meet an overdue one, and several worker processes can take
    queued runs at once: runs of one exchange submit one after the other, so they share one job,
    and only the run that planned it joins it (the other sees it being drained and leaves it)."""
    exchange = "binance"
    two_hours_apart(platform_settings, simulator, exchange)

    async def together():
        runs = [submit_repair(platform_settings, exchange, worker_id=w) for w in ("first", "second")]
        return await asyncio.gather(*runs)

    submissions = asyncio.run(together())
    assert len({s.job.id for s in submissions}) == 1, submissions
    assert sorted(s.new for s in submissions) == [False, True]
    assert [s.joined for s in submissions] == [s.new for s in submissions]

    import redis.asyncio as aioredis

    async def repair_jobs():
        client = aioredis.from_url(platform_settings.redis_url)
        try:
            return await JobStore(client, job_scope(platform_settings)).jobs(exchange)
        finally:
            await client.aclose()

    assert [j.id for j in asyncio.run(repair_jobs()) if j.priority == "low"] == [submissions[0].job.id]


def test_the_repair_plans_with_the_live_feeds_clock_while_backfills_use_the_budget(
    platform_settings, simulator
):
    """Asking the exchange's clock at low priority would wait behind user backfills with the
    repair's worker held; while they use the budget the repair takes the live feed's clock, even
    with this machine's clock a week ahead of it (a wrong system clock): planning by this machine's
    would plan minutes the exchange has not had yet."""
    import redis.asyncio as aioredis

    from common.redis_keys import ws_health_key
    from fetchers.rest.rate_limiter import HIGH, SharedRateLimiter
    from fetchers.rest.repair import repair_now_ms

    exchange = "binance"
    feed_seen = floor_minute_ms(int(time.time() * 1000)) - 7 * 1440 * MINUTE_MS

    async def scenario() -> tuple[int, int, tuple[int, int, int], int]:
        client = aioredis.from_url(platform_settings.redis_url)
        try:
            await client.hset(ws_health_key(exchange), "exchange_time_ms", feed_seen)
            user = SharedRateLimiter(
                client,
                exchange,
                get_adapter(exchange).rate_limit(platform_settings),
                priority=HIGH,
                yield_seconds=platform_settings.repair_yield_seconds,
            )
            await user.acquire()  # a user backfill's request: the budget is busy
            sent = simulator.stats()[exchange]["rest_requests"]
            busy_now = await repair_now_ms(platform_settings, exchange, client)
            sent_busy = simulator.stats()[exchange]["rest_requests"] - sent
            await asyncio.sleep(await user.busy_seconds())
            await client.hdel(ws_health_key(exchange), "exchange_time_ms")
            before = simulator.clock()["now_ms"]
            free_now = await repair_now_ms(platform_settings, exchange, client)
            after = simulator.clock()["now_ms"]
            sent_free = simulator.stats()[exchange]["rest_requests"] - sent - sent_busy
            return busy_now, sent_busy, (before, free_now, after), sent_free
        finally:
            await client.aclose()

    busy_now, sent_busy, (before, free_now, after), sent_free = asyncio.run(scenario())
    assert (busy_now, sent_busy) == (feed_seen + MINUTE_MS, 0)
    assert sent_free == 1  # the budget free: the exchange's own clock
    assert before - MINUTE_MS <= free_now <= after + MINUTE_MS
