"""Live pipeline benchmark: fetcher messages/s, frame -> PUBLISH latency, updater rows/s, memory.

    python -m benchmarks.live            # about 2 minutes; prints one table
    python -m benchmarks.live --quick    # smaller sizes, for a smoke run

Everything comes from one run on this machine: a throwaway PostgreSQL (durable defaults) and Redis,
and a frame source in a separate process that speaks Binance's combined kline stream and writes
pre-built, pre-encoded frames either as fast as the socket takes them or at a fixed rate. Beside each
rate, CPU per message or row (this process, Redis, PostgreSQL, from /proc): on a shared machine the
rates move with the load, CPU per unit of work much less.

1. Fetcher: the real `StreamEngine` (websocket client -> adapter parser -> Redis sink) against the
   unpaced source, twice; beside it the ceilings measured the same way: parsing alone (same client,
   same parser, no Redis) and Redis alone (the sink's own client, script and pipeline, in bursts of
   the size the fetcher flushed, bars made up front).
2. Latency from frame receipt to the Redis reply of the script that PUBLISHed it (an upper bound of
   frame -> PUBLISH), with the source paced at 2,000 frames/s.
3. Updater: closed bars waiting in `ws_sub_` hashes flushed into `ohlcvs` (read, fill-missing
   insert, compare-and-delete, plain PostgreSQL's aggregate refresh), also without the refresh;
   beside it a raw `COPY` of the same rows into an unindexed copy of the table.
4. Memory: RSS of the benchmark process (which is the fetcher) after each of two equal fetcher runs.

Figures are printed through `benchmarks.measure.report` (and gathered by `make bench`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
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

from benchmarks.measure import Result, cpu_seconds, machine, memory_mb, postgres_cpu_seconds, report
from common.candle import Market
from common.db import connect, upsert_markets
from common.redis_clients import async_client
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

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def ws_text_frame(payload: bytes) -> bytes:
    """One unmasked server-to-client text frame."""
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 1 << 16:
        return bytes((0x81, 126)) + size.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + size.to_bytes(8, "big") + payload


async def serve_frames(port: int, markets: int, frames: int, rate: float) -> None:
    """A bare websocket server that writes pre-encoded frames: the source must not be what limits
    the fetcher (on two cores it shares the CPU with the fetcher and Redis), so it does no per-frame
    work beyond a buffer write."""
    names = symbols(markets)
    prebuilt = [
        ws_text_frame(kline_frame(names[i % markets], i // (markets * 20), i).encode())
        for i in range(min(frames, 50_000))
    ]
    group = 20

    async def stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        key = next(
            line.split(b":", 1)[1].strip()
            for line in request.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        await reader.read(1 << 16)  # the first SUBSCRIBE
        started = time.perf_counter()
        sent = 0
        while sent < frames:
            count = min(group, frames - sent)
            first = sent % len(prebuilt)
            chunk = prebuilt[first : first + count]
            if len(chunk) < count:
                chunk += prebuilt[: count - len(chunk)]
            writer.write(b"".join(chunk))
            sent += count
            if rate:
                delay = started + sent / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            if writer.transport.get_write_buffer_size() > 1 << 20:
                await writer.drain()
        while data := await reader.read(1 << 16):
            if data[0] & 0x0F == 0x8:  # the client's close frame: answer it, as servers do
                writer.write(b"\x88\x00")
                break
        writer.close()

    server = await asyncio.start_server(stream, "127.0.0.1", port)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


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
class Cpu:
    """CPU seconds of this process and of the Redis and PostgreSQL servers, from /proc."""

    redis_pid: int
    pg_port: int

    def read(self) -> tuple[float, float, float]:
        return time.process_time(), cpu_seconds(self.redis_pid), postgres_cpu_seconds(self.pg_port)

    @staticmethod
    def per_unit(before: tuple[float, float, float], after: tuple[float, float, float], units: int):
        return [(b - a) / units * 1e6 for a, b in zip(before, after, strict=True)]


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


@dataclass
class FetcherRun:
    rate: float
    """Frames per second, from the first frame to every bar in Redis."""
    bars_per_flush: float
    """Mean bars per EVALSHA burst (after coalescing updates of the same market and minute)."""


async def run_fetcher(settings: Settings, frames: int, latencies: list[float] | None = None) -> FetcherRun:
    """The real engine (websocket client -> adapter -> Redis sink) over `frames` frames."""
    client = async_client(settings, pack_with_hiredis=True)
    engine = StreamEngine(settings, "binance", client)
    engine.sink.latencies = latencies
    flushes = 0
    flush = engine.sink.flush

    async def counted_flush() -> int:
        nonlocal flushes
        stored = await flush()
        flushes += stored > 0
        return stored

    engine.sink.flush = counted_flush
    stop = asyncio.Event()
    task = asyncio.create_task(engine.run(stop))
    while engine.frames == 0:
        await asyncio.sleep(0.001)
        if task.done():
            task.result()
    started = time.perf_counter()
    first_stored = engine.sink.bars_stored
    while engine.frames < frames or engine.sink.pending:
        await asyncio.sleep(0.005)
        if task.done():
            task.result()
        if time.perf_counter() - started > 120:
            raise RuntimeError(f"stuck: {engine.frames} frames, {engine.sink.pending} bars pending")
    elapsed = time.perf_counter() - started
    stored = engine.sink.bars_stored - first_stored
    stop.set()
    await task
    await client.aclose()
    return FetcherRun(frames / elapsed, stored / max(flushes, 1))


async def parse_alone(url: str, frames: int) -> float:
    """Frames per second through the same websocket client and parser, nothing stored."""
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
    """Bars per second through the sink's own client, script and pipeline, in bursts of the size the
    fetcher flushed, with the bars built up front (no socket, no parsing)."""
    client = async_client(settings, pack_with_hiredis=True)
    sink = RedisSink(client, "binance", "bench", lambda attempt: 0.01)
    keys = [MarketKeys.build("binance", s[:-4], "USDT", s, ";;") for s in symbols(markets)]
    candles = [
        (
            keys[i % markets],
            WsCandle(
                keys[i % markets].symbol,
                T0 + (i // markets) * MINUTE_MS,
                "37050.01000000",
                "37565.00000000",
                "36949.00000000",
                f"{37000 + i % 500}.{i % 100:02d}000000",
                f"{i}.34567000",
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


def bench_bar(market: MarketKeys, minute: int) -> WsCandle:
    """A closed bar with Binance-like values (8 decimals), the same for the updater and the COPY."""
    close = f"{37000 + minute % 500}.{minute % 100:02d}000000"
    return WsCandle(
        market.symbol,
        T0 + minute * MINUTE_MS,
        "37050.01000000",
        "37565.00000000",
        "36949.00000000",
        close,
        f"{minute}.34567000",
    )


@dataclass
class UpdaterRun:
    rate: float
    """Rows per second of one flush of the whole backlog, committed (and refreshed, if asked)."""
    cpu_us: list[float]
    """CPU per row (this process, Redis, PostgreSQL) in microseconds."""


class WritesOnly(Updater):
    """The updater less its plain-PostgreSQL aggregate refreshes: what a flush does on TimescaleDB,
    whose real-time aggregation needs no refresh from the updater."""

    def _write(self, batch, refresh_until_ms):
        return super()._write(batch, None)

    def _refresh_aggregates(self, *args) -> None:
        pass


def updater_rows(settings: Settings, cpu: Cpu, markets: int, minutes: int, refresh: bool) -> UpdaterRun:
    """The updater flushing markets x minutes closed bars from `ws_sub_` hashes into an empty
    `ohlcvs` (and, with `refresh`, its aggregates on plain PostgreSQL)."""
    keys = [MarketKeys.build("binance", s[:-4], "USDT", s, ";;") for s in symbols(markets)]
    conn = connect(settings)
    with conn.cursor() as cur:
        cur.execute("SELECT name FROM ohlcv_aggregate_levels")
        levels = [name for (name,) in cur.fetchall()]
        cur.execute("TRUNCATE ohlcvs, " + ", ".join(levels))  # names from the schema's own table
        cur.execute("UPDATE ohlcv_aggregate_levels SET open_from = NULL")
    conn.commit()
    conn.close()
    redis.Redis.from_url(settings.redis_url).flushall()

    async def fill() -> None:
        client = async_client(settings, pack_with_hiredis=True)
        sink = RedisSink(client, "binance", "bench", lambda attempt: 0.01)
        for minute in range(minutes):
            for market in keys:
                sink.add(market, bench_bar(market, minute), 0.0)
            await sink.flush()
        await client.hset(ws_health_key("binance"), "exchange_time_ms", T0 + (minutes + 5) * MINUTE_MS)
        await client.aclose()

    asyncio.run(fill())
    client = redis.Redis.from_url(settings.redis_url)
    updater = (Updater if refresh else WritesOnly)(settings, client)
    before = cpu.read()
    started = time.perf_counter()
    result = updater.flush()
    elapsed = time.perf_counter() - started
    cpu_us = Cpu.per_unit(before, cpu.read(), result.rows)
    updater.stop()
    assert result.rows == markets * minutes, result
    return UpdaterRun(result.rows / elapsed, cpu_us)


def copy_rows(settings: Settings, markets: int, minutes: int) -> float:
    """Rows per second of a raw COPY of the updater's rows into a table like `ohlcvs`: its ceiling."""
    keys = [MarketKeys.build("binance", s[:-4], "USDT", s, ";;") for s in symbols(markets)]
    conn = connect(settings)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE copy_ceiling (LIKE ohlcvs)")
        text = "".join(
            f"{bar.time}\tbinance\t{market.base_id}\tUSDT\t{bar.open}\t{bar.high}\t{bar.low}\t{bar.close}\t"
            f"{bar.volume}\n"
            for minute in range(minutes)
            for market in keys
            for bar in [bench_bar(market, minute)]
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
    return copy_rate


def percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--serve", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument(
        "--updater-only", action="store_true", help="only the updater's figures (skips the fetcher runs)"
    )
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
    assert rd.process is not None
    cpu = Cpu(rd.process.pid, pg.port)
    results: list[Result] = []
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

        rss: list[float] = []
        if not args.updater_only:
            runs = []
            fetch_cpu = []
            for _ in range(2):
                source = FrameSource(markets, frames)
                before = cpu.read()
                runs.append(asyncio.run(run_fetcher(settings_for(pg, rd, source.url), frames)))
                fetch_cpu.append(Cpu.per_unit(before, cpu.read(), frames))
                source.close()
                rss.append(memory_mb(os.getpid())[0])
            best = max(runs, key=lambda run: run.rate)
            mine, redis_us, _ = fetch_cpu[runs.index(best)]
            source = FrameSource(markets, frames)
            parse_rate = asyncio.run(parse_alone(source.url, frames))
            source.close()
            burst = max(1, round(best.bars_per_flush))
            redis_rate = asyncio.run(redis_alone(settings, markets, frames // 3, burst))
            results.append(
                Result(
                    f"fetcher messages/s, unpaced (ceilings: parse alone {parse_rate:,.0f}; "
                    f"Redis alone {redis_rate:,.0f} bars/s in bursts of {burst})",
                    f"{best.rate:,.0f}",
                    ">= 30,000",
                    best.rate >= 30_000,
                )
            )
            results.append(
                Result("fetcher CPU per message: fetcher process / Redis", f"{mine:.1f} / {redis_us:.1f} us")
            )

            latencies: list[float] = []
            paced = 2000 * latency_seconds
            source = FrameSource(markets, paced, 2000.0)
            asyncio.run(run_fetcher(settings_for(pg, rd, source.url), paced, latencies))
            source.close()
            p50, p99 = percentile(latencies, 0.5) * 1000, percentile(latencies, 0.99) * 1000
            results.append(
                Result(
                    "frame -> PUBLISH p50 / p99 at 2,000 msg/s (frame receipt to Redis reply)",
                    f"{p50:.2f} / {p99:.2f} ms",
                    "p99 < 10 ms",
                    p99 < 10,
                )
            )

        minutes = 40 if args.quick else 100
        with_refresh = updater_rows(settings, cpu, markets, minutes, refresh=True)
        writes_only = updater_rows(settings, cpu, markets, minutes, refresh=False)
        copy_rate = copy_rows(settings, markets, minutes)
        results.append(
            Result(
                f"updater rows/s, plain PostgreSQL with aggregates (ceiling: raw COPY {copy_rate:,.0f})",
                f"{with_refresh.rate:,.0f}",
                ">= 50,000",
                with_refresh.rate >= 50_000,
            )
        )
        results.append(
            Result(
                "updater rows/s into ohlcvs alone (no aggregate refresh, as on TimescaleDB)",
                f"{writes_only.rate:,.0f}",
            )
        )
        for label, run in (("refreshed", with_refresh), ("alone", writes_only)):
            mine, redis_us, pg_us = run.cpu_us
            results.append(
                Result(
                    f"updater CPU per row ({label}): updater / Redis / PostgreSQL",
                    f"{mine:.1f} / {redis_us:.1f} / {pg_us:.1f} us",
                )
            )
        if rss:
            results.append(
                Result(
                    "fetcher RSS after run 1 / run 2",
                    f"{rss[0]:.0f} / {rss[1]:.0f} MB",
                    "flat",
                    rss[1] <= rss[0] * 1.1,
                )
            )
    finally:
        rd.stop()
        pg.stop()
    print(f"Live pipeline benchmark ({'quick' if args.quick else 'full'}), {machine()}")
    print(f"{markets} Binance markets, {frames:,} frames per fetcher run")
    report("live", results)


if __name__ == "__main__":
    main()
