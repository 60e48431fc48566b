"""Live pipeline benchmark: fetcher messages/s, frame -> PUBLISH latency, updater rows/s, memory.

    python -m benchmarks.live            # about 2 minutes; prints one table
    python -m benchmarks.live --quick    # smaller sizes, for a smoke run

Everything comes from one run on this machine: a throwaway PostgreSQL (durable defaults) and Redis,
and a frame source in a separate process that speaks Binance's combined kline stream and pushes
pre-built, realistic frames either as fast as the socket takes them or at a fixed rate.

1. Fetcher: the real `StreamEngine` (websocket client -> adapter parser -> Redis sink) against the
   unpaced source; beside it the ceilings measured the same way: parsing alone (same client, same
   parser, no Redis) and Redis alone (the sink's own script and pipeline, bars made up front).
2. Latency from frame receipt to the Redis reply of the pipeline that PUBLISHed it (an upper bound
   of frame -> PUBLISH), with the source paced at 2,000 frames/s.
3. Updater: closed bars waiting in `ws_sub_` hashes flushed into `ohlcvs` (read, fill-missing
   insert, compare-and-delete); beside it a raw `COPY` of the same rows.
4. Memory: RSS of the benchmark process (which is the fetcher) after each of two equal fetcher runs.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
import redis
import redis.asyncio as aioredis
from aiohttp import web

from benchmarks.measure import machine, memory_mb
from common.candle import Market
from common.db import connect, upsert_markets
from common.redis_keys import ws_health_key
from common.schema import apply_schema
from common.settings import Settings
from common.timeutil import MINUTE_MS
from fetchers.exchanges.base import WsCandle, WsSession
from fetchers.exchanges.binance import BinanceAdapter
from fetchers.ws.sink import MarketKeys, RedisSink
from fetchers.ws.stream import StreamEngine
from fetchers.ws.updater import Updater
from tests.support.services import PostgresServer, RedisServer, free_port

T0 = 1_700_000_040_000
ADAPTER = BinanceAdapter()


def kline_frame(symbol: str, minute: int, update: int) -> str:
    close = f"{37000 + update % 500}.{update % 100:02d}000000"
    kline = {
        "t": T0 + minute * MINUTE_MS,
        "T": T0 + minute * MINUTE_MS + 59_999,
        "s": symbol,
        "i": "1m",
        "f": 3294830001,
        "L": 3294830001 + update,
        "o": "37050.01000000",
        "c": close,
        "h": "37565.00000000",
        "l": "36949.00000000",
        "v": f"{update}.34567000",
        "n": update,
        "x": False,
        "q": "457321.12345678",
        "V": "6.12345000",
        "Q": "226789.12345678",
        "B": "0",
    }
    event = {"e": "kline", "E": T0 + minute * MINUTE_MS + update, "s": symbol, "k": kline}
    return json.dumps({"stream": f"{symbol.lower()}@kline_1m", "data": event}, separators=(",", ":"))


def symbols(count: int) -> list[str]:
    return [f"C{i:04d}USDT" for i in range(count)]


# ---- the frame source (runs in its own process)


async def serve_frames(port: int, markets: int, frames: int, rate: float) -> None:
    names = symbols(markets)
    prebuilt = [kline_frame(names[i % markets], i // (markets * 20), i) for i in range(min(frames, 50_000))]

    async def stream(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=False, compress=False, max_msg_size=1 << 22)
        await ws.prepare(request)
        await ws.receive()  # the first SUBSCRIBE
        started = time.perf_counter()
        for i in range(frames):
            await ws.send_str(prebuilt[i % len(prebuilt)])
            if rate and i % 20 == 19:
                delay = started + (i + 1) / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
        async for _ in ws:
            pass
        return ws

    app = web.Application()
    app.router.add_get("/stream", stream)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


class FrameSource:
    def __init__(self, markets: int, frames: int, rate: float = 0.0) -> None:
        self.port = free_port()
        args = [str(self.port), str(markets), str(frames), str(rate)]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.live", "--serve", *args], stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait()


# ---- measurements


@dataclass
class Row:
    what: str
    value: str
    ceiling: str
    note: str = ""


def settings_for(pg: PostgresServer, rd: RedisServer, ws_url: str) -> Settings:
    return Settings(
        _env_file=None,
        postgres_host="127.0.0.1",
        postgres_port=pg.port,
        postgres_user=pg.user,
        postgres_password="",
        postgres_db="cfr_live_bench",
        redis_host="127.0.0.1",
        redis_port=rd.port,
        redis_password=rd.password,
        binance_ws_url=ws_url,
        binance_ws_heartbeat_seconds=30.0,
    )


async def run_fetcher(settings: Settings, frames: int, latencies: list[float] | None = None) -> float:
    """Frames per second through the real engine, from its first frame to all bars in Redis."""
    client = aioredis.from_url(settings.redis_url)
    engine = StreamEngine(settings, "binance", client)
    engine.sink.latencies = latencies
    stop = asyncio.Event()
    task = asyncio.create_task(engine.run(stop))
    while engine.frames == 0:
        await asyncio.sleep(0.001)
        if task.done():
            task.result()
    started = time.perf_counter()
    while engine.frames < frames or engine.sink.pending:
        await asyncio.sleep(0.005)
        if task.done():
            task.result()
        if time.perf_counter() - started > 120:
            raise RuntimeError(f"stuck: {engine.frames} frames, {engine.sink.pending} bars pending")
    elapsed = time.perf_counter() - started
    stop.set()
    await task
    await client.aclose()
    return frames / elapsed


async def parse_alone(url: str, frames: int) -> float:
    async with aiohttp.ClientSession() as http, http.ws_connect(url + "/stream", autoping=False) as ws:
        await ws.send_str('{"method":"SUBSCRIBE","params":[],"id":1}')
        session = WsSession()
        parse = ADAPTER.parse_ws_frame
        msg = await ws.receive()
        started = time.perf_counter()
        parse(msg.data, session)
        for _ in range(frames - 1):
            parse((await ws.receive()).data, session)
        return frames / (time.perf_counter() - started)


async def redis_alone(settings: Settings, markets: int, bars: int, burst: int) -> float:
    client = aioredis.from_url(settings.redis_url)
    sink = RedisSink(client, "binance", "bench", lambda attempt: 0.01)
    keys = [MarketKeys.build("binance", s[:-4], "USDT", s, ";;") for s in symbols(markets)]
    candles = [
        (
            keys[i % markets],
            WsCandle(
                keys[i % markets].symbol, T0 + (i // markets) * MINUTE_MS, "1.5", "2.25", "1", "2", "10.125"
            ),
        )
        for i in range(bars)
    ]
    started = time.perf_counter()
    for start in range(0, bars, burst):
        for market, candle in candles[start : start + burst]:
            sink.add(market, candle, 0.0)
        await sink.flush()
    rate = bars / (time.perf_counter() - started)
    await client.aclose()
    return rate


def updater_rows(settings: Settings, markets: int, minutes: int) -> tuple[float, float]:
    """(updater rows/s, raw COPY rows/s) for markets x minutes closed bars."""

    async def fill() -> None:
        client = aioredis.from_url(settings.redis_url)
        sink = RedisSink(client, "binance", "bench", lambda attempt: 0.01)
        keys = [MarketKeys.build("binance", s[:-4], "USDT", s, ";;") for s in symbols(markets)]
        for minute in range(minutes):
            for market in keys:
                sink.add(
                    market,
                    WsCandle(market.symbol, T0 + minute * MINUTE_MS, "1.5", "2.25", "1", "2", "10.125"),
                    0.0,
                )
            await sink.flush()
        await client.hset(ws_health_key("binance"), "exchange_time_ms", T0 + (minutes + 5) * MINUTE_MS)
        await client.aclose()

    asyncio.run(fill())
    client = redis.Redis.from_url(settings.redis_url)
    updater = Updater(settings, client)
    started = time.perf_counter()
    result = updater.flush()
    updater_rate = result.rows / (time.perf_counter() - started)
    updater.close()
    assert result.rows == markets * minutes, result

    conn = connect(settings)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE copy_ceiling (LIKE ohlcvs)")
        text = "".join(
            f"{T0 + m * MINUTE_MS}\tbinance\t{s[:-4]}\tUSDT\t1.5\t2.25\t1\t2\t10.125\n"
            for m in range(minutes)
            for s in symbols(markets)
        )
        conn.commit()
        started = time.perf_counter()
        cur.execute(
            "CREATE TEMP TABLE raw_rows (time_ms bigint, e text, b text, q text, "
            "o numeric, h numeric, l numeric, c numeric, v numeric)"
        )
        cur.copy_expert("COPY raw_rows FROM STDIN", io.StringIO(text))
        cur.execute(
            "INSERT INTO copy_ceiling SELECT 'epoch'::timestamptz + time_ms * interval '1 millisecond', "
            "e, b, q, o, h, l, c, v FROM raw_rows"
        )
        conn.commit()
        copy_rate = markets * minutes / (time.perf_counter() - started)
    conn.close()
    return updater_rate, copy_rate


def percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--serve", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        port, markets, frames, rate = args.serve
        asyncio.run(serve_frames(int(port), int(markets), int(frames), float(rate)))
        return
    markets = 500 if args.quick else 1000
    frames = 60_000 if args.quick else 300_000
    latency_seconds = 5 if args.quick else 15
    pg = PostgresServer(durable=True).start()
    rd = RedisServer().start()
    rows: list[Row] = []
    try:
        admin = pg.connect("postgres")
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute("CREATE DATABASE cfr_live_bench")
        admin.close()
        settings = settings_for(pg, rd, "ws://unused")
        apply_schema(settings)
        conn = connect(settings)
        upsert_markets(conn, [Market("binance", s[:-4], "USDT", s) for s in symbols(markets)])
        conn.commit()
        conn.close()

        source = FrameSource(markets, frames)
        parse_rate = asyncio.run(parse_alone(source.url, frames))
        source.close()
        redis_rate = asyncio.run(redis_alone(settings, markets, frames // 3, 500))
        rss = []
        fetch_rates = []
        for _ in range(2):
            source = FrameSource(markets, frames)
            fetch_rates.append(asyncio.run(run_fetcher(settings_for(pg, rd, source.url), frames)))
            source.close()
            rss.append(memory_mb(os.getpid())[0])
        rows.append(
            Row(
                "fetcher messages/s (unpaced)",
                f"{max(fetch_rates):,.0f}",
                f"parse {parse_rate:,.0f}; Redis {redis_rate:,.0f}",
                "target >= 30,000",
            )
        )

        latencies: list[float] = []
        paced = 2000 * latency_seconds
        source = FrameSource(markets, paced, 2000.0)
        asyncio.run(run_fetcher(settings_for(pg, rd, source.url), paced, latencies))
        source.close()
        rows.append(
            Row(
                "frame -> PUBLISH p50 / p99 at 2,000 msg/s",
                f"{percentile(latencies, 0.5) * 1000:.2f} / {percentile(latencies, 0.99) * 1000:.2f} ms",
                "",
                "target p99 < 10 ms",
            )
        )

        redis.Redis.from_url(settings.redis_url).flushall()
        updater_rate, copy_rate = updater_rows(settings, markets, 40 if args.quick else 100)
        rows.append(
            Row("updater rows/s", f"{updater_rate:,.0f}", f"raw COPY {copy_rate:,.0f}", "target >= 50,000")
        )
        rows.append(
            Row("fetcher RSS after run 1 / run 2", f"{rss[0]:.0f} / {rss[1]:.0f} MB", "", "flat = no growth")
        )
    finally:
        rd.stop()
        pg.stop()
    print(f"Live pipeline benchmark ({'quick' if args.quick else 'full'}), {machine()}")
    print(f"{markets} Binance markets, {frames:,} frames per fetcher run")
    print(f"| {'measure':<44} | {'value':>18} | {'ceiling (same run)':<34} | note")
    print(f"|{'-' * 46}|{'-' * 20}|{'-' * 36}|------")
    for row in rows:
        print(f"| {row.what:<44} | {row.value:>18} | {row.ceiling:<34} | {row.note}")


if __name__ == "__main__":
    main()
