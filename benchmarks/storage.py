"""Storage benchmark: bytes per candle on disk, reads and write throughput, plain PostgreSQL and
TimescaleDB, before and after compression.

    python -m benchmarks.storage              # 60 Binance markets x 30 days + 1 market x 365 days
    python -m benchmarks.storage --quick      # 4 markets x 10 days + 1 market x 60 days

Both paths run from one invocation on this machine, one after the other, each on its own throwaway
PostgreSQL 15 with durable defaults (fsync on): plain, then with TimescaleDB preloaded (its
extension must be installed for the server). The candles are the simulator's Binance minutes
(`simulator.core.CandleModel`, formatted as Binance sends them: 8-decimal text), markets chosen from
the full Binance list, generated once and written identically to both paths.

1. A month of minutes: days 1..N-1 through the backfill's write (`upsert_candle_blocks`, 1,000-row
   blocks as Binance answers, 10 blocks a transaction), day N through the updater's write
   (`insert_missing_copy_text`, flushes of 1,000 rows: about one minute of the full list), then
   every summary refreshed. Candles/s and rows/s on both paths.
2. Bytes per candle: the total size of ohlcvs and every summary relation, indexes and TOAST
   included, over the number of candles; on TimescaleDB before and after its compression policies
   run (`CALL run_job`, as this build's background workers cannot run them).
3. Exactness: a digest of every stored value's text (ohlcvs and the hourly level) is the same on
   plain, TimescaleDB uncompressed and TimescaleDB compressed.
4. Reads (fastest of 11 warm runs, the web's own `web.reads.read_bars`): one market's month of minutes,
   and a year of hourly bars of a market with a year of minutes (its own database).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import os
import pickle
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import repeat
from pathlib import Path

from benchmarks.measure import Result, machine, report
from common.candle import CandleBlock, Market, MarketKey
from common.db import (
    connect,
    insert_missing_copy_text,
    refresh_aggregates,
    upsert_candle_blocks,
    upsert_markets,
)
from common.schema import apply_schema
from common.settings import Settings
from common.timeutil import datetime_to_ms, ms_to_datetime
from simulator.core import CandleModel, MarketCatalog, SimMarket
from simulator.wire import fixed8
from tests.support.services import PostgresServer
from web.reads import INTERVALS, BarQuery, read_bars

CACHE_DIR = Path(__file__).resolve().parents[1] / "local_data" / "benchmarks"
MINUTE_MS = 60_000
DAY_MS = 86_400_000
START = datetime(2024, 1, 1, tzinfo=UTC)
BLOCK_ROWS = 1_000
BLOCKS_PER_COMMIT = 10
UPDATER_FLUSH_ROWS = 1_000
"""A live flush holds the bars that closed since the last one: about one minute of the full Binance
list (1,262 trading markets) every minute."""
TARGET_BYTES = 12.0
TARGET_SHARE = 0.8
SUMMARIES = tuple(
    interval.relation
    for interval in INTERVALS.values()
    if interval.rollup_sql is None and interval.relation != "ohlcvs"
)
"""Every summary level's relation (table, aggregate or view), as the API reads them."""


@dataclass
class Dataset:
    markets: list[Market]
    blocks: list[CandleBlock]  # one per market and day, days 1..N-1
    live_minutes: list[str]  # COPY text of day N, one minute of every market per entry
    candles: int
    start: datetime
    end: datetime


def trading_markets() -> list[SimMarket]:
    """Every trading Binance market of the simulator's list, in the fixture's order."""
    return [m for m in MarketCatalog.load("binance") if m.is_trading]


def binance_markets(count: int) -> list[SimMarket]:
    """`count` trading Binance markets spread evenly over the whole list ranked by how often they
    trade (the simulator's `trade_probability`), in the fixture's order. A quiet minute compresses
    to a fraction of a traded one, so the sample must mix liquid and illiquid markets as the full
    list does for its bytes per candle to stand for the list's (the first markets of the fixture,
    majors among them, trade more often than the list as a whole)."""
    trading = trading_markets()
    ranked = sorted(trading, key=lambda m: (m.trade_probability, m.symbol))
    step = len(ranked) / min(count, len(ranked))
    chosen = {ranked[int((i + 0.5) * step)].symbol for i in range(min(count, len(ranked)))}
    return [m for m in trading if m.symbol in chosen]


