"""Export benchmark: rows/s and peak memory of `python -m scripts.export` for a year of one market.

    python -m benchmarks.export            # a year of minutes (525,600 rows); about 2 minutes
    python -m benchmarks.export --quick    # two months, for a smoke run

A throwaway PostgreSQL gets one market's minutes from `generate_series` (prices and volumes of
varied scale, 0 to 8 decimals, as exchanges send them), then:

1. Rows/s of the export itself (`scripts.export.export`, in this process, the interpreter's start-up
   left out), Parquet and CSV, best of `--rounds`: PostgreSQL's side (COPY of the NUMERIC text)
   and ours (decimal128 conversion, Parquet encoding) both count, as a user waits for both. Beside
   it, the CPU both sides spent per 100,000 rows, which says more than the rate when other work
   shares the machine's cores.
2. Peak RSS of a whole `python -m scripts.export` process over 45, 91, 182 and 365 days: the export
   streams in batches of `scripts.export.BATCH_BYTES`, so once a range is a few batches long a
   longer one must not need more memory.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from benchmarks.measure import Result, machine, postgres_cpu_seconds, report
from common.candle import Market, MarketKey
from common.db import connect, upsert_markets
from common.levels import INTERVALS
from common.schema import apply_schema
from common.settings import Settings
from common.timeutil import datetime_to_ms
from scripts.export import export
from tests.support.services import PostgresServer

ROOT = Path(__file__).resolve().parents[1]
MARKET = Market("binance", "BTC", "USDT", "BTCUSDT")
START = datetime(2023, 1, 1, tzinfo=UTC)
TARGET_ROWS_PER_SECOND = 500_000
FLAT_MB = 15
"""Doubling a range that is already several batches long may add at most this (allocator noise)."""

_FILL = """
INSERT INTO ohlcvs (time, exchange, base_id, quote_id, open, high, low, close, volume)
SELECT t, 'binance', 'BTC', 'USDT', round(p, s), round(p + 3.5, s), round(p - 2.25, s), round(p + 1, s),
       round((random() * 1000)::numeric, mod(i, 9)::int)
FROM (SELECT t, i, (mod(i, 3) + 2)::int AS s, (20000 + 5000 * sin(i / 5000.0))::numeric AS p
      FROM generate_series(%(start)s::timestamptz, %(end)s::timestamptz - interval '1 minute',
                           interval '1 minute') WITH ORDINALITY AS g(t, i)) AS rows
"""


def fill(settings: Settings, end: datetime) -> int:
    with connect(settings) as conn, conn.cursor() as cur:
        upsert_markets(conn, [MARKET])
        cur.execute(_FILL, dict(start=START, end=end))
        rows = cur.rowcount
    conn.close()
    vacuum = connect(settings)
    vacuum.autocommit = True
    with vacuum.cursor() as cur:
        cur.execute("VACUUM ANALYZE ohlcvs")  # a settled table, as a year-old history is
    vacuum.close()
    return rows


@dataclass
class Speed:
    """The best of several exports of the same range: wall rows/s, and what the rows cost in CPU."""

    rows: int = 0
    rate: float = 0.0
    own_cpu: float = 0.0
    """Seconds of CPU of this process (every thread) for the export with the best rate."""
    pg_cpu: float = 0.0
    size: int = 0


def rows_per_second(
    settings: Settings, pg: PostgresServer, end: datetime, fmt: str, rounds: int, folder: Path
) -> Speed:
    """`rounds` exports of the whole range; the fastest one's figures."""
    best = Speed()
    output = folder / f"year.{fmt}"
    for _ in range(rounds):
        pg0, own0, began = postgres_cpu_seconds(pg.port), time.process_time(), time.perf_counter()
        plan = export(
            settings, [MarketKey(MARKET.exchange, MARKET.base_id, MARKET.quote_id)], INTERVALS["1m"],
            datetime_to_ms(START), datetime_to_ms(end), fmt, output,
        )  # fmt: skip
        rate = plan.rows / (time.perf_counter() - began)
        own = time.process_time() - own0
        if rate > best.rate:
            best = Speed(plan.rows, rate, own, postgres_cpu_seconds(pg.port) - pg0, output.stat().st_size)
    return best


