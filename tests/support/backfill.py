"""Helpers for backfill tests: run a job in-process and compare the database with ground truth."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import aiohttp
from aiohttp import web

from common.db import connection
from common.settings import Settings
from common.timeutil import MINUTE_MS, ms_to_datetime
from fetchers.rest.engine import BackfillEngine, EngineOptions
from fetchers.rest.job_store import JobInfo
from fetchers.rest.jobs import create_job
from tests.conftest import service_env

DAY_MS = 86_400_000
FIELDS = ("open", "high", "low", "close", "volume")


def run_job(
    settings: Settings, exchange: str, start_ms: int, end_ms: int, symbols: list[str] | None, **options
) -> JobInfo:
    """Create a job and drain it with one in-process engine (the `--local` path)."""

    async def go() -> JobInfo:
        job = await create_job(settings, exchange, ms_to_datetime(start_ms), ms_to_datetime(end_ms), symbols)
        engine_options = EngineOptions.from_settings(settings, **options)
        return await BackfillEngine(settings, job.id, engine_options).run()

    return asyncio.run(go())


def stored_candles(settings: Settings, exchange: str, symbol: str, start_ms: int, end_ms: int) -> list[dict]:
    with connection(settings) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT o.time, o.open, o.high, o.low, o.close, o.volume FROM ohlcvs o "
            "JOIN symbol_exchange s USING (exchange, base_id, quote_id) "
            "WHERE o.exchange = %s AND s.symbol = %s AND o.time >= %s AND o.time < %s ORDER BY o.time",
            (exchange, symbol, ms_to_datetime(start_ms), ms_to_datetime(end_ms)),
        )
        return [
            {"time": int(row[0].timestamp() * 1000), **dict(zip(FIELDS, row[1:], strict=True))}
            for row in cur.fetchall()
        ]


def truth_candles(sim, exchange: str, symbol: str, start_ms: int, end_ms: int) -> list[dict]:
    rows = []
    for begin in range(start_ms, end_ms, 90_000 * MINUTE_MS):
        part = sim.truth(exchange, symbol, begin, min(begin + 90_000 * MINUTE_MS, end_ms))
        rows.extend({"time": r["time"], **{f: Decimal(r[f]) for f in FIELDS}} for r in part)
    return rows


def assert_matches_truth(
    settings: Settings, sim, exchange: str, symbols: list[str], start_ms: int, end_ms: int
) -> int:
    """Every minute, every value equal to the simulator's final candles; no extra rows. Returns rows."""
    total = 0
    for symbol in symbols:
        stored = stored_candles(settings, exchange, symbol, start_ms, end_ms)
        truth = truth_candles(sim, exchange, symbol, start_ms, end_ms)
        assert truth, f"no ground truth for {exchange} {symbol}"
        assert [c["time"] for c in stored] == [c["time"] for c in truth], (
            f"{exchange} {symbol}: minutes differ"
        )
        for got, want in zip(stored, truth, strict=True):
            assert got == want, f"{exchange} {symbol} at {datetime.fromtimestamp(got['time'] / 1000, UTC)}"
        total += len(stored)
    with connection(settings) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM ohlcvs WHERE exchange = %s", (exchange,))
        assert cur.fetchone()[0] == total, "rows outside the requested markets or range"
    return total


def day_aligned_range(sim, days_back: float, days: float) -> tuple[int, int]:
    """A past range in whole minutes: starts `days_back` days before the simulator's current day."""
    now = sim.clock()["current_minute_ms"]
    today = now - now % DAY_MS
    start = int(today - days_back * DAY_MS)
    start -= start % MINUTE_MS
    return start, start + int(days * DAY_MS) // MINUTE_MS * MINUTE_MS


@dataclass(frozen=True, slots=True)
class ProxiedRequest:
    """One request as it passed the recording proxy: when it arrived and when its reply left."""

    arrived: float
    replied: float
    path: str
    status: int
    headers: dict[str, str]
    query: str = ""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