def main_market() -> SimMarket:
    """The market users read most (BTC/USDT): the year of hourly bars is read from it."""
    return next(m for m in MarketCatalog.load("binance") if m.symbol == "BTCUSDT")


def traded_share(markets: list[SimMarket]) -> float:
    """The share of minutes the simulator trades in, on average over `markets` (its model's own
    probability, so no candle needs computing)."""
    return sum(m.trade_probability for m in markets) / len(markets)


def market_minutes(symbol: str, start_ms: int, end_ms: int) -> list[tuple[int, str]]:
    """One market's minutes in [start_ms, end_ms) as (time, Binance's five values tab-joined)."""
    market = next(m for m in MarketCatalog.load("binance") if m.symbol == symbol)
    return [
        (
            c.time_ms,
            f"{fixed8(c.open)}\t{fixed8(c.high)}\t{fixed8(c.low)}\t{fixed8(c.close)}\t{fixed8(c.volume)}",
        )
        for c in CandleModel().candles(market, start_ms, end_ms - MINUTE_MS)
    ]


def cached_minutes(markets: list[Market], start_ms: int, end_ms: int) -> list[list[tuple[int, str]]]:
    """`market_minutes` of every market, from CACHE_DIR when an earlier run made them (the candle
    model takes minutes of CPU per million candles), else computed on every core and kept there."""
    key = (
        f"{start_ms}-{end_ms}-"
        + hashlib.sha256(",".join(m.symbol for m in markets).encode()).hexdigest()[:16]
    )
    path = CACHE_DIR / f"binance-{key}.pickle.gz"
    if path.exists():
        with gzip.open(path, "rb") as handle:
            return pickle.load(handle)
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        result = list(pool.map(market_minutes, [m.symbol for m in markets], repeat(start_ms), repeat(end_ms)))
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    with gzip.open(partial, "wb", compresslevel=1) as handle:
        pickle.dump(result, handle, protocol=pickle.HIGHEST_PROTOCOL)
    partial.replace(path)
    return result


def generate(listed: list[SimMarket], days: int, live_days: int = 1) -> Dataset:
    """The simulator's Binance minutes of `listed` over `days` days from START; the last
    `live_days` go to the updater's write."""
    markets = [Market("binance", m.base, m.quote, m.symbol) for m in listed]
    count = len(markets)
    start_ms = datetime_to_ms(START)
    backfill_end = start_ms + (days - live_days) * DAY_MS
    end_ms = start_ms + days * DAY_MS
    blocks: list[CandleBlock] = []
    live: dict[int, list[str]] = {}
    for market, minutes in zip(markets, cached_minutes(markets, start_ms, end_ms), strict=True):
        times: list[int] = []
        lines: list[str] = []
        for time_ms, values in minutes:
            if time_ms >= backfill_end:
                live.setdefault(time_ms, []).append(
                    f"{time_ms}\tbinance\t{market.base_id}\t{market.quote_id}\t{values}\n"
                )
                continue
            times.append(time_ms)
            lines.append(f"{time_ms}\t{values}")
            if len(lines) == BLOCK_ROWS:
                blocks.append(CandleBlock("binance", market.base_id, market.quote_id, times, lines))
                times, lines = [], []
        if lines:
            blocks.append(CandleBlock("binance", market.base_id, market.quote_id, times, lines))
    return Dataset(
        markets,
        blocks,
        updater_flushes([live[t] for t in sorted(live)]),
        count * days * 1440,
        START,
        ms_to_datetime(end_ms),
    )


def updater_flushes(minutes: list[list[str]]) -> list[str]:
    """Consecutive minutes of every market joined into flushes of at least UPDATER_FLUSH_ROWS rows."""
    flushes: list[str] = []
    pending: list[str] = []
    for rows in minutes:
        pending += rows
        if len(pending) >= UPDATER_FLUSH_ROWS:
            flushes.append("".join(pending))
            pending = []
    if pending:
        flushes.append("".join(pending))
    return flushes


def fresh_database(pg: PostgresServer, name: str, timescale: bool) -> Settings:
    admin = pg.connect("postgres")
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    admin.close()
    settings = Settings(
        postgres_host="127.0.0.1",
        postgres_port=pg.port,
        postgres_user=pg.user,
        postgres_db=name,
        redis_port=1,  # no Redis: the web-cache version bump is skipped with a warning
        _env_file=None,
    )
    if apply_schema(settings, plain=not timescale) != timescale:
        raise SystemExit("TimescaleDB was asked for but the schema came out plain: is it installed?")
    return settings


