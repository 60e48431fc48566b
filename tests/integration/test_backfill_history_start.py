"""A backfill range before an exchange's history is reported, naming the first available minute
(the simulator serves history from `first_ms` on, like an exchange from a market's listing)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.timeutil import ms_to_datetime
from fetchers.rest.history import first_available_minutes
from fetchers.rest.markets import refresh_markets

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
HOUR_MS = 3_600_000


def first_truth(simulator, exchange: str, symbol: str) -> int:
    first_ms = simulator.simulator.history.first_ms
    candles = simulator.truth(exchange, symbol, first_ms, first_ms + 24 * HOUR_MS)
    return min(candle["time"] for candle in candles)


@pytest.mark.parametrize("exchange, symbol", [("binance", "BTCUSDT"), ("bitfinex", "tBTCUSD")])
def test_the_first_available_minute_is_the_exchanges_oldest_candle(
    platform_settings, simulator, exchange, symbol
):
    asyncio.run(refresh_markets(platform_settings, exchange))
    # the probe gives up after REST_TIMEOUT_SECONDS (advice, never an error); a busy machine may need
    # longer for the simulator to build a market's oldest day than the tests' usual 5 s
    patient = platform_settings.model_copy(update={"rest_timeout_seconds": 30.0})
    found = asyncio.run(first_available_minutes(patient, exchange, [symbol]))
    assert found == {symbol: first_truth(simulator, exchange, symbol)}


def fetch_local(start_ms: int, end_ms: int, symbols: str) -> subprocess.CompletedProcess:
    iso = [ms_to_datetime(ms).strftime("%Y-%m-%dT%H:%M") for ms in (start_ms, end_ms)]
    return subprocess.run(
        [sys.executable, "-m", "scripts.fetchers.rest", "fetch", "--exchange", "binance",
         "--start", iso[0], "--end", iso[1], "--symbols", symbols, "--local"],
        cwd=ROOT, env=os.environ.copy(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_a_range_before_the_history_warns_naming_the_first_available_minute(platform_settings, simulator):
    first = first_truth(simulator, "binance", "BTCUSDT")
    named = f"{ms_to_datetime(first):%Y-%m-%d %H:%M} UTC (first available minute)"

    before = fetch_local(first - 2 * HOUR_MS, first - HOUR_MS, "BTC/USDT,ETH/BTC")
    assert before.returncode == 0, before.stderr
    assert "0 candles written" in before.stdout
    assert before.stderr.count(named) == 2, before.stderr  # one line per market

    across = fetch_local(first - HOUR_MS, first + HOUR_MS, "BTC/USDT")
    assert across.returncode == 0, across.stderr
    assert "60 candles written" in across.stdout
    assert named in across.stderr

    inside = fetch_local(first + HOUR_MS, first + 2 * HOUR_MS, "BTC/USDT")
    assert inside.returncode == 0, inside.stderr
    assert "warning" not in inside.stderr
