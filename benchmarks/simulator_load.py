"""Simulator load: the full real market lists of all three exchanges, live, with every market subscribed.

    python -m benchmarks.simulator_load                    # speed 60, 60 s measured (~1.5 minutes)
    python -m benchmarks.simulator_load --seconds 20       # a shorter run
    python -m benchmarks.simulator_load --quick            # a smoke run (10 s measured)

`python -m simulator --json --markets all --speed 60` runs as a child process. This process opens
real websocket clients and subscribes every listed market, respecting each exchange's
per-connection limits by opening as many connections as needed:

- Bitfinex `/ws/2`: one `subscribe` per `trade:1m:t<PAIR>` key, 25 channels per connection;
- Binance `/ws`: one `SUBSCRIBE` message per connection with up to 1024 `<symbol>@kline_1m` streams;
- Bittrex SignalR (hub c3): one `Subscribe` invocation per connection with `candle_<MARKET>_MINUTE_1`
  streams (the limit per connection is undocumented; 250 are used per connection) plus `heartbeat`.

After a warm-up (subscriptions, Bitfinex snapshots) it measures, over `--seconds` of wall time: the
simulator's CPU time from /proc/<pid>/stat (utime + stime) as a share of one core, its RSS, the
frames each client received and the frames the simulator says it sent (control port), and how late
Binance's closing klines (`x: true`) arrived after their minute ended (in real seconds). The target:
full market lists live at 60x while the simulator uses at most one core.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.measure import Result, cpu_seconds, http_json, machine, memory_mb, report
from common.exchanges import EXCHANGES
from fetchers.ws.signalr import CONNECTION_DATA
from tests.support.simulator import simulator_process

ROOT = Path(__file__).resolve().parents[1]
BITFINEX_CHANNELS_PER_CONNECTION = 25
BINANCE_STREAMS_PER_CONNECTION = 1024
BITTREX_STREAMS_PER_CONNECTION = 250
WARMUP_TIMEOUT_SECONDS = 300
CPU_TARGET_SHARE = 1.0
"""The target: every listed market live while the simulator uses at most one core."""
"""How long a subscribing client waits for its next frame: on a machine shared with other work the
simulator may take minutes to serve every Bitfinex snapshot while it already streams Binance."""


# ------------------------------------------------------------------------------------ helpers


def chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


@dataclass
class Counts:
    """What the clients of one exchange saw."""

    markets: int = 0
    subscriptions: int = 0
    connections: int = 0
    frames: int = 0
    data_frames: int = 0
    errors: list[str] = field(default_factory=list)
    closed: int = 0


@dataclass
class Clock:
    """The simulator's clock, estimated locally from one reading of the control port."""

    now_ms: int
    speed: float
    read_at: float

    def sim_now(self) -> float:
        return self.now_ms + (time.monotonic() - self.read_at) * self.speed * 1000


# -------------------------------------------------------------------------------------- clients


async def reader(ws: aiohttp.ClientWebSocketResponse, counts: Counts, on_text: Any = None) -> None:
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.TEXT:
            counts.frames += 1
            if on_text is not None:
                on_text(msg.data)
        elif msg.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSE):
            break
    counts.closed += 1


async def bitfinex_clients(
    session: aiohttp.ClientSession,
    url: str,
    pairs: list[str],
    counts: Counts,
    tasks: list[asyncio.Task[None]],
) -> None:
    counts.markets = len(pairs)
    for group in chunks(pairs, BITFINEX_CHANNELS_PER_CONNECTION):
        ws = await session.ws_connect(url, max_msg_size=0)
        counts.connections += 1
        pending = set(group)
        for pair in group:
            await ws.send_str(
                json.dumps({"event": "subscribe", "channel": "candles", "key": f"trade:1m:t{pair}"})
            )
        while pending:
            msg = await ws.receive(timeout=WARMUP_TIMEOUT_SECONDS)
            counts.frames += 1
            if msg.data.startswith("{"):
                event = json.loads(msg.data)
                if event.get("event") == "subscribed":
                    pending.discard(event["key"].split(":", 2)[2][1:])
                    counts.subscriptions += 1
                elif event.get("event") == "error":
                    counts.errors.append(msg.data)
                    pending.discard(event.get("key", "").split(":", 2)[-1][1:])

        def on_text(text: str) -> None:
            if not text.endswith(',"hb"]') and text[0] == "[":
                counts.data_frames += 1

        tasks.append(asyncio.get_running_loop().create_task(reader(ws, counts, on_text)))


