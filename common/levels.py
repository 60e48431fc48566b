"""The summary levels and bar intervals of the platform, declared once, and the SQL that reads bars.

`SUMMARY_LEVELS` is the one list of summary relations: `python -m scripts.database init` writes it
into `ohlcv_aggregate_levels`, from which the init SQL builds the tables (plain PostgreSQL) or the
continuous aggregate and views (TimescaleDB); the refresh code, the API's intervals
(`INTERVALS`, `IntervalName`), the web's history cache and the benchmarks follow from it too.
3h, 14D and 1M have no relation of their own and are rolled up in SQL from the level below (1h, 7D
and 1D). The web API (`web.reads`) and the export command (`scripts.export`) read bars through the
SQL here, so an export and a page of the API can never disagree on a bar.

To add a level: one `SummaryLevel` line (and, if the API should serve a width that is not a level,
one `ROLLUPS` line); `init` creates and fills it on either database path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from common.candle import MarketKey
from common.timeutil import datetime_to_ms, ms_to_datetime

BUCKET_ORIGIN = datetime(2000, 1, 3, tzinfo=UTC)
"""time_bucket's default origin (a Monday); the plain-PostgreSQL summaries use the same one."""
BUCKET_ORIGIN_MS = datetime_to_ms(BUCKET_ORIGIN)

_MIN = 60_000
_H = 60 * _MIN
_D = 24 * _H


@dataclass(frozen=True, slots=True)
class SummaryLevel:
    """One summary relation (`ohlcvs_summary_*`, columns bucket, exchange, base_id, quote_id, open,
    high, low, close, volume) and how each database path makes it."""

    relation: str
    width: timedelta
    api_name: str
    """The interval name `GET /api/ohlcvs` serves it as."""
    plain_source: str
    """Plain PostgreSQL: a table rebuilt from this relation (the level below; buckets nest)."""
    timescale_view_of: str | None
    """TimescaleDB: a view aggregating this relation, or None for the one stored level (a
    compressed continuous aggregate of ohlcvs, made in 002_timescaledb.sql)."""
    settle_ms: int
    """How far before the newest stored minute a bar may still change without a version bump: a
    TimescaleDB refresh rewrites buckets this far back (the hourly policy's `start_offset`, or
    more); the web's history cache keeps no block younger."""


SUMMARY_LEVELS: tuple[SummaryLevel, ...] = (
    SummaryLevel("ohlcvs_summary_5min", timedelta(minutes=5), "5m", "ohlcvs", "ohlcvs", _H),
    SummaryLevel(
        "ohlcvs_summary_15min", timedelta(minutes=15), "15m", "ohlcvs_summary_5min", "ohlcvs", 3 * _H
    ),
    SummaryLevel(
        "ohlcvs_summary_30min", timedelta(minutes=30), "30m", "ohlcvs_summary_15min", "ohlcvs", 6 * _H
    ),
    SummaryLevel("ohlcvs_summary_1hour", timedelta(hours=1), "1h", "ohlcvs_summary_30min", None, 12 * _H),
    SummaryLevel(
        "ohlcvs_summary_6hour",
        timedelta(hours=6),
        "6h",
        "ohlcvs_summary_1hour",
        "ohlcvs_summary_1hour",
        3 * _D,
    ),
    SummaryLevel(
        "ohlcvs_summary_12hour",
        timedelta(hours=12),
        "12h",
        "ohlcvs_summary_6hour",
        "ohlcvs_summary_1hour",
        6 * _D,
    ),
    SummaryLevel(
        "ohlcvs_summary_daily",
        timedelta(days=1),
        "1D",
        "ohlcvs_summary_12hour",
        "ohlcvs_summary_1hour",
        10 * _D,
    ),
    SummaryLevel(
        "ohlcvs_summary_7day",
        timedelta(days=7),
        "7D",
        "ohlcvs_summary_daily",
        "ohlcvs_summary_1hour",
        30 * _D,
    ),
)
AGGREGATE_LEVELS: dict[str, timedelta] = {level.relation: level.width for level in SUMMARY_LEVELS}
"""Relation -> bucket width, finest first."""
VIEW_LEVELS_TIMESCALEDB = frozenset(level.relation for level in SUMMARY_LEVELS if level.timescale_view_of)
"""The levels that are views on TimescaleDB (stored, those below the hour alone would hold 0.3 bars
per minute stored)."""


@dataclass(frozen=True, slots=True)
class Interval:
    """One bar width the platform serves and where its bars come from."""

    name: str
    width_ms: int  # 0 for calendar months
    relation: str
    time_column: str
    rollup_sql: str | None = None  # bucket expression over time_column when built from the level below
    settle_ms: int = 0
    """See `SummaryLevel.settle_ms`; two minutes for 1m."""

    def bucket_start(self, time_ms: int) -> int:
        """Open time of the bar that contains `time_ms` (same origin as the aggregates)."""
        if self.width_ms == 0:
            day = ms_to_datetime(time_ms)
            return datetime_to_ms(datetime(day.year, day.month, 1, tzinfo=UTC))
        return time_ms - (time_ms - BUCKET_ORIGIN_MS) % self.width_ms

    def next_start(self, bucket_ms: int) -> int:
        """Open time of the bar after the one opening at `bucket_ms`."""
        if self.width_ms == 0:
            day = ms_to_datetime(bucket_ms)
            year, month = (day.year + 1, 1) if day.month == 12 else (day.year, day.month + 1)
            return datetime_to_ms(datetime(year, month, 1, tzinfo=UTC))
        return bucket_ms + self.width_ms