def write_backfill(settings: Settings, data: Dataset) -> float:
    """Candles/s of the backfill's write path."""
    conn = connect(settings)
    try:
        upsert_markets(conn, data.markets)
        conn.commit()
        began = time.perf_counter()
        written = 0
        for i in range(0, len(data.blocks), BLOCKS_PER_COMMIT):
            written += upsert_candle_blocks(conn, data.blocks[i : i + BLOCKS_PER_COMMIT])
            conn.commit()
        seconds = time.perf_counter() - began
    finally:
        conn.close()
    return written / seconds


def write_live(settings: Settings, data: Dataset) -> float:
    """Rows/s of the updater's write path, one transaction per flush."""
    conn = connect(settings)
    try:
        began = time.perf_counter()
        written = 0
        for text in data.live_minutes:
            written += insert_missing_copy_text(conn, io.StringIO(text))
            conn.commit()
        seconds = time.perf_counter() - began
    finally:
        conn.close()
    return written / seconds


def total_bytes(settings: Settings, timescale: bool) -> tuple[int, int]:
    """(bytes of ohlcvs and every summary, indexes and TOAST included; candles in ohlcvs)."""
    conn = connect(settings)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM ohlcvs")
            candles = cur.fetchone()[0]
            if timescale:
                cur.execute(
                    "SELECT hypertable_size('ohlcvs') + coalesce(sum(hypertable_size(format('%I.%I', "
                    "materialization_hypertable_schema, materialization_hypertable_name)::regclass)), 0) "
                    "FROM timescaledb_information.continuous_aggregates"
                )
            else:
                cur.execute(
                    "SELECT sum(pg_total_relation_size(name::regclass)) FROM unnest(%s::text[]) AS name",
                    (["ohlcvs", *SUMMARIES],),
                )
            size = int(cur.fetchone()[0])
    finally:
        conn.close()
    return size, candles


def print_breakdown(settings: Settings, label: str) -> None:
    """Where the bytes are, per hypertable (TimescaleDB): heap, indexes, TOAST."""
    conn = connect(settings)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT coalesce(c.view_name, h.hypertable_name), d.table_bytes, d.index_bytes, "
                "d.toast_bytes, d.total_bytes FROM (SELECT 'public' AS hypertable_schema, "
                "'ohlcvs' AS hypertable_name UNION ALL SELECT materialization_hypertable_schema, "
                "materialization_hypertable_name FROM timescaledb_information.continuous_aggregates) h "
                "LEFT JOIN timescaledb_information.continuous_aggregates c "
                "ON c.materialization_hypertable_name = h.hypertable_name "
                "CROSS JOIN LATERAL hypertable_detailed_size(format('%I.%I', h.hypertable_schema, "
                "h.hypertable_name)::regclass) d ORDER BY d.total_bytes DESC"
            )
            print(f"{label}: relation, table, index, toast, total bytes")
            for row in cur.fetchall():
                print("   ", *row)
    finally:
        conn.close()