async def binance_clients(
    session: aiohttp.ClientSession,
    url: str,
    symbols: list[str],
    counts: Counts,
    tasks: list[asyncio.Task[None]],
    clock: Clock,
    lags: list[float],
) -> None:
    counts.markets = len(symbols)

    def on_text(text: str) -> None:
        if '"x":true' in text:
            counts.data_frames += 1
            event = json.loads(text)
            lags.append((clock.sim_now() - event["k"]["T"] - 1) / clock.speed / 1000)
        elif '"e":"kline"' in text:
            counts.data_frames += 1

    for group_id, group in enumerate(chunks(symbols, BINANCE_STREAMS_PER_CONNECTION), start=1):
        ws = await session.ws_connect(f"{url}/ws", max_msg_size=0)
        counts.connections += 1
        params = [f"{s.lower()}@kline_1m" for s in group]
        await ws.send_str(json.dumps({"method": "SUBSCRIBE", "params": params, "id": group_id}))
        while True:
            msg = await ws.receive(timeout=WARMUP_TIMEOUT_SECONDS)
            counts.frames += 1
            reply = json.loads(msg.data)
            if reply.get("id") == group_id:
                if reply.get("error"):
                    counts.errors.append(msg.data)
                else:
                    counts.subscriptions += len(params)
                break
        tasks.append(asyncio.get_running_loop().create_task(reader(ws, counts, on_text)))


async def bittrex_clients(
    session: aiohttp.ClientSession,
    base: str,
    symbols: list[str],
    counts: Counts,
    tasks: list[asyncio.Task[None]],
) -> None:
    counts.markets = len(symbols)
    ws_base = base.replace("http://", "ws://", 1)

    def on_text(text: str) -> None:
        counts.data_frames += text.count('"M":"candle"')

    for group_id, group in enumerate(chunks(symbols, BITTREX_STREAMS_PER_CONNECTION), start=1):
        async with session.get(
            f"{base}/negotiate", params={"clientProtocol": "1.5", "connectionData": CONNECTION_DATA}
        ) as reply:
            reply.raise_for_status()
            token = (await reply.json())["ConnectionToken"]
        params = {
            "transport": "webSockets",
            "clientProtocol": "1.5",
            "connectionToken": token,
            "connectionData": CONNECTION_DATA,
            "tid": "10",
        }
        ws = await session.ws_connect(f"{ws_base}/connect", params=params, max_msg_size=0)
        counts.connections += 1
        init = await ws.receive(timeout=WARMUP_TIMEOUT_SECONDS)
        counts.frames += 1
        assert '"S":1' in init.data, init.data
        streams = [f"candle_{s}_MINUTE_1" for s in group] + ["heartbeat"]
        await ws.send_str(json.dumps({"H": "c3", "M": "Subscribe", "A": [streams], "I": group_id}))
        while True:
            msg = await ws.receive(timeout=WARMUP_TIMEOUT_SECONDS)
            counts.frames += 1
            frame = json.loads(msg.data)
            if frame.get("I") == str(group_id) and "R" in frame:
                ok = sum(1 for r in frame["R"] if r.get("Success"))
                counts.subscriptions += ok - 1  # heartbeat is not a market
                if ok != len(streams):
                    counts.errors.append(f"{len(streams) - ok} Bittrex streams refused")
                break
            counts.data_frames += msg.data.count('"M":"candle"')
        tasks.append(asyncio.get_running_loop().create_task(reader(ws, counts, on_text)))


# ------------------------------------------------------------------------------------ benchmark


