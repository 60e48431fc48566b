"""Every read the web API makes from PostgreSQL, in one place (writes live in `common.db`).

Bars leave as tuples `(time_ms, open, high, low, close, volume)` whose prices and volumes are the
NUMERIC values' own text: nothing passes through a float. The 1-minute level reads `ohlcvs`, the
others the `ohlcvs_summary_*` aggregates; 3h, 14D and 1M have no relation of their own and are
rolled up in SQL from the level below (1h, 7D and 1D).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import cache

from psycopg2 import sql
from psycopg2.extensions import connection as PgConnection

from common.candle import Bar, MarketKey
from common.db import BUCKET_ORIGIN
from common.timeutil import datetime_to_ms, ms_to_datetime

BUCKET_ORIGIN_MS = datetime_to_ms(BUCKET_ORIGIN)


@dataclass(frozen=True, slots=True)
class Interval:
    """One bar width the API serves and where its bars come from."""

    name: str
    width_ms: int  # 0 for calendar months
    relation: str
    time_column: str
    rollup_sql: str | None = None  # bucket expression over time_column when built from the level below

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


_MIN = 60_000
_H = 60 * _MIN
_D = 24 * _H
INTERVALS: dict[str, Interval] = {
    i.name: i
    for i in (
        Interval("1m", _MIN, "ohlcvs", "time"),
        Interval("5m", 5 * _MIN, "ohlcvs_summary_5min", "bucket"),
        Interval("15m", 15 * _MIN, "ohlcvs_summary_15min", "bucket"),
        Interval("30m", 30 * _MIN, "ohlcvs_summary_30min", "bucket"),
        Interval("1h", _H, "ohlcvs_summary_1hour", "bucket"),
        Interval("3h", 3 * _H, "ohlcvs_summary_1hour", "bucket", "date_bin('3 hours', bucket, %(origin)s)"),
        Interval("6h", 6 * _H, "ohlcvs_summary_6hour", "bucket"),
        Interval("12h", 12 * _H, "ohlcvs_summary_12hour", "bucket"),
        Interval("1D", _D, "ohlcvs_summary_daily", "bucket"),
        Interval("7D", 7 * _D, "ohlcvs_summary_7day", "bucket"),
        Interval("14D", 14 * _D, "ohlcvs_summary_7day", "bucket", "date_bin('14 days', bucket, %(origin)s)"),
        Interval("1M", 0, "ohlcvs_summary_daily", "bucket", "date_trunc('month', bucket, 'UTC')"),
    )
}


@dataclass(frozen=True, slots=True)
class BarQuery:
    """One read of bars: the newest `limit` bars of `market` at `interval` whose open time is in
    [start_ms, end_ms] (None: unbounded), answered oldest first. `dataclasses.replace` narrows it."""

    market: MarketKey
    interval: Interval
    start_ms: int | None
    end_ms: int | None
    limit: int


_BAR_COLUMNS = "open::text, high::text, low::text, close::text, volume::text"
_MS = "(extract(epoch FROM {t}) * 1000)::bigint"

_DIRECT = (
    "SELECT " + _MS.format(t="{time}") + ", " + _BAR_COLUMNS + " FROM {relation} "
    "WHERE exchange = %(exchange)s AND base_id = %(base_id)s AND quote_id = %(quote_id)s "
    "AND {time} >= %(start)s AND {time} <= %(end)s ORDER BY {time} DESC LIMIT %(limit)s"
)

_ROLLUP = (
    "SELECT " + _MS.format(t="b") + ", (array_agg(open ORDER BY bucket))[1]::text, max(high)::text, "
    "min(low)::text, (array_agg(close ORDER BY bucket DESC))[1]::text, sum(volume)::text "
    "FROM (SELECT {expr} AS b, bucket, open, high, low, close, volume FROM {relation} "
    "WHERE exchange = %(exchange)s AND base_id = %(base_id)s AND quote_id = %(quote_id)s "
    "AND bucket >= %(source_start)s AND bucket <= %(end)s) AS s "
    "WHERE b >= %(start)s GROUP BY b ORDER BY b DESC LIMIT %(limit)s"
)

_FOLD_MINUTES = (
    "SELECT "
    + _MS.format(t="min(time)")
    + ", "
    + _MS.format(t="max(time)")
    + ", (array_agg(open ORDER BY time))[1]::text, max(high)::text, min(low)::text, "
    "(array_agg(close ORDER BY time DESC))[1]::text, sum(volume)::text FROM ohlcvs "
    "WHERE exchange = %s AND base_id = %s AND quote_id = %s AND time >= %s AND time < %s"
)

_EARLIEST_MS = -62_135_596_800_000  # 0001-01-01
_LATEST_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999


# With TimescaleDB these levels are views aggregating ohlcvs (docs/operations.md): the newest bars
# with no start would aggregate a market's whole history first. The newest `limit` bars of width k
# minutes lie at or after the bar holding the (limit * k)-th newest stored minute (a bar holds at
# most k minutes), so that bar's open time is a start that changes no answer.
_VIEW_INTERVALS = frozenset({"5m", "15m", "30m"})
_MINUTE_FLOOR = (
    "SELECT (extract(epoch FROM time) * 1000)::bigint FROM ohlcvs WHERE exchange = {} AND base_id = {} "
    "AND quote_id = {} AND time <= {} ORDER BY time DESC OFFSET {} LIMIT 1"
)
MINUTE_FLOOR_QUERY = _MINUTE_FLOOR.format("$1", "$2", "$3", "$4", "$5")
"""For asyncpg, with `minute_floor_arguments`."""


def needs_minute_floor(query: BarQuery) -> bool:
    return query.start_ms is None and query.interval.name in _VIEW_INTERVALS


def minute_floor_arguments(query: BarQuery) -> tuple[object, ...]:
    end = ms_to_datetime(_LATEST_MS if query.end_ms is None else query.end_ms)
    return (*query.market, end, query.limit * (query.interval.width_ms // _MIN) - 1)


def with_minute_floor(query: BarQuery, minute_ms: int | None) -> BarQuery:
    """`query` starting at the bar that holds `minute_ms` (None: fewer minutes stored; unchanged)."""
    if minute_ms is None:
        return query
    return replace(query, start_ms=query.interval.bucket_start(minute_ms))


def read_bars(conn: PgConnection, query: BarQuery) -> list[Bar]:
    """The stored bars `query` asks for, ascending."""
    if needs_minute_floor(query):
        with conn.cursor() as cur:
            cur.execute(_MINUTE_FLOOR.format(*["%s"] * 5), minute_floor_arguments(query))
            row = cur.fetchone()
        query = with_minute_floor(query, row[0] if row else None)
    interval = query.interval
    if interval.rollup_sql is None:
        statement = sql.SQL(_DIRECT).format(
            time=sql.Identifier(interval.time_column), relation=sql.Identifier(interval.relation)
        )
    else:
        statement = sql.SQL(_ROLLUP).format(
            expr=sql.SQL(interval.rollup_sql), relation=sql.Identifier(interval.relation)
        )
    with conn.cursor() as cur:
        cur.execute(statement, bars_body_values(query))
        rows = cur.fetchall()
    rows.reverse()
    return rows


def minutes_stored(conn: PgConnection, market: MarketKey, times_ms: list[int]) -> set[int]:
    """Which of these minute open times already have a row in `ohlcvs`."""
    if not times_ms:
        return set()
    with conn.cursor() as cur:
        cur.execute(
            "SELECT " + _MS.format(t="time") + " FROM ohlcvs WHERE exchange = %s AND base_id = %s "
            "AND quote_id = %s AND time = ANY(%s)",
            (*market, [ms_to_datetime(t) for t in times_ms]),
        )
        return {row[0] for row in cur.fetchall()}


@dataclass(frozen=True, slots=True)
class Fold:
    """Stored minutes of one range folded into one bar, with their first and last open times."""

    first_ms: int
    last_ms: int
    open: str
    high: str
    low: str
    close: str
    volume: str


def fold_minutes(conn: PgConnection, market: MarketKey, start_ms: int, end_ms: int) -> Fold | None:
    """The stored minutes in [start_ms, end_ms) as one bar, or None when there are none."""
    with conn.cursor() as cur:
        cur.execute(_FOLD_MINUTES, (*market, ms_to_datetime(start_ms), ms_to_datetime(end_ms)))
        row = cur.fetchone()
    return None if row is None or row[0] is None else Fold(*row)


def market_exists(conn: PgConnection, market: MarketKey) -> bool:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT 1 FROM symbol_exchange WHERE exchange = %s AND base_id = %s AND quote_id = %s", market
        )
        return cur.fetchone() is not None


def list_markets(
    conn: PgConnection,
    exchange: str | None = None,
    base_id: str | None = None,
    quote_id: str | None = None,
    is_trading: bool | None = None,
) -> list[dict]:
    """Rows of `symbol_exchange` matching every filter given (None = any), sorted."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT exchange, base_id, quote_id, symbol, is_trading FROM symbol_exchange "
            "WHERE (%(e)s::text IS NULL OR exchange = %(e)s) AND (%(b)s::text IS NULL OR base_id = %(b)s) "
            "AND (%(q)s::text IS NULL OR quote_id = %(q)s) "
            "AND (%(t)s::boolean IS NULL OR is_trading = %(t)s) ORDER BY exchange, base_id, quote_id",
            dict(e=exchange, b=base_id, q=quote_id, t=is_trading),
        )
        names = ("exchange", "base_id", "quote_id", "symbol", "is_trading")
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


