"""Web API benchmark: GET /api/ohlcvs throughput and latency, and websocket fan-out; one table.

One run, every figure from it: a throwaway PostgreSQL (a year of 1-minute bars for one market,
summaries refreshed) and Redis, the app under uvicorn with ONE worker, and load generators in
separate processes (aiohttp, keep-alive connections).

1. `/api/ohlcvs` with 500 bars at 1m and at 1h (random `end` over the year, so not one cached page),
   beside two ceilings measured in the same run by the same server process: a route returning
   pre-encoded bytes of the same size with no database, and FastAPI's default return of a list of
   500 dicts (`jsonable_encoder` + `json.dumps`, the naive way).
2. N websocket subscribers (1m bars, spread over 50 markets), each receiving one bar per second:
   the publisher PUBLISHes what the live pipeline would, with `time` = the wall clock at publish,
   so delivery latency = arrival time - `time`.

    .venv/bin/python -m benchmarks.web [--seconds 8] [--subscribers 1000,5000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.backfill import settings_env
from benchmarks.measure import cpu_seconds, machine, postgres_cpu_seconds
from common.candle import Market
from common.db import connection, refresh_aggregates, upsert_markets
from common.redis_keys import ws_send_key
from common.schema import apply_schema
from common.settings import Settings
from tests.support.services import PostgresServer, RedisServer, free_port

ROOT = Path(__file__).resolve().parents[1]
MARKET = Market("binance", "BTC", "USDT", "BTCUSDT")
WS_MARKETS = [Market("bitfinex", f"C{i:02d}", "USD", f"tC{i:02d}USD") for i in range(50)]
YEAR_START = datetime(2023, 1, 2, tzinfo=UTC)  # a Monday
YEAR_MS = 365 * 86_400_000
START_MS = int(YEAR_START.timestamp() * 1000)
CONCURRENCY = 16

# One year of minutes with varied, exact decimal text (8 decimals, like Binance).
_LOAD_YEAR = """
INSERT INTO ohlcvs (time, exchange, base_id, quote_id, open, high, low, close, volume)
SELECT t, %s, %s, %s, p, p + 1.25, p - 0.75, p + 0.5, round((i %% 97)::numeric / 7, 8)
FROM (SELECT t, i, round((30000 + 1000 * sin(i / 5000.0) + (i %% 13))::numeric, 8) AS p
      FROM generate_series(%s::timestamptz, %s::timestamptz - interval '1 minute', interval '1 minute')
           WITH ORDINALITY AS g(t, i)) AS s
