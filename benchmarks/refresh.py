"""Plain PostgreSQL: what the updater's flushes cost with every market live, summary refresh included.

    python -m benchmarks.refresh            # the simulator's 2,454 trading markets, 6 h loaded, 30 minutes
    python -m benchmarks.refresh --quick    # 200 markets, 1 hour, 10 minutes

On plain PostgreSQL the platform keeps the summary levels itself: when the exchange's clock closes
a 5-minute bucket, that flush rebuilds the closed buckets and every level's open buckets for
every market. This script runs the real `Updater` as the live pipeline does at 1x, one flush per
minute: a throwaway PostgreSQL (durable defaults) and Redis, hours of minutes already stored and
refreshed, then each minute one closing bar per market written into the `ws_sub_` hashes by the
fetchers' `RedisSink` and the exchange's clock moved on, and one `Updater.flush()` (not measured:
the first, whose refresh reaches further back).

It prints the flush time (median, p90) of flushes with a refresh and without, PostgreSQL's CPU of a
refreshing flush, and the share of real time the flushes take at 1x.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from dataclasses import replace
from datetime import UTC, datetime

import redis

from benchmarks.live import T0, bench_bar, percentile, symbols
from benchmarks.measure import Result, machine, postgres_cpu_seconds, report
from common.candle import Candle, Market
from common.db import connect, refresh_aggregates, upsert_candles, upsert_markets
from common.exchanges import EXCHANGES
from common.redis_clients import async_client
from common.redis_keys import ws_health_key
from common.schema import apply_schema, ensure_database
from common.settings import Settings
from common.timeutil import MINUTE_MS, ms_to_datetime
from fetchers.ws.sink import MarketKeys, RedisSink
from fetchers.ws.updater import SMALLEST_BUCKET_MS, Updater
from simulator.core import MarketCatalog
from tests.support.services import PostgresServer, RedisServer


def simulator_trading_markets() -> int:
    """How many markets trade in the simulator's lists (the real exchanges' lists), all exchanges."""
    return sum(m.is_trading for exchange in EXCHANGES for m in MarketCatalog.load(exchange))


def store_history(settings: Settings, keys: list[MarketKeys], minutes: int) -> None:
    """`minutes` of every market straight into `ohlcvs`, then every level refreshed once."""
    conn = connect(settings)
    upsert_markets(conn, [Market("binance", k.base_id, "USDT", k.symbol) for k in keys])
    for first in range(0, minutes, 60):
        candles = []
        for minute in range(first, min(first + 60, minutes)):
            for key in keys:
                bar = bench_bar(key, minute)
                values = (bar.time, bar.open, bar.high, bar.low, bar.close, bar.volume)
                candles.append(Candle("binance", key.base_id, "USDT", *values))
        upsert_candles(conn, candles)
        conn.commit()
    conn.close()
    clock = ms_to_datetime(T0 + minutes * MINUTE_MS)
    refresh_aggregates(settings, None, None, now=clock)


def write_minute(settings: Settings, keys: list[MarketKeys], minute: int) -> None:
    """Every market's closing bar of `minute` (Binance's `x: true`) into Redis as the fetchers write
    it, and the exchange's clock at the next minute's start, as the next bars would move it."""

    async def write() -> None:
        client = async_client(settings, pack_with_hiredis=True)
        sink = RedisSink(client, "binance", "bench", lambda attempt: 0.01)
        for key in keys:
            sink.add(key, replace(bench_bar(key, minute), closed=True), 0.0)
        await sink.flush()
        clock = T0 + (minute + 1) * MINUTE_MS
        await client.hset(ws_health_key("binance"), "exchange_time_ms", clock)
        await client.aclose()

    asyncio.run(write())


def run(markets: int, hours: int, minutes: int) -> list[Result]:
    pg = PostgresServer(durable=True, timescaledb=False).start()
    rd = RedisServer().start()
    try:
        settings = Settings(
            postgres_host="127.0.0.1", postgres_port=pg.port, postgres_user=pg.user, postgres_db="bench",
            postgres_password="", redis_host="127.0.0.1", redis_port=rd.port,
            redis_password=rd.password, _env_file=None,
        )  # fmt: skip
        ensure_database(settings)
        apply_schema(settings, plain=True)
        keys = [MarketKeys.build("binance", s[:-4], "USDT", s, ";;") for s in symbols(markets)]
        loaded = hours * 60
        started = time.perf_counter()
        store_history(settings, keys, loaded)
        loading = time.perf_counter() - started

        updater = Updater(settings, redis.Redis.from_url(settings.redis_url))
        write_minute(settings, keys, loaded)
        updater.flush()  # not measured: a new updater's first refresh reaches back further
        refreshing, plain_flushes, refreshing_cpu = [], [], []
        for minute in range(loaded + 1, loaded + 1 + minutes):
            write_minute(settings, keys, minute)
            closes_a_bucket = (T0 + (minute + 1) * MINUTE_MS) % SMALLEST_BUCKET_MS == 0
            cpu_before = postgres_cpu_seconds(pg.port)
            started = time.perf_counter()
            result = updater.flush()
            elapsed = time.perf_counter() - started
            assert result.rows == markets, result
            if closes_a_bucket:
                refreshing.append(elapsed)
                refreshing_cpu.append(postgres_cpu_seconds(pg.port) - cpu_before)
            else:
                plain_flushes.append(elapsed)
        updater.stop()
    finally:
        pg.stop()
        rd.stop()

    def ms(values: list[float]) -> str:
        return f"{statistics.median(values) * 1000:,.0f} / {percentile(values, 0.9) * 1000:,.0f} ms"

    busy = (sum(refreshing) + sum(plain_flushes)) / (minutes * 60)
    return [
        Result(f"{markets:,} markets, {hours} h stored and refreshed first", f"{loading:.1f} s"),
        Result("flush of one minute closing a 5-minute bucket (refresh): median / p90", ms(refreshing)),
        Result("flush of one minute, no bucket closed: median / p90", ms(plain_flushes)),
        Result(
            "PostgreSQL CPU of a flush closing a bucket, median",
            f"{statistics.median(refreshing_cpu) * 1000:,.0f} ms",
        ),
        Result("share of real time the updater's flushes take at 1x", f"{busy:.2%}"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markets", type=int, default=None, help="default: the simulator's trading markets")
    parser.add_argument("--hours", type=int, default=6, help="hours of minutes stored before the flushes")
    parser.add_argument("--minutes", type=int, default=30, help="minutes flushed, one flush each")
    parser.add_argument("--quick", action="store_true", help="200 markets, 1 hour, 10 minutes")
    args = parser.parse_args()
    if args.quick:
        args.markets, args.hours, args.minutes = 200, 1, 10
    markets = args.markets or simulator_trading_markets()
    print(f"Updater flushes on plain PostgreSQL, {datetime.now(UTC):%Y-%m-%d}, {machine()}")
    results = run(markets, args.hours, args.minutes)
    report("updater flushes, plain PostgreSQL (python -m benchmarks.refresh)", results)


if __name__ == "__main__":
    main()
