"""Helpers for backfill tests: run a job in-process and compare the database with ground truth."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal

from common.db import connection
from common.settings import Settings
from common.timeutil import MINUTE_MS, ms_to_datetime
from fetchers.rest.engine import BackfillEngine, EngineOptions
from fetchers.rest.job_store import JobInfo
from fetchers.rest.jobs import create_job

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