"""


# --------------------------------------------------------------------------------- the server


def bench_app():
    """The real app plus the two ceiling routes (uvicorn --factory benchmarks.web:bench_app)."""
    from fastapi.responses import Response

    from web.main import create_app

    app = create_app()
    size = int(os.environ.get("BENCH_BYTES", "60000"))
    payload = b"[" + b" " * (size - 2) + b"]"
    dicts = [
        {
            "time": START_MS + i * 60_000,
            "open": "30000.12345678",
            "high": "30001.37345678",
            "low": "29999.37345678",
        }
        | {"close": "30000.62345678", "volume": "1.23456789"}
        for i in range(500)
    ]

    @app.get("/bench/bytes", include_in_schema=False)
    async def pre_encoded() -> Response:
        return Response(payload, media_type="application/json")

    @app.get("/bench/dicts", include_in_schema=False)
    async def default_return() -> list[dict]:
        return dicts

    return app


def start_server(settings: Settings, body_size: int, log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = settings_env(settings)
    env["BENCH_BYTES"] = str(body_size)
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "benchmarks.web:bench_app", "--factory", "--port", str(port)]
        + ["--host", "127.0.0.1", "--workers", "1", "--log-level", "warning", "--ws", "websockets-sansio"],
        cwd=ROOT,
        env=env,
        stdout=open(log_path, "wb"),
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/api/openapi.json", timeout=2):
                return proc, base
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"the server did not start; see {log_path}")


# ------------------------------------------------------------------------------------ HTTP load


def _http_load(urls: list[str], seconds: float, concurrency: int) -> tuple[int, list[float], int]:
    """Requests done (warm-up included), latencies (s) of the measured ones and failures, from
    `concurrency` keep-alive connections."""
    import aiohttp

    async def run():
        latencies: list[float] = []
        failures = 0
        done = 0
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def worker(seed: int, until: float, record: bool):
                nonlocal failures, done
                rng = random.Random(seed)
                while time.perf_counter() < until:
                    began = time.perf_counter()
                    async with session.get(rng.choice(urls)) as reply:
                        await reply.read()
                        if reply.status != 200:
                            failures += 1
                    done += 1
                    if record:
                        latencies.append(time.perf_counter() - began)

            warm = time.perf_counter() + 1.0
            await asyncio.gather(*(worker(i, warm, False) for i in range(concurrency)))
            start = time.perf_counter()
            await asyncio.gather(*(worker(i, start + seconds, True) for i in range(concurrency)))
        return done, latencies, failures

    return asyncio.run(run())


def http_row(name: str, urls: list[str], seconds: float, server_pid: int, pg_port: int) -> dict:
    cpu_before = cpu_seconds(server_pid), postgres_cpu_seconds(pg_port)
    with ProcessPoolExecutor(1) as pool:
        done, latencies, failures = pool.submit(_http_load, urls, seconds, CONCURRENCY).result()
    server_cpu = cpu_seconds(server_pid) - cpu_before[0]
    pg_cpu = postgres_cpu_seconds(pg_port) - cpu_before[1]
    latencies.sort()
    return {
        "name": name,
        "rps": len(latencies) / seconds,
        "server_cpu_ms": server_cpu / done * 1000,
        "pg_cpu_ms": pg_cpu / done * 1000,
        "p50": latencies[len(latencies) // 2] * 1000,
        "p99": latencies[int(len(latencies) * 0.99)] * 1000,
        "failures": failures,
    }


# ------------------------------------------------------------------------------ websocket load


def _ws_clients(url: str, first: int, count: int, seconds: float, shared) -> tuple[int, list[float]]:
    """`count` sockets, each subscribed to one market. When all have subscribed (or failed) this
    process says so in `shared`, then records the latency of every bar in the window it is given."""
    import aiohttp

    async def run():
        latencies: list[float] = []
        subscribed = 0
        settled = 0
        all_settled = asyncio.Event()
        window = [0.0, 0.0]
        # limit=0: no cap on concurrent connections (aiohttp's default pool holds 100)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

            def settle() -> None:
                nonlocal settled
                settled += 1
                if settled == count:
                    all_settled.set()

            async def one(index: int):
                nonlocal subscribed
                market = WS_MARKETS[index % len(WS_MARKETS)]
                try:
                    async with session.ws_connect(url, heartbeat=None, max_msg_size=0) as ws:
                        message = {
                            "event_type": "subscribe",
                            "data_type": "ohlcv",
                            "exchange": market.exchange,
                        }
                        message |= {"base_id": market.base_id, "quote_id": market.quote_id, "interval": "1m"}
                        await ws.send_str(json.dumps(message))
                        async for frame in ws:
                            now = time.time()
                            data = json.loads(frame.data)
                            if data.get("event_type") == "subscribed":
                                subscribed += 1
                                settle()
                            elif "open" in data and window[0] and now >= window[0]:
                                if now > window[1]:
                                    break
                                latencies.append(now - data["time"] / 1000)
                except (TimeoutError, aiohttp.ClientError, OSError):
                    settle()

            tasks = []
            for i in range(first, first + count):
                tasks.append(asyncio.create_task(one(i)))
                if i % 100 == 0:
                    await asyncio.sleep(0.1)  # do not overflow the server's accept queue
            await asyncio.wait_for(all_settled.wait(), timeout=300)
            with shared["lock"]:
                shared["ready"].value += 1
            while not shared["start"].value:
                await asyncio.sleep(0.1)
            window[:] = [shared["start"].value, shared["start"].value + seconds]
            await asyncio.sleep(max(0.0, window[1] + 1.5 - time.time()))
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return subscribed, latencies

    return asyncio.run(run())


def _publish(redis_client, settings: Settings, market: Market) -> None:
    """One bar, `time` = now, exactly as the live pipeline PUBLISHes it."""
    key = ws_send_key(market.exchange, market.base_id, market.quote_id, settings.redis_key_delimiter)
    bar = {"time": int(time.time() * 1000), "open": "1.5", "high": "2.25", "low": "1.25"}
    bar |= {"close": "2.0", "volume": "12.5"}
    redis_client.publish(key, json.dumps(bar, separators=(",", ":")))


def ws_row(
    base: str, redis_client, settings: Settings, subscribers: int, seconds: float, server_pid: int
) -> dict:
    url = base.replace("http", "ws") + "/api/ohlcvs"
    processes = 2
    share = subscribers // processes
    with multiprocessing.Manager() as manager, ProcessPoolExecutor(processes) as pool:
        shared = {"lock": manager.Lock(), "ready": manager.Value("i", 0), "start": manager.Value("d", 0.0)}
        futures = [pool.submit(_ws_clients, url, p * share, share, seconds, shared) for p in range(processes)]
        cpu_window: list[float] = []
        start = stop = 0.0
        step = 1.0 / len(WS_MARKETS)  # each market once a second, spread evenly like live traffic
        turn = 0
        while not all(f.done() for f in futures):
            tick = time.time()
            if not start and shared["ready"].value == processes:
                start = tick + 1.0
                stop = start + seconds
                shared["start"].value = start
            if start and tick >= start and not cpu_window:
                cpu_window.append(cpu_seconds(server_pid))
            if start and tick >= stop and len(cpu_window) == 1:
                cpu_window.append(cpu_seconds(server_pid))
            if not stop or tick < stop + 1:
                _publish(redis_client, settings, WS_MARKETS[turn % len(WS_MARKETS)])
                turn += 1
            time.sleep(max(0.0, step - (time.time() - tick)))
        results = [f.result() for f in futures]
    latencies = sorted(lat for _, lats in results for lat in lats)
    connected = sum(c for c, _ in results)
    return {
        "server_cpu_ms": (cpu_window[-1] - cpu_window[0]) / max(1, len(latencies)) * 1000,
        "subscribers": connected,
        "requested": subscribers,
        "received_per_s": len(latencies) / seconds,
        "expected_per_s": connected,
        "p50": latencies[len(latencies) // 2] * 1000 if latencies else float("nan"),
        "p99": latencies[int(len(latencies) * 0.99)] * 1000 if latencies else float("nan"),
    }


# ------------------------------------------------------------------------------------- the run


def prepare(pg: PostgresServer, rd: RedisServer) -> Settings:
    admin = pg.connect("postgres")
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute("DROP DATABASE IF EXISTS cfr_bench_web WITH (FORCE)")
        cur.execute("CREATE DATABASE cfr_bench_web")
    admin.close()
    settings = Settings(
        postgres_host="127.0.0.1",
        postgres_port=pg.port,
        postgres_user=pg.user,
        postgres_db="cfr_bench_web",
        redis_host="127.0.0.1",
        redis_port=rd.port,
        redis_password=rd.password,
        log_dir=ROOT / "logs",
        _env_file=None,
    )
    apply_schema(settings)
    end = datetime.fromtimestamp((START_MS + YEAR_MS) / 1000, UTC)
    with connection(settings) as conn:
        upsert_markets(conn, [MARKET, *WS_MARKETS])
        with conn.cursor() as cur:
            cur.execute(_LOAD_YEAR, (MARKET.exchange, MARKET.base_id, MARKET.quote_id, YEAR_START, end))
    refresh_aggregates(settings, None, None)
    with connection(settings) as conn, conn.cursor() as cur:
        cur.execute("ANALYZE")
    return settings


def ohlcvs_urls(base: str, interval: str, step_ms: int) -> list[str]:
    rng = random.Random(7)
    earliest = START_MS + 500 * step_ms
    return [
        f"{base}/api/ohlcvs?exchange=binance&base_id=BTC&quote_id=USDT&interval={interval}&limit=500"
        f"&end={rng.randrange(earliest, START_MS + YEAR_MS)}"
        for _ in range(2000)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per HTTP scenario")
    parser.add_argument("--ws-seconds", type=float, default=10.0, help="measured seconds per WS scenario")
    parser.add_argument("--subscribers", default="1000,5000", help="comma-separated subscriber counts")
    args = parser.parse_args()

    pg, rd = PostgresServer().start(), RedisServer().start()
    server = None
    try:
        began = time.perf_counter()
        settings = prepare(pg, rd)
        print(f"loaded a year of 1m bars ({YEAR_MS // 60_000:,} rows) in {time.perf_counter() - began:.0f} s")
        log_path = ROOT / "logs" / "bench_web.log"
        log_path.parent.mkdir(exist_ok=True)
        server, base = start_server(settings, 0, log_path)
        with urllib.request.urlopen(ohlcvs_urls(base, "1m", 60_000)[0]) as reply:
            body = reply.read()
        assert len(json.loads(body)) == 500
        server.terminate()
        server.wait()
        server, base = start_server(settings, len(body), log_path)

        scenarios = [
            ("GET /api/ohlcvs 1m, 500 bars", ohlcvs_urls(base, "1m", 60_000)),
            ("GET /api/ohlcvs 1h, 500 bars", ohlcvs_urls(base, "1h", 3_600_000)),
            (f"ceiling: pre-encoded {len(body):,} bytes, no DB", [f"{base}/bench/bytes"]),
            ("ceiling: FastAPI default list of 500 dicts", [f"{base}/bench/dicts"]),
        ]
        http = [http_row(name, urls, args.seconds, server.pid, pg.port) for name, urls in scenarios]
        counts = [int(n) for n in args.subscribers.split(",")]
        ws = [ws_row(base, rd.client(), settings, n, args.ws_seconds, server.pid) for n in counts]
    finally:
        if server is not None:
            server.terminate()
            server.wait()
        rd.stop()
        pg.stop()

    print(
        f"\nMachine: {machine()}; {datetime.now(UTC):%Y-%m-%d}; uvicorn, 1 worker; "
        f"{CONCURRENCY} connections\n"
    )
    print("| measure | per second | p50 ms | p99 ms | app CPU ms each | PostgreSQL CPU ms each | target |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for row in http:
        target = ">= 2,000 req/s, p99 < 50 ms" if row["name"].startswith("GET") else "ceiling"
        failed = f" ({row['failures']} failed)" if row["failures"] else ""
        print(
            f"| {row['name']} | {row['rps']:,.0f} req{failed} | {row['p50']:.1f} | {row['p99']:.1f} "
            f"| {row['server_cpu_ms']:.2f} | {row['pg_cpu_ms']:.2f} | {target} |"
        )
    for row in ws:
        print(
            f"| WS: {row['subscribers']:,} subscribed (of {row['requested']:,}), 1 bar/s each "
            f"| {row['received_per_s']:,.0f} bars "
            f"(of {row['expected_per_s']:,.0f}) | {row['p50']:.1f} | {row['p99']:.1f} "
            f"| {row['server_cpu_ms']:.3f} | | >= 5,000 subscribers, p99 < 100 ms |"
        )
    print("\nWS p50/p99 = delivery latency from PUBLISH to arrival at the client; CPU ms each = per request")
    print("(warm-up included) or per delivered bar, read from /proc for the app and PostgreSQL processes.")


if __name__ == "__main__":
    main()
