"""Web API benchmark: GET /api/ohlcvs throughput and latency, and websocket fan-out; one table.

One run, every figure from it: a throwaway PostgreSQL (a year of 1-minute bars for one market,
summaries refreshed) and Redis, the app under uvicorn with ONE worker (uvloop, httptools).

1. `/api/ohlcvs` with 500 bars at 1m and at 1h, load from wrk (the native HTTP load generator:
   Debian package `wrk`, required) with 16 keep-alive connections, 1 s warm-up then `--seconds`
   measured; every request draws its own `end` uniformly over the year (past the first 500 bars),
   so no cache could answer them from one entry. On 2+ cores the app is pinned to core 0 and wrk
   to core 1 for this part (PostgreSQL floats). Beside it, two ceilings measured in the same run
   by the same server process: a route returning pre-encoded bytes of the same size with no
   database, and FastAPI's default return of a list of 500 dicts (`jsonable_encoder` +
   `json.dumps`).
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
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.backfill import settings_env
from benchmarks.measure import Result, cpu_seconds, machine, memory_mb, postgres_cpu_seconds, report
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
# The app on one core and wrk on the other (PostgreSQL floats), so the two do not fight for one.
CORES: tuple[int | None, int | None] = (0, 1) if (os.cpu_count() or 1) >= 2 else (None, None)

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
    command = [sys.executable, "-m", "uvicorn", "benchmarks.web:bench_app", "--factory", "--port", str(port)]
    command += ["--host", "127.0.0.1", "--workers", "1", "--log-level", "warning"]
    command += ["--ws", "websockets-sansio", "--loop", "uvloop", "--http", "httptools"]
    proc = subprocess.Popen(
        command,
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

# wrk (a native load generator) so that the client does not eat the CPU the server needs. Each
# request draws its own window: `end` uniform over the year (after the first `limit` bars), so no
# cache could answer them from one entry. The `done` hook prints wrk's own counts and percentiles.
_WRK_SCRIPT = """
local path, lowest, span = "%(path)s", %(lowest)d, %(span)d
function init(args) math.randomseed(%(seed)d) end
function request()
  if span == 0 then return wrk.format("GET", path) end
  return wrk.format("GET", path .. "&end=" .. (lowest + math.random(0, span)))