def has_bittrex_socket(urls: dict[str, Any]) -> bool:
    query = f"clientProtocol=1.5&connectionData={urllib.request.quote(CONNECTION_DATA)}"
    try:
        http_json(f"{urls['bittrex']['ws']}/negotiate?{query}")
        return True
    except (OSError, ValueError):
        return False


async def run(args: argparse.Namespace) -> dict[str, Any]:
    profiler = ["-m", "cProfile", "-o", args.profile] if args.profile else []
    with simulator_process("--markets", "all", "--speed", f"{args.speed:g}", python_args=profiler) as sim:
        urls, control = sim.urls, sim.control
        markets = {
            ex: [m["symbol"] for m in http_json(f"{control}/control/markets?exchange={ex}")]
            for ex in EXCHANGES
        }
        reading = http_json(f"{control}/control/clock")
        clock = Clock(reading["now_ms"], reading["speed"], time.monotonic())
        counts = {ex: Counts() for ex in EXCHANGES}
        lags: list[float] = []
        tasks: list[asyncio.Task[None]] = []
        bittrex_served = has_bittrex_socket(urls)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            started = time.monotonic()
            await asyncio.gather(
                bitfinex_clients(
                    session, urls["bitfinex"]["ws"], markets["bitfinex"], counts["bitfinex"], tasks
                ),
                binance_clients(
                    session, urls["binance"]["ws"], markets["binance"], counts["binance"], tasks, clock, lags
                ),
                *(
                    [
                        bittrex_clients(
                            session, urls["bittrex"]["ws"], markets["bittrex"], counts["bittrex"], tasks
                        )
                    ]
                    if bittrex_served
                    else []
                ),
            )
            subscribed_in = time.monotonic() - started
            await asyncio.sleep(args.warmup)

            sent_before = {
                ex: s["ws_frames_sent"]
                for ex, s in http_json(f"{control}/control/stats").items()
                if ex in EXCHANGES
            }
            frames_before = {ex: c.frames for ex, c in counts.items()}
            data_before = {ex: c.data_frames for ex, c in counts.items()}
            lags.clear()
            cpu_before, client_before = cpu_seconds(sim.pid), time.process_time()
            wall_before = time.monotonic()
            peak_rss = 0.0
            while time.monotonic() - wall_before < args.seconds:
                await asyncio.sleep(1.0)
                peak_rss = max(peak_rss, memory_mb(sim.pid)[0])
            wall = time.monotonic() - wall_before
            cpu = cpu_seconds(sim.pid) - cpu_before
            client_cpu = time.process_time() - client_before
            stats = http_json(f"{control}/control/stats")
            rss, hwm = memory_mb(sim.pid)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        rows = []
        for ex in EXCHANGES:
            c = counts[ex]
            rows.append(
                {
                    "exchange": ex,
                    "markets": c.markets,
                    "subscriptions": c.subscriptions,
                    "connections": c.connections,
                    "frames_per_s": (c.frames - frames_before[ex]) / wall,
                    "data_frames_per_s": (c.data_frames - data_before[ex]) / wall,
                    "sent_per_s": (stats[ex]["ws_frames_sent"] - sent_before[ex]) / wall,
                    "errors": c.errors[:3],
                    "closed": c.closed,
                    "served": ex != "bittrex" or bittrex_served,
                }
            )
        lags.sort()
        return {
            "speed": args.speed,
            "seconds": wall,
            "warmup": args.warmup,
            "subscribed_in": subscribed_in,
            "rows": rows,
            "cpu_share": cpu / wall,
            "client_cpu_share": client_cpu / wall,
            "rss_mb": rss,
            "peak_rss_mb": max(peak_rss, hwm),
            "lag_p50": statistics.median(lags) if lags else math.nan,
            "lag_p99": lags[int(len(lags) * 0.99)] if lags else math.nan,
            "lag_max": lags[-1] if lags else math.nan,
            "lag_samples": len(lags),
            "feed_subscriptions": stats["feed"]["subscriptions"],
        }