_RETURN_VIEWS = {
    "geo_daily_return": (
        "SELECT exchange, base_id, quote_id, days, geo_daily_return::text FROM geo_daily_return"
    ),
    "weekly_return": (
        "SELECT exchange, base_id, quote_id, NULL::bigint, weekly_return::text FROM weekly_return"
    ),
}


def read_returns(
    conn: PgConnection, view: str, lower: str | None, upper: str | None, limit: int | None
) -> list[dict]:
    """Rows of a return view (`geo_daily_return` or `weekly_return`), best first, keeping only
    returns within [lower, upper] (decimal text, None = unbounded); `limit` None = all."""
    column = "geo_daily_return" if view == "geo_daily_return" else "weekly_return"
    query = (
        f"SELECT * FROM ({_RETURN_VIEWS[view]}) AS r(exchange, base_id, quote_id, days, value) "
        "WHERE value IS NOT NULL AND (%(lo)s::numeric IS NULL OR value::numeric >= %(lo)s::numeric) "
        "AND (%(hi)s::numeric IS NULL OR value::numeric <= %(hi)s::numeric) "
        "ORDER BY value::numeric DESC, exchange, base_id, quote_id LIMIT %(limit)s"
    )
    with conn.cursor() as cur:
        cur.execute(query, dict(lo=lower, hi=upper, limit=limit))
        rows = cur.fetchall()
    out = []
    for exchange, base_id, quote_id, days, value in rows:
        row = {"exchange": exchange, "base_id": base_id, "quote_id": quote_id, column: value}
        if days is not None:
            row["days"] = days
        out.append(row)
    return out


