"""Where each part of a backfill comes from (pure): the exchange's public archive or its REST API.

Binance publishes every market's klines as files (fetchers/exchanges/binance_archive.py): a file
per month once the month is over, a file per day once the day is over. A range is planned as the
fewest files that hold it — a month's file where the range covers the whole month and the file
has had time to appear, else a file per closed day — and the rest (the exchange's current day,
and whatever has no file yet) as REST requests. What a file fails to give (missing, a checksum
that does not match, a zip that cannot be read) the engine sends to REST at run time.

Dates come from the exchange's present (`now_ms`), never this machine's clock.
"""

from __future__ import annotations

from collections.abc import Iterator

from common.candle import Market
from common.ranges import Range, merge
from common.timeutil import MINUTE_MS
from fetchers.exchanges.base import ExchangeAdapter, FetchTask, task_for
from fetchers.exchanges.binance_archive import DAY_MS, ArchivePeriod, day_period, month_of

AUTO = "auto"
REST = "rest"
ARCHIVE = "archive"
SOURCE_CHOICES = (AUTO, REST, ARCHIVE)

MONTHLY_AFTER_DAYS = 3
"""A month's file is planned once this many days of the next month are over (Binance publishes it
early in the month, not at midnight); before that its days come from the daily files."""
MIN_FILE_MINUTES = 60
"""A piece of a day shorter than this comes over REST: one small request beats a whole day's file
(the repair's gaps of a few minutes)."""
ARCHIVE_EXCHANGES = ("binance",)


class ArchiveUnavailable(ValueError):
    """`--source archive` for minutes no archive file holds yet (the exchange's current day)."""


def has_archive(exchange: str) -> bool:
    return exchange in ARCHIVE_EXCHANGES


def archive_periods(
    start_ms: int, end_ms: int, now_ms: int
) -> tuple[list[tuple[ArchivePeriod, Range]], list[Range]]:
    """The archive files that hold [start_ms, end_ms), each with the part of the range it gives,
    oldest first; and the ranges left for REST (minutes of the current day or later, and pieces
    of a day shorter than MIN_FILE_MINUTES)."""
    today = now_ms - now_ms % DAY_MS
    files: list[tuple[ArchivePeriod, Range]] = []
    rest: list[Range] = []
    cursor = start_ms
    archived_until = min(end_ms, today)
    while cursor < archived_until:
        day = day_period(cursor)
        whole_month = month_of(cursor)
        if (
            cursor == whole_month.start_ms
            and whole_month.end_ms <= archived_until
            and whole_month.end_ms + MONTHLY_AFTER_DAYS * DAY_MS <= now_ms
        ):
            files.append((whole_month, (cursor, whole_month.end_ms)))
            cursor = whole_month.end_ms
            continue
        until = min(day.end_ms, archived_until)
        if until - cursor >= MIN_FILE_MINUTES * MINUTE_MS:
            files.append((day, (cursor, until)))
        else:
            rest.append((cursor, until))
        cursor = until
    if end_ms > max(start_ms, today):
        rest.append((max(start_ms, today), end_ms))
    return files, merge(rest)


def plan_market(
    adapter: ExchangeAdapter, market: Market, start_ms: int, end_ms: int, now_ms: int, source: str
) -> Iterator[FetchTask]:
    """One market's tasks for [start_ms, end_ms), oldest first: archive files where `source`
    allows them and the exchange has an archive, REST requests for the rest. With `source`
    `archive`, minutes no file can hold raise ArchiveUnavailable."""
    if source == REST or (source == AUTO and not has_archive(adapter.name)):
        yield from adapter.plan_fetch_tasks(market, start_ms, end_ms)
        return
    if not has_archive(adapter.name):
        raise ArchiveUnavailable(f"{adapter.name} has no public archive; use --source rest or auto")
    files, rest = archive_periods(start_ms, end_ms, now_ms)  # small: a month of a market is one entry
    if source == ARCHIVE and rest:
        raise ArchiveUnavailable(
            "--source archive: the archive has no files yet for the exchange's current day; end the "
            "range at its start (00:00 UTC) or use --source auto"
        )
    tasks = [task_for(market, lo, hi, archive=period.text) for period, (lo, hi) in files]
    for lo, hi in rest:
        tasks.extend(adapter.plan_fetch_tasks(market, lo, hi))
    yield from sorted(tasks, key=lambda t: t.start_ms)


def rest_fallback(adapter: ExchangeAdapter, task: FetchTask) -> list[FetchTask]:
    """The REST requests that replace an archive file the engine could not use."""
    market = Market(task.exchange, task.base_id, task.quote_id, task.symbol)
    return list(adapter.plan_fetch_tasks(market, task.start_ms, task.end_ms))
