"""Binance's public archive, pure parts: paths, checksum files, kline CSV in ms and µs, and which
months and days a backfill takes from files around the exchange's "today" (fixed dates only)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest

from common.candle import Market
from common.timeutil import MINUTE_MS, datetime_to_ms
from fetchers.exchanges import get_adapter
from fetchers.exchanges.binance_archive import (
    DAY_MS,
    file_path,
    parse_checksum,
    parse_klines_csv,
    parse_period,
)
from fetchers.rest.sources import (
    ARCHIVE,
    AUTO,
    REST,
    ArchiveUnavailable,
    archive_periods,
    plan_market,
    rest_fallback,
)

pytestmark = pytest.mark.unit

BINANCE = get_adapter("binance")
BTC = Market("binance", "BTC", "USDT", "BTCUSDT")


def ms(*parts: int) -> int:
    return datetime_to_ms(datetime(*parts, tzinfo=UTC))


ROW_MS = ",".join(
    [
        "1733011200000",
        "96407.99000000",
        "96497.00000000",
        "96352.11000000",
        "96393.08000000",
        "12.34567000",
        "1733011259999",
        "1190000.11111111",
        "1200",
        "6.00000000",
        "578000.22222222",
        "0",
    ]
)
ROW_MS_2 = ",".join(
    [
        "1733011260000",
        "96393.08000000",
        "96400.00000000",
        "96390.00000000",
        "96399.99000000",
        "0.00000000",
        "1733011319999",
        "0.00000000",
        "0",
        "0.00000000",
        "0.00000000",
        "0",
    ]
)
ROW_US = ",".join(
    [
        "1735689600000000",
        "93576.00000000",
        "93610.93000000",
        "93537.50000000",
        "93610.93000000",
        "8.21827000",
        "1735689659999999",
        "768978.41342036",
        "1765",
        "3.71624000",
        "347736.93475472",
        "0",
    ]
)
ROW_US_2 = ",".join(
    [
        "1735689660000000",
        "93610.93000000",
        "93652.33000000",
        "93600.00000000",
        "93652.33000000",
        "1.00000000",
        "1735689719999999",
        "93620.00000000",
        "50",
        "0.50000000",
        "46810.00000000",
        "0",
    ]
)


def test_paths_follow_the_archive_layout():
    assert file_path("BTCUSDT", "2024-12") == "data/spot/monthly/klines/BTCUSDT/1m/BTCUSDT-1m-2024-12.zip"
    assert file_path("ETHBTC", "2025-01-07") == "data/spot/daily/klines/ETHBTC/1m/ETHBTC-1m-2025-01-07.zip"
    december = parse_period("2024-12")
    assert (december.start_ms, december.end_ms) == (ms(2024, 12, 1), ms(2025, 1, 1))
    assert december.monthly and not parse_period("2024-02-29").monthly
    assert parse_period("2024-02").end_ms - parse_period("2024-02").start_ms == 29 * DAY_MS
    with pytest.raises(ValueError):
        parse_period("2024-13-01x")


def test_checksum_file_gives_the_digest_of_its_file():
    digest = hashlib.sha256(b"zip bytes").hexdigest()
    assert parse_checksum(f"{digest}  BTCUSDT-1m-2024-12.zip\n", "BTCUSDT-1m-2024-12.zip") == digest
    assert parse_checksum(digest.upper() + "\n") == digest
    with pytest.raises(ValueError, match="not 'ETHBTC"):
        parse_checksum(f"{digest}  BTCUSDT-1m-2024-12.zip", "ETHBTC-1m-2024-12.zip")
    for bad in ("", "abc  BTCUSDT-1m-2024-12.zip", f"{digest}\n{digest}", "<html>Not Found</html>"):
        with pytest.raises(ValueError):
            parse_checksum(bad)


def test_csv_in_milliseconds_keeps_the_exact_text():
    start = 1733011200000
    block = parse_klines_csv(
        f"{ROW_MS}\n{ROW_MS_2}\n", "binance", "BTC", "USDT", start, start + 2 * MINUTE_MS
    )
    assert block.times == [start, start + MINUTE_MS]
    assert (
        block.lines[0]
        == f"{start}\t96407.99000000\t96497.00000000\t96352.11000000\t96393.08000000\t12.34567000"
    )
    assert block.lines[1].endswith("\t0.00000000")


def test_csv_in_microseconds_reads_as_the_same_minutes():
    start = ms(2025, 1, 1)
    block = parse_klines_csv(ROW_US + "\r\n" + ROW_US_2 + "\r\n", "binance", "BTC", "USDT", 0, 2 * start)
    assert block.times == [start, start + MINUTE_MS]
    assert block.candles()[0].open == "93576.00000000" and block.candles()[1].volume == "1.00000000"


def test_csv_is_clipped_to_the_range_asked_and_a_header_is_skipped():
    header = "open_time,open,high,low,close,volume,close_time,quote_volume,count,tbbv,tbqv,ignore"
    text = "\n".join([header, ROW_MS, ROW_MS_2])
    start = 1733011200000
    block = parse_klines_csv(text, "binance", "BTC", "USDT", start + MINUTE_MS, start + DAY_MS)
    assert block.times == [start + MINUTE_MS]
    assert len(parse_klines_csv("", "binance", "BTC", "USDT", 0, start)) == 0


@pytest.mark.parametrize(
    "text",
    [
        ROW_MS + "\n" + ROW_MS[:40],  # cut short
        ROW_MS.rsplit(",", 1)[0] + "\n" + ROW_MS_2 + ",0",  # a column short, then one too many
        ROW_MS.replace("96497.00000000", "NaN"),
        ROW_MS.replace("96497.00000000", ""),
        ROW_MS_2 + "\n" + ROW_MS,  # not ascending
        ROW_MS + "\n" + ROW_MS,  # a minute twice
        ROW_MS.replace("1733011200000", "1733011200001"),  # not a whole minute
        ROW_US.replace("1735689600000000", "1735689600000123"),  # µs not on a millisecond
        "PK\x03\x04 binary garbage",
    ],
)
def test_a_malformed_csv_is_refused_not_half_read(text):
    with pytest.raises(ValueError):
        parse_klines_csv(text, "binance", "BTC", "USDT", 0, 10**13)


def test_closed_months_come_whole_closed_days_daily_and_today_over_rest():
    now = ms(2025, 3, 10, 14, 30)
    files, rest = archive_periods(ms(2025, 1, 1), ms(2025, 3, 10, 14, 30), now)
    assert [p.text for p, _ in files] == ["2025-01", "2025-02"] + [f"2025-03-{d:02d}" for d in range(1, 10)]
    assert rest == [(ms(2025, 3, 10), ms(2025, 3, 10, 14, 30))]
    covered = [r for _, r in files] + rest
    assert all(a[1] == b[0] for a, b in zip(covered, covered[1:], strict=False))


def test_a_month_just_over_comes_from_daily_files_until_its_file_is_due():
    files, rest = archive_periods(ms(2025, 2, 1), ms(2025, 3, 2), ms(2025, 3, 2, 8))
    assert [p.text for p, _ in files][:2] == ["2025-02-01", "2025-02-02"] and len(files) == 29
    assert rest == []
    later, _ = archive_periods(ms(2025, 2, 1), ms(2025, 3, 1), ms(2025, 3, 4))
    assert [p.text for p, _ in later] == ["2025-02"]


def test_a_partial_month_uses_daily_files_clipped_to_the_range():
    files, rest = archive_periods(ms(2024, 12, 30, 12), ms(2025, 1, 2, 6), ms(2025, 6, 1))
    assert [(p.text, r) for p, r in files] == [
        ("2024-12-30", (ms(2024, 12, 30, 12), ms(2024, 12, 31))),
        ("2024-12-31", (ms(2024, 12, 31), ms(2025, 1, 1))),
        ("2025-01-01", (ms(2025, 1, 1), ms(2025, 1, 2))),
        ("2025-01-02", (ms(2025, 1, 2), ms(2025, 1, 2, 6))),
    ]
    assert rest == []


def test_a_few_minutes_of_a_closed_day_come_over_rest_not_as_a_whole_file():
    files, rest = archive_periods(ms(2025, 1, 1, 23, 30), ms(2025, 1, 3, 0, 20), ms(2025, 3, 1))
    assert [p.text for p, _ in files] == ["2025-01-02"]
    assert rest == [(ms(2025, 1, 1, 23, 30), ms(2025, 1, 2)), (ms(2025, 1, 3), ms(2025, 1, 3, 0, 20))]


def test_a_range_within_today_is_all_rest():
    assert archive_periods(ms(2025, 3, 10, 1), ms(2025, 3, 10, 2), ms(2025, 3, 10, 5)) == (
        [],
        [(ms(2025, 3, 10, 1), ms(2025, 3, 10, 2))],
    )


def test_sources_choose_the_tasks():
    start, end, now = ms(2025, 1, 30), ms(2025, 2, 1, 3), ms(2025, 2, 1, 3)
    auto = list(plan_market(BINANCE, BTC, start, end, now, AUTO))
    assert [(t.archive, t.start_ms, t.end_ms) for t in auto[:2]] == [
        ("2025-01-30", ms(2025, 1, 30), ms(2025, 1, 31)),
        ("2025-01-31", ms(2025, 1, 31), ms(2025, 2, 1)),
    ]
    assert [t.archive for t in auto[2:]] == [""] and auto[2].start_ms == ms(2025, 2, 1)
    rest = list(plan_market(BINANCE, BTC, start, end, now, REST))
    assert all(t.archive == "" for t in rest) and rest == list(BINANCE.plan_fetch_tasks(BTC, start, end))
    with pytest.raises(ArchiveUnavailable, match="current day"):
        list(plan_market(BINANCE, BTC, start, end, now, ARCHIVE))
    assert len(list(plan_market(BINANCE, BTC, start, ms(2025, 2, 1), now, ARCHIVE))) == 2
    bitfinex = get_adapter("bitfinex")
    usd = Market("bitfinex", "BTC", "USD", "tBTCUSD")
    assert all(t.archive == "" for t in plan_market(bitfinex, usd, start, end, now, AUTO))


def test_a_file_that_failed_becomes_rest_requests_for_its_range():
    task = next(plan_market(BINANCE, BTC, ms(2025, 1, 1), ms(2025, 2, 1), ms(2025, 3, 1), AUTO))
    assert task.archive == "2025-01"
    fallback = rest_fallback(BINANCE, task)
    assert len(fallback) == 45 and all(t.archive == "" for t in fallback)
    assert fallback[0].start_ms == task.start_ms and fallback[-1].end_ms == task.end_ms
    assert task.to_dict()["archive"] == "2025-01" and "archive" not in fallback[0].to_dict()
    assert type(task).from_dict(task.to_dict()) == task
    assert type(task).from_dict(fallback[0].to_dict()) == fallback[0]


def test_a_market_s_tasks_are_oldest_first_whichever_source_gives_them():
    tasks = list(
        plan_market(BINANCE, BTC, ms(2025, 1, 1, 23, 30), ms(2025, 1, 3, 0, 20), ms(2025, 3, 1), AUTO)
    )
    assert [(t.archive, t.start_ms) for t in tasks] == [
        ("", ms(2025, 1, 1, 23, 30)),
        ("2025-01-02", ms(2025, 1, 2)),
        ("", ms(2025, 1, 3)),
    ]
