"""Binance history from the public archive beside the REST path: end-to-end rate, CPU, and bounds.

    python -m benchmarks.archive            # the previous whole month of 6 markets (monthly files)
    python -m benchmarks.archive --quick    # 2 days of 4 markets (daily files), a smoke run

One run, one machine, the same markets and minutes for both paths: a throwaway PostgreSQL
(durable defaults) and Redis, `python -m simulator` as its own process (its CPU measured apart),
its history cache and archive files built before anything is timed so the platform is what is
measured. Each round backfills the range twice into an emptied `ohlcvs` with the real engine, in
this process: once over REST (`BACKFILL_SOURCE=rest`, rate limit off: the path's own ceiling)
and once from archive files (`auto`: the range holds only closed days). Reported per path:
candles/s until the last candle committed (the aggregate refresh after it is the same for both
and left out), platform CPU per 1,000 candles, and the CPU of the platform, the simulator and
PostgreSQL as shares of one core of the wall time: what is near a whole core, or what the
machine's cores run out on, bounds the path. REST's real bound is printed beside it: Binance's
6,000 weight a minute allow 50,000 candles/s.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.request
from datetime import UTC, datetime

from benchmarks.backfill import fresh_database, platform_settings, run_engine, trading_symbols
from benchmarks.measure import Result, cpu_seconds, machine, postgres_cpu_seconds, report
from common.db import connect
from fetchers.exchanges.binance_archive import DAY_MS, day_period, file_path, month_of
from fetchers.rest.sources import MONTHLY_AFTER_DAYS, archive_periods
from tests.support.services import PostgresServer, RedisServer
from tests.support.simulator import simulator_process

REST_LIMIT_CANDLES_PER_SECOND = 6000 / 2 * 1000 / 60
TARGET_SPEEDUP = 2.0


def choose_range(now_ms: int, quick: bool) -> tuple[int, int]:
    """The previous whole month (what a full-history backfill mostly downloads: monthly files), or
    for a smoke run the two days before today."""
    today = now_ms - now_ms % DAY_MS
    if quick:
        return today - 2 * DAY_MS, today
    month = month_of(today - MONTHLY_AFTER_DAYS * DAY_MS)
    previous = month_of(month.start_ms - DAY_MS)
    return previous.start_ms, previous.end_ms


def warm(sim, symbols: list[str], start_ms: int, end_ms: int) -> None:
    """Compute the simulated history once, then build every archive file from it."""
    now_ms = sim.clock()["current_minute_ms"]
    files, _ = archive_periods(start_ms, end_ms, now_ms)
    base = sim.settings_overrides()["binance_archive_url"]
    for symbol in symbols:
        for begin in range(start_ms, end_ms, 2 * DAY_MS):  # in steps the control port answers in time
            sim.truth("binance", symbol, begin, min(end_ms, begin + 2 * DAY_MS))
        for period, _ in files:
            with urllib.request.urlopen(
                f"{base}/{file_path(symbol, period.text)}.CHECKSUM", timeout=600
            ) as r:
                r.read()


def measure(pg, rd, sim, settings, symbols, start_ms, end_ms) -> dict[str, float]:
    with connect(settings) as conn, conn.cursor() as cur:
        cur.execute("TRUNCATE ohlcvs, ohlcvs_coverage")
    rd.client().flushall()
    s0, p0, o0 = cpu_seconds(sim.pid), postgres_cpu_seconds(pg.port), time.process_time()
    job, elapsed, refresh = run_engine(settings, "binance", start_ms, end_ms, symbols, unlimited=True)
    own = time.process_time() - o0
    sim_cpu = cpu_seconds(sim.pid) - s0
    pg_cpu = postgres_cpu_seconds(pg.port) - p0
    assert job.failed == 0 and job.done == job.total, job
    return {
        "candles": job.candles,
        "seconds": elapsed,
        "wall": elapsed + refresh,
        "own": own,
        "sim": sim_cpu,
        "pg": pg_cpu,
        "files": job.archive,
        "requests": job.total - job.archive,
    }


def shares(m: dict[str, float]) -> str:
    """CPU over the job's whole run (its aggregate refresh included: the processes' counters cannot
    tell it apart), as shares of one core of that run's wall time."""
    seconds = m["wall"]
    return f"{m['own'] / seconds:.0%} / {m['sim'] / seconds:.0%} / {m['pg'] / seconds:.0%} of one core"


