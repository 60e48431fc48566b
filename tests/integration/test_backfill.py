"""The REST backfill against the simulator, real PostgreSQL and real Redis.

The simulator enforces the exchanges' limits (scaled to 3-second windows) and the platform is given
exactly those limits, so any request over the limit shows up in the simulator's `over_limit`.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from common.candle import Market
from common.db import AGGREGATE_LEVELS, connection, load_markets, upsert_markets
from common.timeutil import ms_to_datetime
from fetchers.rest.engine import BackfillEngine, EngineOptions
from fetchers.rest.jobs import create_job
from fetchers.rest.markets import refresh_markets
from tests.support.backfill import assert_matches_truth, day_aligned_range, run_job

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
    assert stats["rest_requests"] == job.total + 1  # + the market list


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
    asyncio.run(refresh_markets(platform_settings, exchange))
    simulator.set_faults(exchange, http_5xx_rate=1.0)

    job = run_job(
        platform_settings,
        exchange,
        start_ms,
        end_ms,
        symbols,
        max_retries=1,
        backoff_base_seconds=0.01,
        backoff_max_seconds=0.02,
    )

    assert job.finished and job.failed == job.total == len(symbols) and job.done == 0
    with connection(platform_settings) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT symbol, start_date, end_date, time_frame, ohlcv_section, resp_status_code, "
            "exception_class, exception_message FROM ohlcvs_errors ORDER BY symbol"
        )
        errors = cur.fetchall()
    assert sorted(e[0] for e in errors) == sorted(symbols)
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