def read_top_quoted_volume(conn: PgConnection, limit: int | None) -> list[dict]:
    """`top_20_quoted_vol`, largest first; `limit` None = all 20."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT exchange, base_id, quote_id, quoted_vol::text FROM top_20_quoted_vol "
            "ORDER BY quoted_vol DESC, exchange, base_id, quote_id LIMIT %s",
            (limit,),
        )
        names = ("exchange", "base_id", "quote_id", "quoted_vol")
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def ping(conn: PgConnection) -> None:
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
        cur.fetchone()


# The body of GET /api/ohlcvs built by PostgreSQL: one text value with every bar as a JSON object,
# prices and volumes as the NUMERIC values' own text, so the app passes bytes through instead of
# building 3,000 Python strings and encoding them again. Written in the named-parameter style of
# the queries above and numbered once for asyncpg (`$1`...), which keeps them prepared.
_BAR_OBJECT = '{{"time":{time},"open":"%s","high":"%s","low":"%s","close":"%s","volume":"%s"}}'
# date_part's float8 epoch gives the same whole milliseconds as extract()'s NUMERIC (bar times are
# whole minutes; a float8 holds them exactly) and costs PostgreSQL ~0.1 ms less per 500 bars.
_TIME_MS = "%s", "(date_part('epoch', t) * 1000)::bigint"
_TIME_ISO = '"%s"', """to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')"""

_BODY = (
    "SELECT count(*), coalesce(string_agg(format('{template}', {time}, open, high, low, close, volume), "
    "',' ORDER BY t), '') FROM ({rows}) AS s"
)
_DIRECT_ROWS = (
    "SELECT {time} AS t, open, high, low, close, volume FROM {relation} "
    "WHERE exchange = %(exchange)s AND base_id = %(base_id)s AND quote_id = %(quote_id)s "
    "AND {time} >= %(start)s AND {time} <= %(end)s ORDER BY {time} DESC LIMIT %(limit)s"
)
_ROLLUP_ROWS = (
    "SELECT b AS t, (array_agg(open ORDER BY bucket))[1] AS open, max(high) AS high, min(low) AS low, "
    "(array_agg(close ORDER BY bucket DESC))[1] AS close, sum(volume) AS volume "
    "FROM (SELECT {expr} AS b, bucket, open, high, low, close, volume FROM {relation} "
    "WHERE exchange = %(exchange)s AND base_id = %(base_id)s AND quote_id = %(quote_id)s "
    "AND bucket >= %(source_start)s AND bucket <= %(end)s) AS r "
    "WHERE b >= %(start)s GROUP BY b ORDER BY b DESC LIMIT %(limit)s"
)
_NAMED = re.compile(r"%\((\w+)\)s")


