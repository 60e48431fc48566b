"""GET /metrics scrape time with the whole platform live on every market; one table.

    python -m benchmarks.metrics                 # full market lists (1,695 + 909 + 293), ~3 minutes
    python -m benchmarks.metrics --quick         # 30 markets per exchange
    python -m benchmarks.metrics --scrapes 60 --warm-seconds 120

Everything runs on this machine as users run it, on a throwaway PostgreSQL and Redis:
`python -m simulator --markets all --speed 20`, the three websocket fetchers, the updater, a Celery
worker (three pool processes) and beat (repair every `--repair-interval` s), and the web app
(`python -m web`), each a process of its own publishing its metrics. Once every connection is up and
the platform has run `--warm-seconds` (websocket coverage, outages and repair jobs pile up as they
would), the web's `/metrics` is scraped `--scrapes` times, one a second, as Prometheus would: each
scrape's wall time from request to last byte, on a fresh connection; the jobs and coverage figures
are read in the background every METRICS_STATE_SECONDS (30), so some scrapes share the machine with
that reading. Beside it, what one reading of the coverage counts costs (`GET /api/coverage/summary`
reads the same), the size of an answer and the processes it holds. Target: a scrape in under 50 ms
(the median; p95 and the slowest beside it).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

from benchmarks.backfill import settings_env
from benchmarks.measure import Result, machine, report
from benchmarks.soak import SIM_BEATS, Supervisor, live_platform_settings, log, start_platform
from common.exchanges import EXCHANGES
from common.redis_keys import ws_health_key
from fetchers.rest.markets import refresh_markets
from tests.support.metrics import parse
from tests.support.services import PostgresServer, RedisServer, free_port, wait_for
from tests.support.simulator import simulator_process

DATABASE = "cfr_bench_metrics"
TARGET_MS = 50.0
COVERAGE_READS = 5
SPEED = 20
"""Simulated seconds per real second: a minute closes every 3 s, so coverage and flushes move."""


def timed_get(url: str) -> tuple[float, bytes]:
    began = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as reply:
        body = reply.read()
    return (time.perf_counter() - began) * 1000, body


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def connected(settings, since_ms: int) -> bool:
    import redis

    client = redis.Redis(
        host=settings.redis_host,
        port=settings.redis_port,
        password=settings.redis_password.get_secret_value(),
    )
    try:
        for exchange in EXCHANGES:
            health = {k.decode(): v.decode() for k, v in client.hgetall(ws_health_key(exchange)).items()}
            if int(health.get("updated_ms", 0)) < since_ms or int(health.get("connections_up", 0)) == 0:
                return False
            if health.get("connections_up") != health.get("connections_total"):
                return False
        return True
    finally:
        client.close()


def measure(args: argparse.Namespace, pg: PostgresServer, rd: RedisServer, logdir: Path) -> list[Result]:
    flags = ["--markets", args.markets, "--speed", str(SPEED), "--rate-window-seconds", "3"]
    flags += ["--max-updates-per-real-second", "1", *SIM_BEATS]
    with simulator_process(*flags, log_path=logdir / "simulator.err") as sim:
        settings = live_platform_settings(
            pg,
            rd,
            sim,
            logdir,
            3.0,
            DATABASE,
            web_port=free_port(),
            repair_interval_seconds=args.repair_interval,
        )
        for exchange in EXCHANGES:
            asyncio.run(refresh_markets(settings, exchange))
        supervisor = Supervisor({**settings_env(settings), "PYTHONUNBUFFERED": "1"}, logdir)
        base = f"http://127.0.0.1:{settings.web_port}"
        try:
            started_ms = int(time.time() * 1000)
            start_platform(supervisor, logdir, web=True)
            wait_for(lambda: connected(settings, started_ms), 300, "every connection up")
            log(f"every connection up; running {args.warm_seconds:g} s before scraping")
            time.sleep(args.warm_seconds)
            scrapes, coverage = [], []
            body = b""
            for _ in range(args.scrapes):
                took, body = timed_get(f"{base}/metrics")
                scrapes.append(took)
                time.sleep(1)
            for _ in range(COVERAGE_READS):
                coverage.append(timed_get(f"{base}/api/coverage/summary")[0])
        finally:
            supervisor.stop_all()
    found = parse(body.decode())
    processes = {s.labels["process"] for s in found.samples if "process" in s.labels}
    roles = Counter(process.split("@")[0] for process in processes)
    seen = ", ".join(f"{role} x{count}" if count > 1 else role for role, count in sorted(roles.items()))
    markets = int(found.total("cfr_ws_markets"))
    median = percentile(scrapes, 0.5)
    summary = percentile(coverage, 0.5)
    return [
        Result("markets followed (all exchanges)", f"{markets:,}"),
        Result("processes in one scrape", f"{sum(roles.values())}: {seen}"),
        Result("answer size", f"{len(body) / 1024:.0f} KiB, {len(found.samples):,} samples"),
        Result("GET /metrics, median", f"{median:.1f} ms", f"< {TARGET_MS:g} ms", median < TARGET_MS),
        Result("GET /metrics, p95 / slowest", f"{percentile(scrapes, 0.95):.1f} / {max(scrapes):.1f} ms"),
        Result("coverage counts alone (GET /api/coverage/summary), median", f"{summary:.1f} ms"),
        Result("missing minutes at the end", f"{found.total('cfr_missing_minutes'):,.0f}"),
    ]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.metrics", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="30 markets per exchange, shorter warm-up")
    parser.add_argument("--markets", help="simulator markets per exchange, or 'all' (default: all)")
    parser.add_argument("--scrapes", type=int, default=30, help="scrapes measured, one a second")
    parser.add_argument(
        "--warm-seconds", type=float, help="real seconds the platform runs first (default 60)"
    )
    parser.add_argument("--repair-interval", type=float, default=20.0, help="REPAIR_INTERVAL_SECONDS")
    args = parser.parse_args()
    args.markets = args.markets or ("30" if args.quick else "all")
    if args.warm_seconds is None:
        args.warm_seconds = 10.0 if args.quick else 60.0
    if args.quick:
        args.scrapes = min(args.scrapes, 10)
    logdir = Path(tempfile.mkdtemp(prefix="cfr-bench-metrics-"))
    pg = PostgresServer().start()
    rd = RedisServer().start()
    try:
        rows = measure(args, pg, rd, logdir)
    finally:
        rd.stop()
        pg.stop()
    print(f"\n{machine()}; simulator --markets {args.markets} --speed {SPEED}; {args.scrapes} scrapes")
    report("metrics (python -m benchmarks.metrics)", rows)
    missed = any(row.met is False for row in rows)
    if missed:
        print(f"\nthe processes' logs are kept in {logdir}")
    else:
        shutil.rmtree(logdir, ignore_errors=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
