"""The REST backfill against the simulator, real PostgreSQL and real Redis.

The simulator enforces the exchanges' limits (scaled to 3-second windows) and the platform is given
exactly those limits, so any request over the limit shows up in the simulator's `over_limit`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from contextlib import contextmanager
from urllib.error import HTTPError
from urllib.request import urlopen

import pytest
import redis
import redis.asyncio as aioredis
from pydantic import SecretStr

from common.candle import Market
from common.coverage import REST, WS, read_coverage
from common.db import AGGREGATE_LEVELS, connection, load_markets, upsert_markets
from common.timeutil import ms_to_datetime
from fetchers.exchanges import get_adapter
from fetchers.rest.engine import BackfillEngine, EngineOptions
from fetchers.rest.job_store import JobStore
from fetchers.rest.jobs import create_job
from fetchers.rest.markets import refresh_markets
from simulator.config import SimConfig
from tests.support.backfill import (
    DAY_MS,
    RecordingProxy,
    assert_matches_truth,
    day_aligned_range,
    pauses,
    requests_inside_pauses,
    run_job,
    stored_candles,
    timeline,
    truth_candles,
)
from tests.support.services import RedisServer
from tests.support.simulator import running_simulator, simulator_process

pytestmark = pytest.mark.integration

MARKETS = {
    "bitfinex": ["tBTCUSD", "tAAVE:USD", "tXRPUSD"],  # XRPUSD trades in a quarter of the minutes
    "binance": ["BTCUSDT", "ETHBTC", "1INCHUSDT"],
    "bittrex": ["BTC-USD", "ETH-BTC", "1INCH-BTC"],
}


def _listed(sim, exchange: str, wanted: list[str]) -> list[str]:
    prefix = "t" if exchange == "bitfinex" else ""
    listed = {prefix + m["symbol"] for m in sim.markets(exchange)}
    chosen = [s for s in wanted if s in listed]
    assert len(chosen) >= 2, f"simulator lists too few of {wanted}"
    return chosen


@pytest.mark.parametrize("exchange", ["bitfinex", "binance", "bittrex"])
def test_multi_day_backfill_equals_ground_truth(exchange, platform_settings, simulator):
    symbols = _listed(simulator, exchange, MARKETS[exchange])
    days = 1.5 if exchange == "binance" else 3.25  # a part day at each end for Bittrex's day requests
    start_ms, end_ms = day_aligned_range(simulator, days_back=4.6, days=days)

    job = run_job(platform_settings, exchange, start_ms, end_ms, symbols)

    assert job.finished and job.failed == 0 and job.refreshed
    rows = assert_matches_truth(platform_settings, simulator, exchange, symbols, start_ms, end_ms)
    assert job.candles == rows
    stats = simulator.stats()[exchange]
    assert stats["over_limit"] == 0
    asked_clock = 1 + get_adapter(exchange).candles_request_uses_clock  # at planning, and by the engine
    assert stats["rest_requests"] == job.total + 1 + asked_clock  # + the market list
    with connection(platform_settings) as conn:
        coverage = read_coverage(conn, exchange)
    assert len(coverage) == len(symbols)
    assert all(c[REST] == [(start_ms, end_ms)] and c[WS] == [] for c in coverage.values())


def test_faults_and_429_storms_still_give_exact_history(platform_settings, simulator):
    exchange = "binance"
    symbols = _listed(simulator, exchange, MARKETS[exchange])
    start_ms, end_ms = day_aligned_range(simulator, days_back=3, days=2)
    asyncio.run(refresh_markets(platform_settings, exchange))
    simulator.set_faults(exchange, http_5xx_rate=0.4, storm_seconds=1.5)

    job = run_job(
        platform_settings,
        exchange,
        start_ms,
        end_ms,
        symbols,
        max_retries=8,
        backoff_base_seconds=0.05,
        backoff_max_seconds=0.5,
    )

    assert job.finished and job.failed == 0
    assert_matches_truth(platform_settings, simulator, exchange, symbols, start_ms, end_ms)
    stats = simulator.stats()[exchange]
    assert stats["fault_5xx"] > 0 and stats["storm_429"] > 0
    assert stats["over_limit"] == 0, "a 429 or 418 was earned by our own pace"
    assert stats["http_418"] == 0


def test_requests_that_keep_failing_are_recorded_and_the_job_goes_on(platform_settings, simulator):
    exchange = "bitfinex"
    symbols = _listed(simulator, exchange, MARKETS[exchange])
    start_ms, end_ms = day_aligned_range(simulator, days_back=3, days=1)
    options = EngineOptions.from_settings(
        platform_settings, max_retries=1, backoff_base_seconds=0.01, backoff_max_seconds=0.02
    )

    async def go():
        planned = await create_job(
            platform_settings, exchange, ms_to_datetime(start_ms), ms_to_datetime(end_ms), symbols
        )
        simulator.set_faults(exchange, http_5xx_rate=1.0)  # after planning, which asks the exchange's clock
        return await BackfillEngine(platform_settings, planned.id, options).run()

    job = asyncio.run(go())

    assert job.finished and job.failed == job.total == len(symbols) and job.done == 0
    with connection(platform_settings) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT symbol, start_date, end_date, time_frame, ohlcv_section, resp_status_code, "
            "exception_class, exception_message FROM ohlcvs_errors ORDER BY symbol"
        )
        errors = cur.fetchall()
    assert sorted(e[0] for e in errors) == sorted(symbols)
    with connection(platform_settings) as conn:
        assert read_coverage(conn, exchange) == {}  # a failed request covers nothing
    for _symbol, start, end, frame, section, status, cls, message in errors:
        assert (start, end) == (ms_to_datetime(start_ms), ms_to_datetime(end_ms))
        assert (frame, section) == ("1m", "hist") and status >= 500 and cls and message


def test_two_workers_share_one_budget(platform_settings, simulator):
    exchange = "binance"
    start_ms, end_ms = day_aligned_range(simulator, days_back=5, days=4)
    job = asyncio.run(
        create_job(platform_settings, exchange, ms_to_datetime(start_ms), ms_to_datetime(end_ms), None)
    )
    symbols = job.symbols
    assert job.total >= 55, "the job must span several rate windows"
    simulator.reset_stats()
    results = []

    def worker(name: str) -> None:
        engine = BackfillEngine(
            platform_settings, job.id, EngineOptions.from_settings(platform_settings), worker_id=name
        )
        results.append((engine, asyncio.run(engine.run())))

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)

    engines = [engine for engine, _ in results]
    assert len(engines) == 2 and all(e.requests_sent > 0 for e in engines), "both workers took part"
    assert sum(e.requests_sent for e in engines) == job.total
    assert simulator.stats()[exchange]["over_limit"] == 0
    assert_matches_truth(platform_settings, simulator, exchange, symbols, start_ms, end_ms)


def test_month_old_backfill_leaves_every_aggregate_level_consistent(platform_settings, simulator):
    exchange = "binance"
    symbol = "BTCUSDT"
    start_ms, end_ms = day_aligned_range(simulator, days_back=29.5, days=1.25)

    job = run_job(platform_settings, exchange, start_ms, end_ms, [symbol])
    assert job.refreshed

    with connection(platform_settings) as conn, conn.cursor() as cur:
        for name, width in AGGREGATE_LEVELS.items():
            # Every bucket, partial edge buckets included, recomputed straight from the 1m rows.
            cur.execute(
                f"""
                WITH minutes AS (
                    SELECT date_bin(%(w)s, time, TIMESTAMPTZ '2000-01-03') AS bucket, * FROM ohlcvs
                    WHERE exchange = %(ex)s
                ), expected AS (
                    SELECT bucket, (array_agg(open ORDER BY time))[1] AS open, max(high) AS high,
                           min(low) AS low, (array_agg(close ORDER BY time DESC))[1] AS close,
                           sum(volume) AS volume
                    FROM minutes GROUP BY bucket
                )
                SELECT e.bucket, e.open, a.open, e.high, a.high, e.low, a.low,
                       e.close, a.close, e.volume, a.volume
                FROM expected e LEFT JOIN {name} a
                  ON a.bucket = e.bucket AND a.exchange = %(ex)s AND a.base_id = 'BTC' AND a.quote_id = 'USDT'
                WHERE a.bucket IS NULL OR (e.open, e.high, e.low, e.close, e.volume)
                      IS DISTINCT FROM (a.open, a.high, a.low, a.close, a.volume)
                """,
                {"w": width, "ex": exchange},
            )
            wrong = cur.fetchall()
            assert wrong == [], f"{name}: {len(wrong)} bucket(s) disagree with the 1m rows, e.g. {wrong[:1]}"
        cur.execute("SELECT count(*) FROM ohlcvs_summary_5min WHERE exchange = %s", (exchange,))
        assert cur.fetchone()[0] >= (end_ms - start_ms) // (5 * 60_000) - 1


def test_markets_refresh_marks_delisted_markets_not_trading(platform_settings, simulator):
    with connection(platform_settings) as conn:
        upsert_markets(conn, [Market("bittrex", "OLD", "BTC", "OLD-BTC", True)])
        conn.commit()
    result = asyncio.run(refresh_markets(platform_settings, "bittrex"))
    with connection(platform_settings) as conn:
        markets = {m.symbol: m for m in load_markets(conn, "bittrex")}
    assert result.listed == len(simulator.markets("bittrex"))
    assert markets["OLD-BTC"].is_trading is False
    listed = {m["symbol"]: m["status"] for m in simulator.markets("bittrex")}
    for symbol, status in listed.items():
        assert markets[symbol].is_trading == (status == "ONLINE")


# -- pauses: after a 429/418 (or a used-weight header near the limit) nothing leaves any worker


def _workers(settings, job_id: str, count: int = 2) -> list[BackfillEngine]:
    """Drain a job with `count` engines at once (separate workers sharing Redis)."""
    engines = [
        BackfillEngine(settings, job_id, EngineOptions.from_settings(settings), worker_id=f"w{i}")
        for i in range(count)
    ]

    async def go() -> None:
        await asyncio.gather(*(engine.run() for engine in engines))

    asyncio.run(go())
    return engines


FAST_TEST_FLAGS = ("--markets", "12", "--speed", "600", "--seed", "1", "--history-days", "30")


@contextmanager
def _proxied(settings, exchange: str, *limit_flags: str):
    """A simulator process (fast-test limits, overridden by `limit_flags`), a recording proxy in
    front of its REST server for `exchange`, and settings pointing the platform at the proxy with
    the fast-test limits (which may be higher than the simulator's here). A separate process, so the
    simulator's work does not delay the platform's reactions inside this one."""
    fast = SimConfig.fast_test()
    flags = (
        *FAST_TEST_FLAGS,
        "--rate-window-seconds", str(fast.rate_window_seconds),
        "--bitfinex-candle-requests-per-window", str(fast.bitfinex_candle_requests_per_window),
        "--bitfinex-block-seconds", str(fast.bitfinex_block_seconds),
        "--binance-weight-per-window", str(fast.binance_weight_per_window),
        "--binance-ban-seconds", str(fast.binance_ban_seconds),
        "--bittrex-requests-per-window", str(fast.bittrex_requests_per_window),
        *limit_flags,
    )  # fmt: skip
    with simulator_process(*flags) as sim, RecordingProxy(sim.urls[exchange]["rest"]) as proxy:
        values = {
            **sim.settings_overrides(),
            "rest_rate_window_seconds": fast.rate_window_seconds,
            "bitfinex_rest_requests_per_minute": fast.bitfinex_candle_requests_per_window,
            "binance_rest_weight_per_minute": fast.binance_weight_per_window,
            "bittrex_rest_requests_per_minute": fast.bittrex_requests_per_window,
            "rest_timeout_seconds": 30.0,
            f"{exchange}_rest_url": proxy.url,
        }
        yield sim, proxy, settings.model_copy(update=values)


def _job(settings, sim, exchange: str, days_back: float, days: float):
    symbols = _listed(sim, exchange, MARKETS[exchange])
    start_ms, end_ms = day_aligned_range(sim, days_back=days_back, days=days)
    now = ms_to_datetime(sim.clock()["now_ms"])  # from the control port: the log holds only the backfill
    job = asyncio.run(
        create_job(settings, exchange, ms_to_datetime(start_ms), ms_to_datetime(end_ms), symbols, now)
    )
    return job, symbols, start_ms, end_ms


def test_a_429_without_retry_after_pauses_every_worker(settings):
    with _proxied(settings, "bitfinex") as (sim, proxy, platform):
        job, symbols, start_ms, end_ms = _job(platform, sim, "bitfinex", days_back=25, days=20)
        assert job.total >= 8
        sim.set_faults("bitfinex", storm_seconds=1.0)  # Bitfinex's 429 has no Retry-After
        _workers(platform, job.id)
        found = pauses(proxy.log, default_seconds=platform.rest_rate_window_seconds)
        assert found, "the storm must have answered 429"
        assert requests_inside_pauses(proxy.log, found) == [], timeline(proxy.log)
        assert sum(e.status == 429 for e in proxy.log) == sim.stats()["bitfinex"]["storm_429"]
        assert_matches_truth(platform, sim, "bitfinex", symbols, start_ms, end_ms)


def test_a_429_with_retry_after_pauses_every_worker_and_earns_no_ban(settings):
    """The simulator allows a fifth of what the platform is configured for (another program shares
    the IP): the platform runs into 429s but must never keep sending into them (a 418 ban)."""
    with _proxied(settings, "binance", "--binance-weight-per-window", "20") as (sim, proxy, platform):
        job, symbols, start_ms, end_ms = _job(platform, sim, "binance", days_back=8, days=6)
        assert job.total >= 24
        _workers(platform, job.id)
        found = pauses(proxy.log, default_seconds=platform.rest_rate_window_seconds)
        assert any(e.status == 429 and e.header("retry-after") for e in proxy.log)
        assert requests_inside_pauses(proxy.log, found) == [], timeline(proxy.log)
        assert sim.stats()["binance"]["http_418"] <= 1, timeline(proxy.log)
        assert_matches_truth(platform, sim, "binance", symbols, start_ms, end_ms)


def _use_weight_directly(sim, path: str, times: int) -> list[int]:
    """Requests by 'another program' on the same IP, straight to the simulator (not via the proxy)."""
    statuses = []
    for _ in range(times):
        try:
            with urlopen(sim.urls["binance"]["rest"] + path, timeout=10) as reply:
                statuses.append(reply.status)
        except HTTPError as error:
            statuses.append(error.code)
    return statuses


def _at_window_start(window: float) -> None:
    time.sleep(window - time.time() % window + 0.02)


def test_a_418_ban_pauses_every_worker(settings):
    with _proxied(
        settings, "binance", "--binance-weight-per-window", "20", "--binance-429s-before-ban", "0"
    ) as (
        sim,
        proxy,
        platform,
    ):
        job, symbols, start_ms, end_ms = _job(platform, sim, "binance", days_back=4, days=2)
        _at_window_start(platform.rest_rate_window_seconds)
        statuses = _use_weight_directly(sim, "/api/v3/exchangeInfo", 3)  # 20 weight, a 429, a 418
        assert statuses == [200, 429, 418]
        _workers(platform, job.id)
        bans = [e for e in proxy.log if e.status == 418]
        assert len(bans) == 1, "a request was sent into the ban"
        found = pauses(proxy.log, platform.rest_rate_window_seconds)
        assert requests_inside_pauses(proxy.log, found) == [], timeline(proxy.log)
        assert_matches_truth(platform, sim, "binance", symbols, start_ms, end_ms)


def test_a_used_weight_header_near_the_limit_pauses_every_worker(settings):
    with _proxied(settings, "binance") as (sim, proxy, platform):
        job, symbols, start_ms, end_ms = _job(platform, sim, "binance", days_back=8, days=6)
        limit = platform.binance_rest_weight_per_minute
        window = platform.rest_rate_window_seconds
        _at_window_start(window)
        assert _use_weight_directly(sim, "/api/v3/exchangeInfo", 4) == [200] * 4  # 80 of 100 used
        assert _use_weight_directly(sim, "/api/v3/klines?symbol=BTCUSDT&interval=1m&limit=1", 8) == [200] * 8
        before = len(proxy.log)
        _workers(platform, job.id)
        first = proxy.log[before]
        assert int(first.header("x-mbx-used-weight-1m")) >= limit * 0.98, "not in the same window"
        found = pauses(proxy.log, window, used_limit=limit, window=window)
        assert requests_inside_pauses(proxy.log, found) == [], timeline(proxy.log)
        assert sim.stats()["binance"]["http_418"] == 0  # a 429 is possible: requests already in flight
        assert_matches_truth(platform, sim, "binance", symbols, start_ms, end_ms)


# -- lifecycle and request paths


def test_a_dead_workers_requests_are_taken_over_while_a_live_ones_are_left_alone(
    platform_settings, simulator
):
    exchange = "binance"
    symbols = _listed(simulator, exchange, MARKETS[exchange])
    start_ms, end_ms = day_aligned_range(simulator, days_back=4, days=2)

    async def scenario():
        job = await create_job(
            platform_settings, exchange, ms_to_datetime(start_ms), ms_to_datetime(end_ms), symbols
        )
        client = aioredis.from_url(platform_settings.redis_url)
        store = JobStore(client)
        await store.heartbeat("alive")
        alive = await store.claim(job.id, "alive")  # a live worker's request, in flight
        dead = await store.claim(job.id, "dead")  # a worker that died: no heartbeat
        engine = BackfillEngine(platform_settings, job.id, EngineOptions.from_settings(platform_settings))
        run = asyncio.create_task(engine.run())
        while (await store.info(job.id)).done < job.total - 1:
            await store.heartbeat("alive")
            await asyncio.sleep(0.2)
        assert not run.done(), "the engine waits for the live worker's request"
        await store.complete(job.id, alive, 0)
        result = await run
        await client.aclose()
        return engine, result, alive.task, dead.task

    engine, job, alive_task, dead_task = asyncio.run(scenario())
    assert job.finished and job.failed == 0
    assert engine.requests_sent == job.total - 1, "the live worker's request must not be taken over"
    rows = stored_candles(platform_settings, exchange, dead_task.symbol, dead_task.start_ms, dead_task.end_ms)
    truth = truth_candles(simulator, exchange, dead_task.symbol, dead_task.start_ms, dead_task.end_ms)
    assert rows == truth and rows, "the dead worker's request was fetched by the live engine"


def test_a_dead_workers_aggregate_refresh_is_taken_over_while_a_live_ones_is_left_alone(settings):
    """A worker killed while it refreshes a finished job's aggregates leaves the job unrefreshed. Its
    claim must end with its heartbeat, as its requests' do: else the job stays unfinished until the
    claim times out, and the exchange's repair, which waits for its unfinished job, plans nothing."""
    start_ms = 1_700_006_400_000  # a day boundary

    async def scenario():
        client = aioredis.from_url(settings.redis_url)
        store = JobStore(client)
        job = await store.create("binance", start_ms, start_ms + DAY_MS, ["BTCUSDT"], [])  # finished
        await store.heartbeat("alive")
        assert await store.claim_refresh(job.id, "alive")
        assert not await store.claim_refresh(job.id, "other"), "a live worker's refresh is left alone"
        await store.retire("alive")  # killed: its heartbeat is gone
        result = await BackfillEngine(settings, job.id).run()
        await client.aclose()
        return result

    job = asyncio.run(scenario())
    assert job.complete, job


def test_bittrex_today_through_recent_equals_ground_truth_without_the_minute_in_progress(settings):
    with running_simulator(speed=1.0) as sim:
        platform = settings.model_copy(
            update={
                **sim.settings_overrides(),
                "rest_rate_window_seconds": 3.0,
                "bittrex_rest_requests_per_minute": 10,
            }
        )
        now_ms = sim.clock()["current_minute_ms"]
        today = now_ms - now_ms % DAY_MS
        if now_ms - today < 30 * 60_000:
            today -= DAY_MS  # so soon after midnight, take yesterday and today: both paths
        symbols = _listed(sim, "bittrex", MARKETS["bittrex"])
        job = run_job(platform, "bittrex", today, now_ms, symbols)
        assert job.finished and job.failed == 0
        assert_matches_truth(platform, sim, "bittrex", symbols, today, job.end_ms)


def test_a_redis_restart_mid_job_is_ridden_out(platform_settings, simulator, tmp_path):
    """Redis stops for about 2 s in the middle of a job (append-only file on, nothing lost): the
    engine reconnects and finishes the job exactly, with no traceback."""
    server = RedisServer(workdir=tmp_path, persistent=True).start()
    settings = platform_settings.model_copy(
        update={
            "redis_port": server.port,
            "redis_password": SecretStr(server.password),
            "rest_outage_seconds": 30.0,
        }
    )
    exchange = "binance"
    symbols = _listed(simulator, exchange, MARKETS[exchange])
    start_ms, end_ms = day_aligned_range(simulator, days_back=6, days=4)
    asyncio.run(refresh_markets(settings, exchange))
    job = asyncio.run(
        create_job(settings, exchange, ms_to_datetime(start_ms), ms_to_datetime(end_ms), symbols)
    )
    outcome: list = []

    def work() -> None:
        try:
            outcome.append(asyncio.run(BackfillEngine(settings, job.id).run()))
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            outcome.append(error)

    try:
        worker = threading.Thread(target=work)
        worker.start()
        watcher = redis.Redis(port=server.port, password=server.password)
        while int(watcher.hget(f"cfr:backfill:job:{job.id}", "done") or 0) < job.total // 3:
            time.sleep(0.05)
        server.halt()
        time.sleep(2)  # the outage
        server.start()
        worker.join(120)
        assert len(outcome) == 1 and not isinstance(outcome[0], Exception), outcome
        assert outcome[0].finished and outcome[0].failed == 0
        assert_matches_truth(settings, simulator, exchange, symbols, start_ms, end_ms)
    finally:
        server.stop()
