"""Backfill request validation and progress lines (pure)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from common.candle import Market
from fetchers.rest.job_store import JobInfo
from fetchers.rest.jobs import BackfillRequestError, check_exchange, choose_markets, validate_range
from fetchers.rest.progress import ProgressMeter

pytestmark = pytest.mark.unit

UTC = UTC
NOW = datetime(2021, 6, 1, 12, 30, 45, tzinfo=UTC)


def test_range_is_minute_aligned_and_half_open():
    start_ms, end_ms = validate_range(
        datetime(2021, 1, 1, 0, 0, 30, tzinfo=UTC), datetime(2021, 1, 1, 1, 0, 0, tzinfo=UTC), NOW
    )
    assert start_ms == 1609459200000
    assert end_ms == 1609462800000


def test_partial_end_minute_is_included():
    _, end_ms = validate_range(
        datetime(2021, 1, 1, tzinfo=UTC), datetime(2021, 1, 1, 0, 0, 1, tzinfo=UTC), NOW
    )
    assert end_ms == 1609459260000


def test_end_is_clamped_to_the_current_minute():
    _, end_ms = validate_range(datetime(2021, 6, 1, tzinfo=UTC), datetime(2030, 1, 1, tzinfo=UTC), NOW)
    assert end_ms == int(datetime(2021, 6, 1, 12, 30, tzinfo=UTC).timestamp() * 1000)


@pytest.mark.parametrize(
    "start, end, fragment",
    [
        (datetime(2021, 1, 2, tzinfo=UTC), datetime(2021, 1, 1, tzinfo=UTC), "must be after"),
        (datetime(2021, 1, 1, tzinfo=UTC), datetime(2021, 1, 1, tzinfo=UTC), "must be after"),
        (datetime(2022, 1, 1, tzinfo=UTC), datetime(2022, 2, 1, tzinfo=UTC), "future"),
    ],
)
def test_bad_ranges_are_explained(start, end, fragment):
    with pytest.raises(BackfillRequestError, match=fragment):
        validate_range(start, end, NOW)


def test_unknown_exchange_lists_the_known_ones():
    with pytest.raises(BackfillRequestError, match="bitfinex, binance, bittrex"):
        check_exchange("kraken")
    assert check_exchange("Binance") == "binance"


def test_default_markets_are_the_trading_ones():
    known = [
        Market("binance", "BTC", "USDT", "BTCUSDT"),
        Market("binance", "LUNA", "USDT", "LUNAUSDT", False),
    ]
    assert choose_markets(known, None) == [known[0]]
    with pytest.raises(BackfillRequestError):
        choose_markets([known[1]], None)


def test_progress_line_shows_rate_limit_errors_and_eta():
    meter = ProgressMeter()
    job = JobInfo(
        id="j",
        exchange="binance",
        start_ms=0,
        end_ms=0,
        symbols=["BTCUSDT"],
        total=100,
        done=10,
        candles=10_000,
        limit_per_minute=3000,
    )
    meter.line(job, now=0.0)
    job.done, job.failed, job.candles = 40, 2, 40_000
    line = meter.line(job, now=1.0)
    assert "42/100 requests" in line and "40,000 candles" in line
    assert "1,920 req/min (limit 3,000)" in line
    assert "2 errors" in line and "ETA 0:00:01" in line