@dataclass(frozen=True, slots=True)
class BodyQuery:
    """A bars-body query with `$n` placeholders and the parameter name each number stands for."""

    text: str
    names: tuple[str, ...]

    def arguments(self, values: dict[str, object]) -> list[object]:
        return [values[name] for name in self.names]


@cache
def bars_body_query(interval_name: str, as_ms: bool) -> BodyQuery:
    """SQL answering (number of bars, the bars as comma-separated JSON objects, ascending) for the
    newest `limit` bars of `interval_name` in [start, end]; the same bars as `read_bars`."""
    quote, time_sql = _TIME_MS if as_ms else _TIME_ISO
    template = _BAR_OBJECT.format(time=quote)
    return _numbered(_BODY.format(template=template, time=time_sql, rows=_rows_sql(INTERVALS[interval_name])))


def bars_body_values(query: BarQuery) -> dict[str, object]:
    """The named parameters of `query` for `read_bars`, `bars_body_query` and `bars_chunk_query`."""
    start_ms, end_ms = query.start_ms, query.end_ms
    exchange, base_id, quote_id = query.market
    values: dict[str, object] = dict(exchange=exchange, base_id=base_id, quote_id=quote_id, limit=query.limit)
    values["start"] = ms_to_datetime(_EARLIEST_MS if start_ms is None else start_ms)
    values["end"] = ms_to_datetime(_LATEST_MS if end_ms is None else end_ms)
    if query.interval.rollup_sql is not None:
        # The source buckets of the first wanted bar start at its own (earlier or equal) open time.
        first = query.interval.bucket_start(start_ms) if start_ms is not None else _EARLIEST_MS
        values.update(source_start=ms_to_datetime(max(first, _EARLIEST_MS)), origin=BUCKET_ORIGIN)
    return values


_CHUNK = (
    "SELECT coalesce(array_agg((date_part('epoch', t) * 1000)::bigint ORDER BY t), '{{}}'), "
    "coalesce(array_agg(format('{template}', {time}, open, high, low, close, volume) ORDER BY t), '{{}}') "
    "FROM ({rows}) AS s"
)


@cache
def bars_chunk_query(interval_name: str, as_ms: bool) -> BodyQuery:
    """SQL answering (bar open times in ms, each bar's JSON object), both ascending, for the same
    bars and the same text as `bars_body_query`: the web's history cache keeps them apart so it can
    slice any window out of a block."""
    quote, time_sql = _TIME_MS if as_ms else _TIME_ISO
    template = _BAR_OBJECT.format(time=quote)
    return _numbered(
        _CHUNK.format(template=template, time=time_sql, rows=_rows_sql(INTERVALS[interval_name]))
    )


def _rows_sql(interval: Interval) -> str:
    """The rows of one page of `interval` (newest first), from its table or rolled up from below."""
    if interval.rollup_sql is None:
        return _DIRECT_ROWS.format(time=f'"{interval.time_column}"', relation=f'"{interval.relation}"')
    return _ROLLUP_ROWS.format(expr=interval.rollup_sql, relation=f'"{interval.relation}"')


def _numbered(named: str) -> BodyQuery:
    """`named` with its `%(name)s` parameters numbered `$1`... in order of first use, for asyncpg."""
    names: list[str] = []

    def number(match: re.Match) -> str:
        if match[1] not in names:
            names.append(match[1])
        return f"${names.index(match[1]) + 1}"

    return BodyQuery(_NAMED.sub(number, named), tuple(names))


MARKET_EXTENT_QUERY = (
    "SELECT (SELECT (date_part('epoch', time) * 1000)::bigint FROM ohlcvs "
    "WHERE exchange = $1 AND base_id = $2 AND quote_id = $3 ORDER BY time LIMIT 1), "
    "(SELECT (date_part('epoch', time) * 1000)::bigint FROM ohlcvs "
    "WHERE exchange = $1 AND base_id = $2 AND quote_id = $3 ORDER BY time DESC LIMIT 1)"
)
"""(first, newest) minute open time in ms of one market's `ohlcvs` rows; NULLs when it has none."""
