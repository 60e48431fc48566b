"""Backfill request validation and progress lines (pure)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from common.candle import Market
from fetchers.rest.job_store import JobInfo
from fetchers.rest.jobs import BackfillRequestError, check_exchange, choose_markets, validate_range
from fetchers.rest.progress import ProgressMeter, ProgressStream

pytestmark = pytest.mark.unit

UTC = UTC
NOW = datetime(2021, 6, 1, 12, 30, 45, tzinfo=UTC)


def test_range_is_half_open_in_ms():
    start_ms, end_ms = validate_range(
        datetime(2021, 1, 1, 0, 0, tzinfo=UTC), datetime(2021, 1, 1, 1, 0, 0, tzinfo=UTC), NOW
    )
    assert start_ms == 1609459200000
    assert end_ms == 1609462800000


@pytest.mark.parametrize(
    "start, end, fragment",
    [
        (datetime(2021, 1, 1, 6, 0, 30, tzinfo=UTC), datetime(2021, 1, 1, 7, tzinfo=UTC), "--start"),
        (datetime(2021, 1, 1, 6, tzinfo=UTC), datetime(2021, 1, 1, 6, 10, 30, tzinfo=UTC), "--end"),
        (datetime(2021, 1, 1, 6, tzinfo=UTC), datetime(2021, 1, 1, 6, 10, 0, 1, tzinfo=UTC), "--end"),
    ],
)
def test_bounds_off_a_whole_minute_are_rejected_not_widened(start, end, fragment):
    with pytest.raises(BackfillRequestError, match=f"{fragment} .* is not on a whole minute"):
        validate_range(start, end, NOW)


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
    meter = ProgressMeter(window_seconds=60)
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
    job.done, job.failed, job.candles, job.sent = 40, 2, 40_000, 35
    line = meter.line(job, now=1.0)
    assert "42/100 requests" in line and "40,000 candles" in line
    assert "2,100 req/min over 1s, limit 3,000" in line  # requests sent, retries included
    assert "2 errors" in line and "ETA 0:00:01" in line


def test_progress_rate_is_measured_over_the_limit_window():
    """A burst of completions (a batch committing at once) must not show as a rate over the limit:
    the rate counts requests sent over the limit's own window."""
    meter = ProgressMeter(window_seconds=60)
    job = JobInfo(
        id="j", exchange="bitfinex", start_ms=0, end_ms=0, symbols=[], total=1000, limit_per_minute=30
    )
    for second in range(0, 121):
        job.sent = second // 2  # exactly 30 per minute
        job.done = (second // 20) * 10  # completions arrive in bursts of 10
        line = meter.line(job, now=float(second))
    assert "30 req/min over 60s, limit 30" in line


def test_finished_job_waiting_for_its_refresh_says_so():
    meter = ProgressMeter()
    job = JobInfo(id="j", exchange="binance", start_ms=0, end_ms=0, symbols=[], total=5, done=5)
    assert meter.line(job, now=0.0).endswith("refreshing aggregates")
    job.refreshed = True
    assert meter.line(job, now=1.0).endswith("done")


def test_progress_stream_keeps_log_lines_off_the_progress_line():
    import io

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    stream = ProgressStream(terminal)
    stream.show("[##..] 50%")
    stream.write("WARNING something happened\n")
    stream.show("[###.] 75%")
    stream.done()
    shown = terminal.getvalue()
    assert "50%WARNING" not in shown
    assert shown == (
        "\r\x1b[K[##..] 50%" + "\r\x1b[KWARNING something happened\n[##..] 50%" + "\r\x1b[K[###.] 75%\n"
    )
