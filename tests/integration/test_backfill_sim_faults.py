"""The REST backfill engine against what the simulator adds for it: tiny prices and broken replies.

Tiny-price markets (DOGE against BTC, about 0.0000068 with 8 decimals) must land in the database
digit for digit; a connection reset mid-reply and a reply whose body is cut to invalid JSON must be
retried by the engine until the history is exact (the market list, fetched once before the job,
is refreshed before the fault is switched on, as the engine's own fault tests do). Ground truth
comes from the simulator's control port.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from fetchers.rest.markets import refresh_markets
from tests.support.backfill import assert_matches_truth, day_aligned_range, run_job, truth_candles

pytestmark = pytest.mark.integration

TINY = {"bitfinex": ["tDOGBTC"], "binance": ["DOGEBTC"], "bittrex": ["DOGE-BTC"]}
FAULTY = {
    "bitfinex": ["tBTCUSD", "tAAVE:USD", "tXRPUSD", "tDOGBTC"],
    "binance": ["BTCUSDT", "DOGEBTC"],
    "bittrex": ["BTC-USD", "DOGE-BTC"],
}
RETRIES = dict(max_retries=10, backoff_base_seconds=0.02, backoff_max_seconds=0.2)


@pytest.mark.parametrize("exchange", ["bitfinex", "binance", "bittrex"])
def test_tiny_price_markets_round_trip_exactly(exchange, platform_settings, simulator):
    symbols = TINY[exchange]
    start_ms, end_ms = day_aligned_range(simulator, days_back=3, days=1.25)
    truth = truth_candles(simulator, exchange, symbols[0], start_ms, end_ms)
    prices = {c[f] for c in truth for f in ("open", "high", "low", "close")}
    assert max(prices) < Decimal("0.00001") and len({p % Decimal("0.00000010") for p in prices}) > 3, (
        "the market is tiny-priced and its last (8th) decimal moves"
    )

    job = run_job(platform_settings, exchange, start_ms, end_ms, symbols)

    assert job.finished and job.failed == 0
    assert job.candles == assert_matches_truth(
        platform_settings, simulator, exchange, symbols, start_ms, end_ms
    )


@pytest.mark.parametrize(
    ("exchange", "fault", "counter"),
    [
        ("binance", "http_reset_rate", "fault_resets"),
        ("bitfinex", "http_reset_rate", "fault_resets"),
        ("bittrex", "http_truncate_rate", "fault_truncated"),
        ("binance", "http_truncate_rate", "fault_truncated"),
    ],
)
def test_resets_and_truncated_bodies_are_retried_and_the_history_stays_exact(
    exchange, fault, counter, platform_settings, simulator
):
    symbols = FAULTY[exchange]
    start_ms, end_ms = day_aligned_range(simulator, days_back=4, days=2)
    asyncio.run(refresh_markets(platform_settings, exchange))  # the one-shot market list goes first
    simulator.set_faults(exchange, **{fault: 0.5})

    job = run_job(platform_settings, exchange, start_ms, end_ms, symbols, **RETRIES)

    assert job.finished and job.failed == 0
    assert_matches_truth(platform_settings, simulator, exchange, symbols, start_ms, end_ms)
    stats = simulator.stats()[exchange]
    assert stats[counter] > 0, "the fault hit some replies"
    assert stats["over_limit"] == 0