class RecordingProxy:
    """A real HTTP hop between the platform and one of the simulator's REST servers that records
    every request's arrival time and reply (the request log the pause tests assert on).

    Runs its own event loop on a thread; `url` is what the platform's `<exchange>_rest_url` is set to.
    """

    FORWARDED_HEADERS = ("content-type", "retry-after", "x-mbx-used-weight-1m", "x-mbx-used-weight")

    def __init__(self, target: str):
        self.target = target.rstrip("/")
        self.log: list[ProxiedRequest] = []
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    def __enter__(self) -> RecordingProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def _stop(self) -> None:
        assert self._runner is not None and self._session is not None
        await self._runner.cleanup()
        await self._session.close()

    async def _forward(self, request: web.Request) -> web.Response:
        arrived = time.time()
        assert self._session is not None
        async with self._session.get(self.target + request.path_qs) as reply:
            body = await reply.read()
            headers = {k.lower(): v for k, v in reply.headers.items() if k.lower() in self.FORWARDED_HEADERS}
            status = reply.status
        self.log.append(
            ProxiedRequest(arrived, time.time(), request.path, status, headers, request.query_string)
        )
        return web.Response(body=body, status=status, headers=headers)


def pauses(
    log: list[ProxiedRequest], default_seconds: float, used_limit: int | None = None, window: float = 0
):
    """The pauses the replies demanded, as (from, until) in the proxy's clock: a 429/418 for its
    Retry-After (else `default_seconds`); a used-weight header at 98% of `used_limit` until the end
    of the exchange's window."""
    found = []
    for entry in log:
        if entry.status in (429, 418):
            after = entry.header("retry-after")
            found.append((entry.replied, entry.replied + (float(after) if after else default_seconds)))
        used = entry.header("x-mbx-used-weight-1m")
        if used_limit is not None and used is not None and int(used) >= used_limit * 0.98:
            found.append((entry.replied, (entry.replied // window + 1) * window))
    return found


IN_FLIGHT_GRACE_SECONDS = 0.3
"""Requests already on the wire when a pause begins arrive just after it; later ones were sent in it."""


def timeline(log: list[ProxiedRequest]) -> str:
    """The log as readable lines (arrival, reply, status, Retry-After, used weight) for messages."""
    if not log:
        return "(no requests)"
    zero = log[0].arrived
    return "\n".join(
        f"{e.arrived - zero:8.3f} {e.replied - zero:8.3f} {e.status} "
        f"{e.header('retry-after') or '-'} {e.header('x-mbx-used-weight-1m') or '-'} {e.path}"
        for e in log
    )


def requests_inside_pauses(
    log: list[ProxiedRequest], found: list[tuple[float, float]]
) -> list[ProxiedRequest]:
    return [
        entry
        for entry in log
        for begin, end in found
        if begin + IN_FLIGHT_GRACE_SECONDS <= entry.arrived < end
    ]


@dataclass
class LocalFetch:
    proc: subprocess.Popen
    symbols: list[str]
    start_ms: int
    end_ms: int


def local_fetch_of_four_markets(settings: Settings, simulator, outage_seconds: float) -> LocalFetch:
    """`fetch --local` of six days of four Binance markets, as a user runs it, against `settings`'
    services (text pipes for its output); for tests that take a service away mid-job."""
    root = Path(__file__).resolve().parents[2]
    symbols = [m["symbol"] for m in simulator.markets("binance") if m["status"] == "TRADING"][:4]
    start_ms, end_ms = day_aligned_range(simulator, days_back=8, days=6)
    env = {**os.environ, **service_env(settings), "REST_OUTAGE_SECONDS": str(outage_seconds)}
    iso = [ms_to_datetime(ms).strftime("%Y-%m-%dT%H:%M") for ms in (start_ms, end_ms)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "scripts.fetchers.rest", "fetch", "--exchange", "binance",
         "--start", iso[0], "--end", iso[1], "--symbols", ",".join(symbols), "--local"],
        cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    return LocalFetch(proc, symbols, start_ms, end_ms)