def digest(settings: Settings) -> str:
    """md5 over every stored value's text, ohlcvs then the hourly level."""
    conn = connect(settings)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT md5(string_agg(concat_ws(',', time, exchange, base_id, quote_id, open::text, "
                "high::text, low::text, close::text, volume::text), ';' ORDER BY exchange, base_id, "
                "quote_id, time)) FROM ohlcvs"
            )
            minutes = cur.fetchone()[0]
            cur.execute(
                "SELECT md5(string_agg(concat_ws(',', bucket, exchange, base_id, quote_id, open::text, "
                "high::text, low::text, close::text, volume::text), ';' ORDER BY exchange, base_id, "
                "quote_id, bucket)) FROM ohlcvs_summary_1hour"
            )
            return f"{minutes}/{cur.fetchone()[0]}"
    finally:
        conn.close()


def compress(settings: Settings) -> float:
    """Run every compression policy once, as TimescaleDB's scheduler would; seconds taken."""
    conn = connect(settings)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT job_id FROM timescaledb_information.jobs WHERE proc_name = 'policy_compression' "
                "ORDER BY job_id"
            )
            jobs = [row[0] for row in cur.fetchall()]
            began = time.perf_counter()
            for job in jobs:
                cur.execute("CALL run_job(%s)", (job,))
            seconds = time.perf_counter() - began
            cur.execute(
                "SELECT count(*) FILTER (WHERE NOT is_compressed) FROM timescaledb_information.chunks "
                "WHERE hypertable_name = 'ohlcvs'"
            )
            if cur.fetchone()[0]:
                raise SystemExit("the compression policy left ohlcvs chunks uncompressed")
            cur.execute("ANALYZE")
    finally:
        conn.close()
    return seconds


def read_ms(settings: Settings, query: BarQuery, expect: int, runs: int = 11) -> float:
    """Fastest of `runs` warm runs of `read_bars(query)`, in milliseconds (one warm-up first): on a
    shared machine the median moves with the neighbours' load by more than what is measured."""
    conn = connect(settings)
    try:
        times = []
        for attempt in range(runs + 1):
            began = time.perf_counter()
            bars = read_bars(conn, query)
            took = (time.perf_counter() - began) * 1000
            conn.rollback()
            if len(bars) != expect:
                raise SystemExit(f"{query.interval.name} read gave {len(bars)} bars, expected {expect}")
            if attempt:
                times.append(took)
    finally:
        conn.close()
    return min(times)


@dataclass
class PathFigures:
    backfill_per_s: float
    live_per_s: float
    bytes_before: float
    month_ms_before: float
    year_ms_before: float
    digest_before: str
    bytes_after: float | None = None
    month_ms_after: float | None = None
    year_ms_after: float | None = None
    digest_after: str | None = None
    compress_seconds: float | None = None
    ohlcvs_bytes_after: float | None = None


def run_path(timescale: bool, month: Dataset, year: Dataset) -> PathFigures:
    name = "TimescaleDB" if timescale else "plain"
    pg = PostgresServer(durable=True, timescaledb=timescale).start()
    try:
        settings = fresh_database(pg, "bench_month", timescale)
        print(f"{name}: writing {month.candles:,} candles", flush=True)
        backfill = write_backfill(settings, month)
        live = write_live(settings, month)
        refresh_aggregates(settings, None, None, now=month.end + timedelta(days=365))
        conn = connect(settings)
        conn.autocommit = True
        conn.cursor().execute("VACUUM ANALYZE")
        conn.close()
        size, candles = total_bytes(settings, timescale)
        if candles != month.candles:
            raise SystemExit(f"{name}: {candles} candles stored, {month.candles} written")
        year_settings = fresh_database(pg, "bench_year", timescale)
        print(f"{name}: writing {year.candles:,} candles of one market", flush=True)
        write_backfill(year_settings, year)
        write_live(year_settings, year)
        refresh_aggregates(year_settings, None, None, now=year.end + timedelta(days=365))
        conn = connect(year_settings)
        conn.autocommit = True
        conn.cursor().execute("VACUUM ANALYZE")
        conn.close()

        month_market = month.markets[0]
        month_query = BarQuery(
            MarketKey(month_market.exchange, month_market.base_id, month_market.quote_id),
            INTERVALS["1m"],
            datetime_to_ms(month.start),
            datetime_to_ms(month.end) - MINUTE_MS,
            month.candles // len(month.markets),
        )
        year_market = year.markets[0]
        hours = year.candles // 60
        year_query = BarQuery(
            MarketKey(year_market.exchange, year_market.base_id, year_market.quote_id),
            INTERVALS["1h"],
            datetime_to_ms(year.start),
            datetime_to_ms(year.end) - MINUTE_MS,
            hours,
        )
        figures = PathFigures(
            backfill,
            live,
            size / candles,
            read_ms(settings, month_query, month_query.limit),
            read_ms(year_settings, year_query, hours),
            digest(settings),
        )
        if timescale:
            print(f"{name}: compressing", flush=True)
            figures.compress_seconds = compress(settings)
            compress(year_settings)
            size, candles = total_bytes(settings, timescale)
            figures.bytes_after = size / candles
            conn = connect(settings)
            with conn.cursor() as cur:
                cur.execute("SELECT hypertable_size('ohlcvs')")
                figures.ohlcvs_bytes_after = cur.fetchone()[0] / candles
            conn.close()
            print_breakdown(settings, f"{name} compressed")
            figures.month_ms_after = read_ms(settings, month_query, month_query.limit)
            figures.year_ms_after = read_ms(year_settings, year_query, hours)
            figures.digest_after = digest(settings)
        return figures
    finally:
        pg.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.storage", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--markets", type=int, help="Binance markets in the month (default 60; quick 4)")
    parser.add_argument("--days", type=int, help="days in the month (default 30; quick 10)")
    parser.add_argument("--year-days", type=int, help="days of the read market (default 365; quick 60)")
    args = parser.parse_args()
    markets = args.markets or (4 if args.quick else 60)
    days = args.days or (10 if args.quick else 30)
    year_days = args.year_days or (60 if args.quick else 365)

    began = time.perf_counter()
    sample = binance_markets(markets)
    full_list = trading_markets()
    month = generate(sample, days)
    year = generate([main_market()], year_days)
    print(
        f"generated {month.candles:,} + {year.candles:,} candles in {time.perf_counter() - began:.0f} s",
        flush=True,
    )
    plain = run_path(False, month, year)
    ts = run_path(True, month, year)

    what = (
        f"{len(sample)} Binance markets x {days} days ({month.candles:,} candles); minutes traded: "
        f"{traded_share(sample):.1%} (all {len(full_list):,} trading markets: {traded_share(full_list):.1%})"
    )
    exact = plain.digest_before == ts.digest_before == ts.digest_after
    backfill_share = ts.backfill_per_s / plain.backfill_per_s
    live_share = ts.live_per_s / plain.live_per_s
    results = [
        Result("data", what),
        Result("plain: bytes per candle (ohlcvs + summaries, indexes incl.)", f"{plain.bytes_before:.1f} B"),
        Result("TimescaleDB uncompressed: bytes per candle", f"{ts.bytes_before:.1f} B"),
        Result(
            "TimescaleDB compressed: bytes per candle",
            f"{ts.bytes_after:.1f} B",
            f"<= {TARGET_BYTES:.0f} B",
            ts.bytes_after <= TARGET_BYTES,
        ),
        Result(
            "  of which ohlcvs / the hourly summary",
            f"{ts.ohlcvs_bytes_after:.1f} / {ts.bytes_after - ts.ohlcvs_bytes_after:.1f} B",
        ),
        Result(
            "values identical: plain, TimescaleDB before and after compression",
            "yes" if exact else "NO",
            "yes",
            exact,
        ),
        Result("TimescaleDB: compression policies run once", f"{ts.compress_seconds:.1f} s"),
        Result("plain: one market's month of minutes read", f"{plain.month_ms_before:.1f} ms"),
        Result("TimescaleDB uncompressed: month of minutes read", f"{ts.month_ms_before:.1f} ms"),
        Result(
            "TimescaleDB compressed: month of minutes read",
            f"{ts.month_ms_after:.1f} ms",
            "<= uncompressed",
            ts.month_ms_after <= ts.month_ms_before,
        ),
        Result(f"plain: a year of hourly bars read ({year_days} days)", f"{plain.year_ms_before:.1f} ms"),
        Result("TimescaleDB uncompressed: year of hourly bars read", f"{ts.year_ms_before:.1f} ms"),
        Result(
            "TimescaleDB compressed: year of hourly bars read",
            f"{ts.year_ms_after:.1f} ms",
            "<= uncompressed",
            ts.year_ms_after <= ts.year_ms_before,
        ),
        Result("plain: backfill write", f"{plain.backfill_per_s:,.0f} candles/s"),
        Result(
            "TimescaleDB: backfill write",
            f"{ts.backfill_per_s:,.0f} candles/s ({backfill_share:.0%} of plain)",
            f">= {TARGET_SHARE:.0%} of plain",
            backfill_share >= TARGET_SHARE,
        ),
        Result("plain: updater write", f"{plain.live_per_s:,.0f} rows/s"),
        Result(
            "TimescaleDB: updater write",
            f"{ts.live_per_s:,.0f} rows/s ({live_share:.0%} of plain)",
            f">= {TARGET_SHARE:.0%} of plain",
            live_share >= TARGET_SHARE,
        ),
    ]
    print(f"\nMachine: {machine()}")
    report("storage", results)


if __name__ == "__main__":
    main()