ROLLUPS: tuple[tuple[str, int, str, str, int], ...] = (
    ("3h", 3 * _H, "1h", "date_bin('3 hours', bucket, %(origin)s)", 12 * _H),
    ("14D", 14 * _D, "7D", "date_bin('14 days', bucket, %(origin)s)", 30 * _D),
    ("1M", 0, "1D", "date_trunc('month', bucket, 'UTC')", 10 * _D),
)
"""Intervals the API serves without a relation of their own: (name, width in ms or 0 for calendar
months, the interval they are rolled up from, the bucket expression, settle time)."""


def _intervals() -> dict[str, Interval]:
    levels = [
        Interval(
            level.api_name,
            level.width // timedelta(milliseconds=1),
            level.relation,
            "bucket",
            None,
            level.settle_ms,
        )
        for level in SUMMARY_LEVELS
    ]
    by_name = {interval.name: interval for interval in levels}
    rolled = [
        Interval(name, width, by_name[source].relation, "bucket", expr, settle)
        for name, width, source, expr, settle in ROLLUPS
    ]
    every = [Interval("1m", _MIN, "ohlcvs", "time", settle_ms=2 * _MIN), *levels, *rolled]
    every.sort(key=lambda interval: interval.width_ms or 1 << 62)  # calendar months last
    return {interval.name: interval for interval in every}


INTERVALS: dict[str, Interval] = _intervals()
"""Every interval the API serves, by name, finest first."""


@dataclass(frozen=True, slots=True)
class BarQuery:
    """One read of bars: the newest `limit` bars of `market` at `interval` whose open time is in
    [start_ms, end_ms] (None: unbounded), answered oldest first; `limit` None reads them all.
    `dataclasses.replace` narrows it."""

    market: MarketKey
    interval: Interval
    start_ms: int | None
    end_ms: int | None
    limit: int | None


_DIRECT_ROWS = (
    "SELECT {time} AS t, open, high, low, close, volume FROM {relation} "
    "WHERE exchange = %(exchange)s AND base_id = %(base_id)s AND quote_id = %(quote_id)s "
    "AND {time} >= %(start)s AND {time} <= %(end)s ORDER BY {time} {order} LIMIT %(limit)s"
)
_ROLLUP_ROWS = (
    "SELECT b AS t, (array_agg(open ORDER BY bucket))[1] AS open, max(high) AS high, min(low) AS low, "
    "(array_agg(close ORDER BY bucket DESC))[1] AS close, sum(volume) AS volume "
    "FROM (SELECT {expr} AS b, bucket, open, high, low, close, volume FROM {relation} "
    "WHERE exchange = %(exchange)s AND base_id = %(base_id)s AND quote_id = %(quote_id)s "
    "AND bucket >= %(source_start)s AND bucket <= %(end)s) AS r "
    "WHERE b >= %(start)s GROUP BY b ORDER BY b {order} LIMIT %(limit)s"
)


def bar_rows_sql(interval: Interval, newest_first: bool = True) -> str:
    """SQL (named `%(name)s` parameters, see `bar_query_values`) answering rows `(t, open, high, low,
    close, volume)` of `interval`, NUMERIC as stored, from its table or rolled up from the level
    below. A page wants the newest `limit` (newest first); an export walks forward through all of
    them in index order (oldest first, `limit` None), which needs no sort."""
    order = "DESC" if newest_first else "ASC"
    if interval.rollup_sql is None:
        return _DIRECT_ROWS.format(
            time=f'"{interval.time_column}"', relation=f'"{interval.relation}"', order=order
        )
    return _ROLLUP_ROWS.format(expr=interval.rollup_sql, relation=f'"{interval.relation}"', order=order)


EARLIEST_MS = -62_135_596_800_000  # 0001-01-01
LATEST_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999


def bar_query_values(query: BarQuery) -> dict[str, object]:
    """The named parameters of `query` for `bar_rows_sql` and the queries built on it."""
    start_ms, end_ms = query.start_ms, query.end_ms
    exchange, base_id, quote_id = query.market
    values: dict[str, object] = dict(exchange=exchange, base_id=base_id, quote_id=quote_id, limit=query.limit)
    values["start"] = ms_to_datetime(EARLIEST_MS if start_ms is None else start_ms)
    values["end"] = ms_to_datetime(LATEST_MS if end_ms is None else end_ms)
    if query.interval.rollup_sql is not None:
        # The source buckets of the first wanted bar start at its own (earlier or equal) open time.
        first = query.interval.bucket_start(start_ms) if start_ms is not None else EARLIEST_MS
        values.update(source_start=ms_to_datetime(max(first, EARLIEST_MS)), origin=BUCKET_ORIGIN)
    return values


_NAMED = re.compile(r"%\((\w+)\)s")


@dataclass(frozen=True, slots=True)
class NumberedQuery:
    """A query with `$n` placeholders (asyncpg's) and the parameter name each number stands for."""

    text: str
    names: tuple[str, ...]

    def arguments(self, values: dict[str, object]) -> list[object]:
        return [values[name] for name in self.names]


def numbered(named: str) -> NumberedQuery:
    """`named` with its `%(name)s` parameters numbered `$1`... in order of first use, for asyncpg."""
    names: list[str] = []

    def number(match: re.Match) -> str:
        if match[1] not in names:
            names.append(match[1])
        return f"${names.index(match[1]) + 1}"

    return NumberedQuery(_NAMED.sub(number, named), tuple(names))