# The export run as `python -m scripts.export` does, reporting its own peak RSS as it exits: VmHWM of
# /proc/self (this program's memory since exec). A parent's rusage of its child would count the
# pages the child shared with this benchmark between fork and exec.
_PEAK_WRAPPER = """
import atexit, runpy, sys
def peak():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM:'):
            sys.stderr.write('peak-rss-kb ' + line.split()[1] + '\\n')
atexit.register(peak)
sys.argv = ['scripts.export', *sys.argv[1:]]
runpy.run_module('scripts.export', run_name='__main__', alter_sys=True)
"""


def process_peak(settings: Settings, end: datetime, fmt: str, folder: Path) -> tuple[float, float]:
    """(peak RSS in MB, wall seconds) of a `python -m scripts.export` process over [START, end)."""
    names = ("postgres_host", "postgres_port", "postgres_user", "postgres_db")
    env = {**os.environ, **{name.upper(): str(getattr(settings, name)) for name in names}}
    command = [
        sys.executable, "-c", _PEAK_WRAPPER, "--exchange", "binance", "--symbols", "BTC/USDT",
        "--start", START.strftime("%Y-%m-%dT%H:%M"), "--end", end.strftime("%Y-%m-%dT%H:%M"),
        "--format", fmt, "--output", str(folder / f"process.{fmt}"),
    ]  # fmt: skip
    began = time.perf_counter()
    done = subprocess.run(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    seconds = time.perf_counter() - began
    peaks = [line.split()[1] for line in done.stderr.splitlines() if line.startswith("peak-rss-kb ")]
    if done.returncode != 0 or not peaks:
        raise RuntimeError(f"export failed ({done.returncode}): {done.stderr}")
    return int(peaks[-1]) / 1024, seconds


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="two months instead of a year (a smoke run)")
    parser.add_argument("--rounds", type=int, default=3, help="exports per format; the best counts")
    args = parser.parse_args()
    days = 62 if args.quick else 365
    end = START + timedelta(days=days)
    # Memory grows until each connection has a few batches in flight (BATCH_BYTES of text each,
    # about 27,000 minutes), then must stay put: the last doubling of the range is the test.
    spans = (8, 15, 31, 62) if args.quick else (45, 91, 182, 365)
    pg = PostgresServer().start()
    results: list[Result] = []
    try:
        admin = pg.connect("postgres")
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute("CREATE DATABASE bench_export")
        admin.close()
        settings = Settings(
            postgres_host="127.0.0.1",
            postgres_port=pg.port,
            postgres_user=pg.user,
            postgres_db="bench_export",
            _env_file=None,
        )
        apply_schema(settings, plain=True)
        began = time.perf_counter()
        rows = fill(settings, end)
        print(f"filled {rows:,} minutes of {MARKET.pair} in {time.perf_counter() - began:.1f} s", flush=True)
        label = f"{days} days of one market's minutes ({rows:,} rows)"
        with tempfile.TemporaryDirectory(prefix="cfr-bench-export-") as folder:
            for fmt in ("parquet", "csv"):
                speed = rows_per_second(settings, pg, end, fmt, args.rounds, Path(folder))
                per_100k = 100_000 / speed.rows
                results += [
                    Result(
                        f"{fmt}: rows/s, {label}, best of {args.rounds}",
                        f"{speed.rate:,.0f} ({speed.size / 2**20:,.1f} MB file)",
                        f">= {TARGET_ROWS_PER_SECOND:,}",
                        speed.rate >= TARGET_ROWS_PER_SECOND,
                    ),
                    Result(
                        f"{fmt}: CPU per 100,000 rows, export process / PostgreSQL",
                        f"{speed.own_cpu * per_100k:.3f} s / {speed.pg_cpu * per_100k:.3f} s",
                    ),
                ]
            results.append(Result("load average (1 min) after the exports", f"{os.getloadavg()[0]:.1f}"))
            for fmt in ("parquet", "csv"):
                peaks = [process_peak(settings, START + timedelta(days=d), fmt, Path(folder)) for d in spans]
                growth = peaks[-1][0] - peaks[-2][0]
                results.append(
                    Result(
                        f"{fmt}: peak RSS of the process, {' / '.join(map(str, spans))} days",
                        " / ".join(f"{mb:,.0f}" for mb, _ in peaks)
                        + f" MB (the year's process: {peaks[-1][1]:.1f} s)",
                        f"flat: the last doubling adds <= {FLAT_MB} MB",
                        growth <= FLAT_MB,
                    )
                )
    finally:
        pg.stop()
    print(f"\nmachine: {machine()}")
    report("Export (python -m benchmarks.export)", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