def table(result: dict[str, Any]) -> str:
    lines = [
        (
            "| exchange | markets | subscriptions | connections | frames/s received | candle messages/s "
            "| frames/s sent (sim) |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        if not row["served"]:
            lines.append(f"| {row['exchange']} | {row['markets']} | not served | | | | |")
            continue
        lines.append(
            f"| {row['exchange']} | {row['markets']} | {row['subscriptions']} | {row['connections']} | "
            f"{row['frames_per_s']:,.0f} | {row['data_frames_per_s']:,.0f} | {row['sent_per_s']:,.0f} |"
        )

    def total(key: str) -> float:
        return sum(r[key] for r in result["rows"] if r["served"])

    lines.append(
        f"| **all** | {total('markets')} | {total('subscriptions')} | {total('connections')} | "
        f"{total('frames_per_s'):,.0f} | {total('data_frames_per_s'):,.0f} | {total('sent_per_s'):,.0f} |"
    )
    lines += [
        "",
        "| simulator process | value |",
        "|---|---:|",
        f"| speed | {result['speed']:g}x |",
        f"| measured wall time | {result['seconds']:.0f} s (after {result['warmup']:g} s warm-up) |",
        f"| CPU, share of one core | {result['cpu_share'] * 100:.0f} % |",
        f"| RSS at the end / peak | {result['rss_mb']:.0f} MB / {result['peak_rss_mb']:.0f} MB |",
        (
            f"| closing kline lateness (Binance, real s) p50 / p99 / max | {result['lag_p50']:.2f} / "
            f"{result['lag_p99']:.2f} / {result['lag_max']:.2f} ({result['lag_samples']:,} klines) |"
        ),
        f"| all subscriptions done in | {result['subscribed_in']:.1f} s |",
        f"| benchmark client CPU (this process) | {result['client_cpu_share'] * 100:.0f} % of one core |",
    ]
    return "\n".join(lines)


def results(result: dict[str, Any]) -> list[Result]:
    """The figures that answer to a target, as rows of the combined `make bench` table."""
    served = [r for r in result["rows"] if r["served"]]
    markets = sum(r["markets"] for r in served)
    cpu = result["cpu_share"]
    return [
        Result(
            f"all {markets:,} markets live at {result['speed']:g}x: simulator CPU, peak RSS",
            f"{cpu * 100:.0f}% of one core, {result['peak_rss_mb']:.0f} MB",
            f"<= {CPU_TARGET_SHARE * 100:.0f}% of one core",
            cpu <= CPU_TARGET_SHARE and len(served) == len(EXCHANGES),
        ),
        Result(
            "frames/s sent by the simulator / received by the clients",
            f"{sum(r['sent_per_s'] for r in served):,.0f} / {sum(r['frames_per_s'] for r in served):,.0f}",
        ),
        Result(
            "closing kline lateness (Binance, real s) p50 / p99",
            f"{result['lag_p50']:.2f} / {result['lag_p99']:.2f}",
        ),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--speed", type=float, default=60.0)
    parser.add_argument("--seconds", type=float, default=60.0, help="measured wall time")
    parser.add_argument(
        "--warmup", type=float, default=10.0, help="seconds between subscribing and measuring"
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: 10 s measured after 3 s")
    parser.add_argument("--json", action="store_true", help="print the raw result as JSON too")
    parser.add_argument("--profile", metavar="PATH", help="run the simulator under cProfile, stats to PATH")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.warmup = min(args.seconds, 10.0), min(args.warmup, 3.0)
    result = asyncio.run(run(args))
    print(f"Simulator load, {datetime.now(UTC):%Y-%m-%d}, {machine()}\n")
    print(table(result))
    problems = [f"{r['exchange']}: {r['errors']}" for r in result["rows"] if r["errors"]]
    problems += [
        f"{r['exchange']}: {r['closed']} connection(s) closed" for r in result["rows"] if r["closed"]
    ]
    if not all(r["served"] for r in result["rows"]):
        problems.append("the Bittrex SignalR socket is not served: Bittrex not measured")
    for problem in problems:
        print("note:", problem)
    report("simulator load (python -m benchmarks.simulator_load)", results(result))
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