end
function done(summary, latency, requests)
  io.write(string.format("WRK {\\"requests\\": %%d, \\"micros\\": %%d, \\"status_errors\\": %%d, "
    .. "\\"socket_errors\\": %%d, \\"p50\\": %%d, \\"p99\\": %%d}\\n", summary.requests, summary.duration,
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.timeout, latency:percentile(50), latency:percentile(99)))
end
"""


def require_wrk() -> str:
    found = shutil.which("wrk")
    if found is None:
        sys.exit("benchmarks.web needs wrk, the native HTTP load generator: apt-get install wrk")
    return found


def set_affinity(pid: int, cores: set[int]) -> None:
    """Run every thread of `pid` on `cores` only."""
    for thread in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(thread), cores)
        except ProcessLookupError:
            continue


def pinned(command: list[str], core: int | None) -> list[str]:
    """`command` bound to one core with taskset when there is one to spare (see CORES)."""
    if core is None or shutil.which("taskset") is None:
        return command
    return ["taskset", "-c", str(core), *command]


def wrk(base: str, path: str, lowest_ms: int, span_ms: int, seconds: float) -> dict:
    script = Path(tempfile.mkstemp(prefix="cfr-bench-", suffix=".lua")[1])
    script.write_text(_WRK_SCRIPT % dict(path=path, lowest=lowest_ms, span=span_ms, seed=7))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        command = [require_wrk(), "-t1", f"-c{CONCURRENCY}", f"-d{max(1, round(seconds))}s"]
        command += ["--timeout", "10s"]
        reply = subprocess.run(
            pinned([*command, "-s", str(script), base + path], CORES[1]),
            capture_output=True,
            text=True,
        )
    finally:
        script.unlink()
    if reply.returncode != 0:
        raise RuntimeError(f"wrk failed: {reply.stderr.strip() or reply.stdout.strip()}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next(line for line in reply.stdout.splitlines() if line.startswith("WRK "))
    counts = json.loads(line[4:])
    counts["cpu"] = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return counts


def http_row(name: str, base: str, path: str, span: tuple[int, int], seconds: float, pids) -> dict:
    wrk(base, path, *span, 1.0)  # warm-up: connections, prepared statements, caches
    server_pid, pg_port = pids
    cpu_before = cpu_seconds(server_pid), postgres_cpu_seconds(pg_port)
    counts = wrk(base, path, *span, seconds)
    server_cpu = cpu_seconds(server_pid) - cpu_before[0]
    pg_cpu = postgres_cpu_seconds(pg_port) - cpu_before[1]
    done = max(1, counts["requests"])
    return {
        "name": name,
        "rps": counts["requests"] / (counts["micros"] / 1e6),
        "server_cpu_ms": server_cpu / done * 1000,
        "pg_cpu_ms": pg_cpu / done * 1000,
        "wrk_cpu_ms": counts["cpu"] / done * 1000,
        "p50": counts["p50"] / 1000,
        "p99": counts["p99"] / 1000,
        "failures": counts["status_errors"] + counts["socket_errors"],
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


OHLCVS = "/api/ohlcvs?exchange=binance&base_id=BTC&quote_id=USDT&limit=500&interval="


def health(base: str) -> dict:
    """GET /api/health, whatever its status (no fetcher runs here, which may make it 503)."""
    try:
        with urllib.request.urlopen(f"{base}/api/health") as reply:
            return json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return json.loads(error.read())


def warm_cache(base: str, interval: str, step_ms: int) -> int:
    """One pass over the year, a page per block, so every closed block of `interval` is cached."""
    lowest, span = ohlcvs_span(step_ms)
    ends = range(lowest, lowest + span + 1, 1000 * step_ms)
    for end in ends:
        with urllib.request.urlopen(f"{base}{OHLCVS}{interval}&end={end}") as reply:
            reply.read()
    return len(ends)


def ohlcvs_span(step_ms: int) -> tuple[int, int]:
    """Where a request's `end` is drawn from: uniform over the year after its first 500 bars."""
    lowest = START_MS + 500 * step_ms
    return lowest, START_MS + YEAR_MS - 1 - lowest


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per HTTP scenario")
    parser.add_argument("--ws-seconds", type=float, default=10.0, help="measured seconds per WS scenario")
    parser.add_argument("--subscribers", default="1000,5000", help="comma-separated subscriber counts")
    args = parser.parse_args()
    require_wrk()

    pg, rd = PostgresServer().start(), RedisServer().start()
    server = None
    try:
        began = time.perf_counter()
        settings = prepare(pg, rd)
        print(f"loaded a year of 1m bars ({YEAR_MS // 60_000:,} rows) in {time.perf_counter() - began:.0f} s")
        log_path = ROOT / "logs" / "bench_web.log"
        log_path.parent.mkdir(exist_ok=True)
        server, base = start_server(settings, 0, log_path)
        with urllib.request.urlopen(f"{base}{OHLCVS}1m&end={START_MS + YEAR_MS // 2}") as reply:
            body = reply.read()
        assert len(json.loads(body)) == 500
        server.terminate()
        server.wait()
        # Cold: the cache off (WEB_CACHE_MB=0), every page rendered by PostgreSQL; the ceilings and
        # the websocket part run on this server too.
        server, base = start_server(settings.model_copy(update={"web_cache_mb": 0}), len(body), log_path)

        scenarios = [
            ("GET /api/ohlcvs 1m, 500 bars, no cache", OHLCVS + "1m", ohlcvs_span(60_000)),
            ("GET /api/ohlcvs 1h, 500 bars, no cache", OHLCVS + "1h", ohlcvs_span(3_600_000)),
            (f"ceiling: pre-encoded {len(body):,} bytes, no DB", "/bench/bytes", (0, 0)),
            ("ceiling: FastAPI default list of 500 dicts", "/bench/dicts", (0, 0)),
        ]
        pids = server.pid, pg.port
        if CORES[0] is not None:  # for the HTTP part only: wrk gets the other core to itself
            set_affinity(server.pid, {CORES[0]})
        http = [http_row(name, base, path, span, args.seconds, pids) for name, path, span in scenarios]
        set_affinity(server.pid, os.sched_getaffinity(0))
        counts = [int(n) for n in args.subscribers.split(",")]
        ws = [ws_row(base, rd.client(), settings, n, args.ws_seconds, server.pid) for n in counts]
        cold_rss = memory_mb(server.pid)[0]
        server.terminate()
        server.wait()

        # Warm: the cache on (the default settings), filled by one pass over the year, then the same
        # random windows; blocks live WEB_CACHE_TTL_SECONDS (60), longer than warm-up + measure.
        server, base = start_server(settings, len(body), log_path)
        pids = server.pid, pg.port
        if CORES[0] is not None:
            set_affinity(server.pid, {CORES[0]})
        for interval, step_ms in (("1m", 60_000), ("1h", 3_600_000)):
            began = time.perf_counter()
            warmed = warm_cache(base, interval, step_ms)
            print(f"cache warm-up {interval}: {warmed} requests in {time.perf_counter() - began:.1f} s")
            name = f"GET /api/ohlcvs {interval}, 500 bars, cache warm"
            http.append(http_row(name, base, OHLCVS + interval, ohlcvs_span(step_ms), args.seconds, pids))
        cache = health(base)["web"]["history_cache"]
        cache["rss_mb"], cache["cold_rss_mb"] = memory_mb(server.pid)[0], cold_rss
    finally:
        if server is not None:
            server.terminate()
            server.wait()
        rd.stop()
        pg.stop()

    pinning = "REST: app on core 0, wrk on core 1" if CORES[0] is not None else "no pinning (one core)"
    print(
        f"\nMachine: {machine()}; {datetime.now(UTC):%Y-%m-%d}; uvicorn, 1 worker (uvloop, httptools); "
        f"wrk, {CONCURRENCY} connections; {pinning}\n"
    )
    print(
        "| measure | per second | p50 ms | p99 ms | app CPU ms each | PostgreSQL CPU ms each "
        "| wrk CPU ms each | target |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for row in http:
        target = HTTP_TARGET if row["name"].startswith("GET") else "ceiling"
        failed = f" ({row['failures']} failed)" if row["failures"] else ""
        print(
            f"| {row['name']} | {row['rps']:,.0f} req{failed} | {row['p50']:.1f} | {row['p99']:.1f} "
            f"| {row['server_cpu_ms']:.2f} | {row['pg_cpu_ms']:.2f} | {row['wrk_cpu_ms']:.2f} | {target} |"
        )
    for row in ws:
        print(
            f"| WS: {row['subscribers']:,} subscribed (of {row['requested']:,}), 1 bar/s each "
            f"| {row['received_per_s']:,.0f} bars "
            f"(of {row['expected_per_s']:,.0f}) | {row['p50']:.1f} | {row['p99']:.1f} "
            f"| {row['server_cpu_ms']:.3f} | | | >= 5,000 subscribers, p99 < 100 ms |"
        )
    print("\nREST p50/p99 from wrk; WS p50/p99 = delivery latency from PUBLISH to arrival at the client;")
    print("CPU ms each = per request (measured window) or per delivered bar: app and PostgreSQL (postmaster")
    print("and backends) from /proc, wrk from its rusage. On 2 cores, 2,000 req/s leaves 1.0 ms of CPU per")
    print("request for the three together.")
    print(
        f"\nCache after the warm runs: {cache['bytes'] / 2**20:.1f} MB of rendered bars in {cache['blocks']} "
        f"blocks (hits {cache['hits']:,}, misses {cache['misses']:,}); app RSS {cache['rss_mb']:.0f} MB "
        f"against {cache['cold_rss_mb']:.0f} MB for the server without the cache."
    )
    report("web", results(http, ws, cache))


HTTP_TARGET = ">= 2,000 req/s, p99 < 50 ms"


def results(http: list[dict], ws: list[dict], cache: dict | None = None) -> list[Result]:
    """The summary rows `make bench` gathers: the REST scenarios, cold and from the cache (with the
    run's ceilings), the cache's memory, and the largest websocket crowd."""
    ceilings = [row for row in http if row["name"].startswith("ceiling")]
    out = []
    for row in http:
        if not row["name"].startswith("GET"):
            continue
        interval = row["name"].split()[2].rstrip(",")
        measure = f"web: `/api/ohlcvs` {interval}, 500 bars, {row['name'].rsplit(', ', 1)[-1]}"
        if ceilings:
            pre_encoded, dicts = ceilings[0]["rps"], ceilings[-1]["rps"]
            measure += f" (ceilings: pre-encoded {pre_encoded:,.0f}; list of dicts {dicts:,.0f} req/s)"
        met = row["rps"] >= 2000 and row["p99"] < 50 and not row["failures"]
        out.append(Result(measure, f"{row['rps']:,.0f} req/s, p99 {row['p99']:.0f} ms", HTTP_TARGET, met))
    if cache is not None:
        mb = cache["bytes"] / 2**20
        out.append(
            Result(
                "web: history cache after the warm runs (1m and 1h, a year)",
                f"{mb:.0f} MB in {cache['blocks']} blocks; app RSS {cache['rss_mb']:.0f} MB "
                f"({cache['cold_rss_mb']:.0f} MB without)",
                "<= WEB_CACHE_MB (256)",
                mb <= 256,
            )
        )
    if ws:
        row = max(ws, key=lambda r: r["requested"])
        met = row["subscribers"] >= 5000 and row["p99"] < 100
        out.append(
            Result(
                f"web: {row['subscribers']:,} websocket subscribers, 1 bar/s each",
                f"p50 {row['p50']:.1f} ms, p99 {row['p99']:.1f} ms",
                ">= 5,000 subscribers, p99 < 100 ms",
                met,
            )
        )
    return out


if __name__ == "__main__":
    main()