def bound(m: dict[str, float]) -> str:
    """The busiest process, and how much of the machine the three used together."""
    used = {"platform": m["own"], "simulator": m["sim"], "PostgreSQL": m["pg"]}
    busiest = max(used, key=used.get)
    cores = os.cpu_count() or 1
    together = sum(used.values()) / m["wall"]
    busy = used[busiest] / m["wall"]
    return f"{busiest} CPU ({busy:.0%} of a core); together {together:.2f} of {cores} cores"


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.archive", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--markets", type=int, help="markets (default 6, 4 with --quick)")
    parser.add_argument("--rounds", type=int, help="rounds of both paths (default 2, 1 with --quick)")
    args = parser.parse_args()
    markets = args.markets or (4 if args.quick else 6)
    rounds = args.rounds or (1 if args.quick else 2)
    pg = PostgresServer(durable=True).start()
    rd = RedisServer().start()
    totals = {"rest": [], "archive": []}
    try:
        with simulator_process(
            "--markets",
            str(markets + 4),
            "--speed",
            "1",
            "--history-days",
            "70",
            "--history-cache-days",
            str((markets + 4) * 40),
            "--binance-weight-per-window",
            "1000000000",
        ) as sim:
            symbols = trading_symbols(sim, "binance")[:markets]
            start_ms, end_ms = choose_range(sim.clock()["current_minute_ms"], args.quick)
            first, last = day_period(start_ms).text, day_period(end_ms - 1).text
            print(f"warming the simulator: {len(symbols)} markets, {first} .. {last}", flush=True)
            warm(sim, symbols, start_ms, end_ms)
            rest = fresh_database(
                pg,
                "bench_archive",
                lambda db: platform_settings(pg, rd, sim, db, rest_concurrency=16, backfill_source="rest"),
            )
            archive = rest.model_copy(update={"backfill_source": "auto"})
            for number in range(rounds):
                order = [("rest", rest), ("archive", archive)]
                for name, settings in order if number % 2 == 0 else reversed(order):
                    totals[name].append(measure(pg, rd, sim, settings, symbols, start_ms, end_ms))
                    last = totals[name][-1]
                    print(
                        f"  round {number + 1} {name}: {last['candles'] / last['seconds']:,.0f} candles/s",
                        flush=True,
                    )
    finally:
        rd.stop()
        pg.stop()

    def summed(name: str) -> dict[str, float]:
        runs = totals[name]
        return {key: sum(r[key] for r in runs) for key in runs[0]}

    r, a = summed("rest"), summed("archive")
    rate_r, rate_a = r["candles"] / r["seconds"], a["candles"] / a["seconds"]
    cpu_r, cpu_a = r["own"] / r["candles"] * 1e6, a["own"] / a["candles"] * 1e6
    label = f"{len(symbols)} markets x {(end_ms - start_ms) // DAY_MS} days, {rounds} round(s)"
    results = [
        Result(f"REST, limit off ({label}): candles/s end to end", f"{rate_r:,.0f}"),
        Result(
            f"archive ({label}): candles/s end to end",
            f"{rate_a:,.0f}",
            f">= {TARGET_SPEEDUP:g}x REST",
            rate_a >= TARGET_SPEEDUP * rate_r,
        ),
        Result("archive / REST end-to-end rate", f"{rate_a / rate_r:.2f}x"),
        Result("REST: platform CPU per 1,000 candles", f"{cpu_r:.2f} ms"),
        Result("archive: platform CPU per 1,000 candles", f"{cpu_a:.2f} ms", "<= REST's", cpu_a <= cpu_r),
        Result("REST: bounded by", bound(r)),
        Result(
            "REST at Binance's published limit (6,000 weight/min)",
            f"{REST_LIMIT_CANDLES_PER_SECOND:,.0f} candles/s at most",
        ),
        Result("archive: bounded by", bound(a)),
        Result(
            "requests per job: REST / archive",
            f"{r['requests'] / rounds:,.0f} klines requests / {a['files'] / rounds:,.0f} files "
            "(no REST weight)",
        ),
        Result("CPU, REST: platform / simulator / PostgreSQL", shares(r)),
        Result("CPU, archive: platform / simulator / PostgreSQL", shares(a)),
    ]
    print(f"\nBinance archive benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; machine: {machine()}")
    report("Binance archive vs REST backfill (python -m benchmarks.archive)", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
