"""REST backfill benchmark: storage ceiling, end-to-end throughput, limit utilisation, worker memory.

    python -m benchmarks.backfill            # about 5 minutes; prints one table
    python -m benchmarks.backfill --quick    # smaller sizes, for a smoke run

Everything runs on this machine from one invocation: a throwaway PostgreSQL (durable defaults,
fsync on) and Redis, and `python -m simulator` as a separate process so its CPU is measured apart.

1. Storage: the same 1M candles by raw `COPY` into `ohlcvs` (the ceiling) and by the project's bulk
   upsert (`common.db.upsert_candles`: COPY into a temp table + INSERT ... ON CONFLICT DO UPDATE),
   into an empty table, over identical rows, and over changed rows.
2. End to end, limits off: the real engine (HTTP -> parse -> batched upsert) backfilling Binance
   markets from the simulator, whose history cache is warmed first so the platform is measured.
3. Limit on (Binance's 6,000 weight/min scaled to 1,200 per 20 s): requests per window as a share
   of the limit, and the 429/418 answers we earned.
4. Peak RSS of a `fetch --local` process for a 3-day and a 30-day job of 20 markets, and its CPU
   per 1,000 candles stored, start-up included.
5. Start-up: the CPU a `python -m scripts.fetchers.rest` process spends on imports alone.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import random
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import redis.asyncio as aioredis

from benchmarks.measure import Result, cpu_seconds, machine, memory_mb, postgres_cpu_seconds, report
from common.candle import Candle, Market
from common.db import connect, upsert_candles, upsert_markets
from common.schema import apply_schema
from common.settings import Settings
from common.timeutil import datetime_to_ms, ms_to_datetime
from fetchers.rest.engine import BackfillEngine, EngineOptions, run
from fetchers.rest.job_store import JobStore
from fetchers.rest.jobs import create_job
from fetchers.rest.markets import refresh_markets
from simulator.core import TRADING_STATUSES
from tests.support.services import PostgresServer, RedisServer
from tests.support.simulator import SimHandle, simulator_process

ROOT = Path(__file__).resolve().parents[1]
DAY_MS = 86_400_000
UTC = UTC


# ------------------------------------------------------------------------------------ helpers


@dataclass
class Row:
    section: str
    measure: str
    value: str
    target: str = ""
    met: bool | None = None


def trading_symbols(sim: SimHandle, exchange: str) -> list[str]:
    return [m["symbol"] for m in sim.markets(exchange) if m["status"] in TRADING_STATUSES]


def platform_settings(pg: PostgresServer, rd: RedisServer, sim: SimHandle, dbname: str, **extra) -> Settings:
    values = dict(
        postgres_host="127.0.0.1",
        postgres_port=pg.port,
        postgres_user=pg.user,
        postgres_db=dbname,
        redis_host="127.0.0.1",
        redis_port=rd.port,
        redis_password=rd.password,
        _env_file=None,
        log_dir=ROOT / "logs",
        backfill_source="rest",
    )
    values.update(sim.settings_overrides())
    values.update(extra)
    return Settings(**values)


def settings_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[name.upper()] = str(value)
    return env


def fresh_database(pg: PostgresServer, name: str, settings_for) -> Settings:
    admin = pg.connect("postgres")
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        cur.execute(f"CREATE DATABASE {name}")
    admin.close()
    settings = settings_for(name)
    apply_schema(settings)
    return settings


# ---------------------------------------------------------------------------------- 1. storage


def synthetic_candles(markets: int, minutes: int, seed: int = 1) -> list[Candle]:
    """Exchange-like decimal texts: 8 decimals, magnitudes from 1e-8 to 1e5, varied volumes."""
    rng = random.Random(seed)
    start = datetime_to_ms(datetime(2021, 1, 1, tzinfo=UTC))
    candles = []
    for m in range(markets):
        scale = 10 ** rng.randint(-6, 4)
        price = Decimal(str(round(rng.uniform(1, 9) * scale, 8)))
        for i in range(minutes):
            low = str(price)
            high = str(price + Decimal(rng.randint(0, 500)).scaleb(-8))
            volume = str(Decimal(rng.randint(0, 10**12)).scaleb(-8))
            time_ms = start + i * 60_000
            candles.append(Candle("binance", f"B{m:03d}", "USDT", time_ms, low, high, low, high, volume))
    return candles


def copy_text(candles: list[Candle]) -> io.StringIO:
    buffer = io.StringIO()
    for c in candles:
        buffer.write(
            f"{ms_to_datetime(c.time).isoformat()}\t{c.exchange}\t{c.base_id}\t{c.quote_id}\t"
            f"{c.open}\t{c.high}\t{c.low}\t{c.close}\t{c.volume}\n"
        )
    buffer.seek(0)
    return buffer


def bench_storage(settings: Settings, count: int) -> list[Row]:
    markets = 20
    candles = synthetic_candles(markets, count // markets)
    conn = connect(settings)
    upsert_markets(conn, [Market("binance", f"B{m:03d}", "USDT", f"B{m:03d}USDT") for m in range(markets)])
    conn.commit()

    with conn.cursor() as cur:
        cur.execute("TRUNCATE ohlcvs")
    conn.commit()
    buffer = copy_text(candles)
    began = time.perf_counter()
    with conn.cursor() as cur:
        cur.copy_expert(
            "COPY ohlcvs (time, exchange, base_id, quote_id, open, high, low, close, volume) FROM STDIN",
            buffer,
        )
    conn.commit()
    raw = len(candles) / (time.perf_counter() - began)

    with conn.cursor() as cur:
        cur.execute("TRUNCATE ohlcvs")
    conn.commit()
    rates = {}
    changed = [
        Candle(
            c.exchange,
            c.base_id,
            c.quote_id,
            c.time,
            c.open,
            c.high,
            c.low,
            c.close,
            str(Decimal(c.volume) + Decimal("0.00000001")),
        )
        for c in candles
    ]
    for label, batch in (
        ("empty table", candles),
        ("over identical rows", candles),
        ("over changed rows", changed),
    ):
        began = time.perf_counter()
        for i in range(0, len(batch), 20_000):  # the backfill writer's batch size
            upsert_candles(conn, batch[i : i + 20_000])
            conn.commit()
        rates[label] = len(batch) / (time.perf_counter() - began)
    conn.close()
    rows = [Row("1. storage (1M candles)", "raw COPY into ohlcvs (ceiling)", f"{raw:,.0f} rows/s")]
    for label, rate in rates.items():
        rows.append(
            Row(
                "1. storage (1M candles)",
                f"bulk upsert, {label}",
                f"{rate:,.0f} rows/s ({rate / raw:.0%} of COPY)",
                ">= 50% of COPY",
                rate / raw >= 0.5,
            )
        )
    return rows


# ------------------------------------------------------------------------------- 2. end to end


def run_engine(
    settings: Settings, exchange: str, start_ms: int, end_ms: int, symbols: list[str] | None, unlimited: bool
) -> tuple[object, float, float]:
    """Create and run a job in-process; returns it, the seconds until its last candle committed,
    and the seconds its aggregate refresh took."""

    async def go():
        job = await create_job(settings, exchange, ms_to_datetime(start_ms), ms_to_datetime(end_ms), symbols)
        engine = BackfillEngine(
            settings, job.id, EngineOptions.from_settings(settings, unlimited_rate=unlimited)
        )
        began = time.perf_counter()
        result = await engine.run()
        return result, time.perf_counter() - began - engine.refresh_seconds, engine.refresh_seconds

    return run(go())


def bench_end_to_end(pg: PostgresServer, rd: RedisServer, markets: int, days: int, rounds: int) -> list[Row]:
    with simulator_process(
        "--markets",
        str(markets),
        "--speed",
        "1",
        "--history-days",
        str(days + 3),
        "--history-cache-days",
        str(markets * (days + 1) + 10),
        "--binance-weight-per-window",
        "1000000000",
    ) as sim:
        symbols = trading_symbols(sim, "binance")
        now = sim.clock()["current_minute_ms"]
        end_ms = now - now % DAY_MS
        start_ms = end_ms - days * DAY_MS
        for symbol in symbols:  # warm the simulator's cache: the platform is what is measured
            sim.truth("binance", symbol, start_ms, end_ms)
        settings = fresh_database(
            pg, "bench_e2e", lambda db: platform_settings(pg, rd, sim, db, rest_concurrency=16)
        )
        candles = 0
        seconds = refresh = 0.0
        sim_cpu = pg_cpu = own_cpu = 0.0
        for _ in range(rounds):
            with connect(settings) as conn, conn.cursor() as cur:
                cur.execute("TRUNCATE ohlcvs")
            rd.client().flushall()
            s0, p0, o0 = cpu_seconds(sim.pid), postgres_cpu_seconds(pg.port), time.process_time()
            job, elapsed, refreshed_in = run_engine(
                settings, "binance", start_ms, end_ms, symbols, unlimited=True
            )
            own_cpu += time.process_time() - o0  # first: reading other processes' CPU costs CPU too
            refresh += refreshed_in
            sim_cpu += cpu_seconds(sim.pid) - s0
            pg_cpu += postgres_cpu_seconds(pg.port) - p0
            assert job.failed == 0 and job.done == job.total
            candles += job.candles
            seconds += elapsed
        rate = candles / seconds
        label = f"2. end to end, limits off ({len(symbols)} markets x {days} days, {rounds} rounds)"
        return [
            Row(
                label,
                "candles/s (HTTP -> parse -> upsert, committed)",
                f"{rate:,.0f}",
                ">= 50,000",
                rate >= 50_000,
            ),
            Row(
                label,
                "then: refresh of every aggregate level over the range",
                f"{refresh / rounds:.2f} s per job",
            ),
            Row(
                label,
                "CPU: simulator / platform process / PostgreSQL",
                f"{sim_cpu / seconds:.0%} / {own_cpu / seconds:.0%} / {pg_cpu / seconds:.0%} of one core",
            ),
            Row(
                label,
                "platform CPU per 1,000 candles",
                f"{own_cpu / candles * 1e6:,.1f} ms",
                "<= 3 ms",
                own_cpu / candles * 1e6 <= 3.0,
            ),
        ]


# ----------------------------------------------------------------------------------- 3. limit on


def bench_limit(
    pg: PostgresServer, rd: RedisServer, window: float, weight: int, markets: int | None
) -> list[Row]:
    args = [
        "--speed",
        "1",
        "--history-days",
        "2",
        "--rate-window-seconds",
        str(window),
        "--binance-weight-per-window",
        str(weight),
    ]
    if markets:
        args += ["--markets", str(markets)]
    with simulator_process(*args) as sim:
        settings = fresh_database(
            pg,
            "bench_limit",
            lambda db: platform_settings(
                pg, rd, sim, db, rest_rate_window_seconds=window, binance_rest_weight_per_minute=weight
            ),
        )
        rd.client().flushall()
        now = sim.clock()["current_minute_ms"]
        end_ms = now - now % (3600_000) - 3600_000
        start_ms = end_ms - 3600_000  # the last full hour of every trading market: one request each
        asyncio.run(refresh_markets(settings, "binance"))
        before = sim.stats()["binance"]
        samples: list[tuple[float, int]] = []

        async def sampled():
            job = await create_job(
                settings, "binance", ms_to_datetime(start_ms), ms_to_datetime(end_ms), None
            )
            engine = asyncio.create_task(BackfillEngine(settings, job.id).run())
            client = aioredis.from_url(settings.redis_url)
            store = JobStore(client)
            while not engine.done():
                info = await store.info(job.id)
                samples.append((time.perf_counter(), info.done + info.failed + info.in_flight))
                await asyncio.sleep(0.25)
            await client.aclose()
            return await engine

        job = asyncio.run(sampled())
        after = sim.stats()["binance"]
        sent = after["rest_requests"] - before["rest_requests"]
        # steady state: between 10% and 90% of the job
        lo = next(s for s in samples if s[1] >= job.total * 0.1)
        hi = next(s for s in samples if s[1] >= job.total * 0.9)
        per_window = (hi[1] - lo[1]) / (hi[0] - lo[0]) * window * 2  # klines weigh 2
        label = f"3. limit on ({weight:,} weight per {window:g} s = 6,000/min scaled; {job.total:,} requests)"
        return [
            Row(
                label,
                "weight used per window (steady state)",
                f"{per_window:,.0f} of {weight:,} = {per_window / weight:.1%}",
                ">= 95%",
                per_window / weight >= 0.95,
            ),
            Row(
                label,
                "429 / 418 answers earned by our pace",
                f"{after['over_limit'] - before['over_limit']} (requests sent: {sent:,})",
                "0",
                after["over_limit"] == before["over_limit"],
            ),
        ]


# -------------------------------------------------------------------------------------- 4. memory


def bench_memory(pg: PostgresServer, rd: RedisServer, markets: int, day_counts: list[int]) -> list[Row]:
    rows = []
    with simulator_process(
        "--markets",
        str(markets + 6),
        "--speed",
        "1",  # + the non-trading ones
        "--history-days",
        str(max(day_counts) + 2),
        "--binance-weight-per-window",
        "1000000000",
    ) as sim:
        symbols = trading_symbols(sim, "binance")[:markets]
        now = sim.clock()["current_minute_ms"]
        end_ms = now - now % DAY_MS
        for days in day_counts:
            settings = fresh_database(pg, "bench_memory", lambda db: platform_settings(pg, rd, sim, db))
            rd.client().flushall()
            start = ms_to_datetime(end_ms - days * DAY_MS).strftime("%Y-%m-%dT%H:%M")
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "scripts.fetchers.rest",
                    "fetch",
                    "--exchange",
                    "binance",
                    "--start",
                    start,
                    "--end",
                    ms_to_datetime(end_ms).strftime("%Y-%m-%dT%H:%M"),
                    "--symbols",
                    ",".join(symbols),
                    "--local",
                ],
                cwd=ROOT,
                env=settings_env(settings),
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            peak = 0.0
            began = time.perf_counter()
            children_before = children_cpu()
            while proc.poll() is None:
                try:
                    peak = max(peak, memory_mb(proc.pid)[1])
                except OSError:
                    break
                time.sleep(0.2)
            out = proc.communicate()[0]
            if proc.returncode != 0:
                raise RuntimeError(f"fetch failed: {out}")
            process_cpu = children_cpu() - children_before
            stored = days * len(symbols) * 1440
            rows.append(
                Row(
                    f"4. worker memory ({len(symbols)} markets)",
                    f"whole fetch --local process, CPU per 1,000 candles stored, {days}-day job",
                    f"{process_cpu / stored * 1e6:,.1f} ms (start-up included)",
                )
            )
            rows.append(
                Row(
                    f"4. worker memory ({len(symbols)} markets)",
                    f"peak RSS of fetch --local, {days}-day job",
                    f"{peak:,.0f} MB ({days * len(symbols) * 1440:,} candles in "
                    f"{time.perf_counter() - began:,.0f} s)",
                    "flat in the range",
                )
            )
    return rows


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def bench_startup(runs: int = 5) -> list[Row]:
    """CPU a `python -m scripts.fetchers.rest` process spends before it does anything (imports)."""
    before = children_cpu()
    for _ in range(runs):
        subprocess.run(
            [sys.executable, "-m", "scripts.fetchers.rest", "fetch", "--help"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            check=True,
        )
    per_run = (children_cpu() - before) / runs
    return [
        Row(
            "5. process start-up",
            "CPU of `fetch --help` (imports, no work)",
            f"{per_run:.2f} s",
            "< 1 s",
            per_run < 1.0,
        )
    ]


# ------------------------------------------------------------------------------------------ main


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.backfill", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes (a smoke run, not the reference figures)"
    )
    parser.add_argument(
        "--sections", default="12345", help="which sections to run, e.g. 2 or 13 (default: all)"
    )
    args = parser.parse_args()
    quick = args.quick
    pg_version = "?"
    pg = PostgresServer(durable=True).start()
    rd = RedisServer().start()
    rows: list[Row] = []
    try:
        with pg.connect("postgres") as conn:
            with conn.cursor() as cur:
                cur.execute("SHOW server_version")
                pg_version = cur.fetchone()[0]
        if "1" in args.sections:
            storage = fresh_database(
                pg,
                "bench_storage",
                lambda db: Settings(
                    postgres_host="127.0.0.1",
                    postgres_port=pg.port,
                    postgres_user=pg.user,
                    postgres_db=db,
                    _env_file=None,
                ),
            )
            rows += bench_storage(storage, 100_000 if quick else 1_000_000)
        if "2" in args.sections:
            rows += bench_end_to_end(
                pg, rd, markets=10 if quick else 20, days=1 if quick else 5, rounds=1 if quick else 3
            )
        if "3" in args.sections:
            rows += bench_limit(pg, rd, window=20.0, weight=1200, markets=200 if quick else None)
        if "4" in args.sections:
            rows += bench_memory(pg, rd, markets=20, day_counts=[1, 3] if quick else [3, 30])
        if "5" in args.sections:
            rows += bench_startup()
    finally:
        rd.stop()
        pg.stop()
    print(f"\nREST backfill benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(f"machine: {machine()}; PostgreSQL {pg_version} (durable defaults: fsync on)\n")
    results = []
    for row in rows:
        section = row.section.split(" (")[0]
        results.append(Result(f"{section}: {row.measure}", row.value, row.target, row.met))
    print("sections (conditions):")
    for section in dict.fromkeys(row.section for row in rows):
        print(f"  {section}")
    report("REST backfill (python -m benchmarks.backfill)", results)
    print(
        "\npeak RSS of this benchmark process: "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
