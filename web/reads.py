"""Every read the web API makes from PostgreSQL, in one place (writes live in `common.db`).

Bars leave as tuples `(time_ms, open, high, low, close, volume)` whose prices and volumes are the
NUMERIC values' own text: nothing passes through a float. The 1-minute level reads `ohlcvs`, the
others the `ohlcvs_summary_*` aggregates; 3h, 14D and 1M have no relation of their own and are
rolled up in SQL from the level below (1h, 7D and 1D). Those definitions and the rows SQL are
`common.levels`, shared with the export command.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cache

from psycopg2 import sql
from psycopg2.extensions import connection as PgConnection

from common.candle import Bar, MarketKey

# The levels and their read SQL live in common.levels (the export reads them too); the web's
# modules and tests keep naming them from here.
from common.levels import BUCKET_ORIGIN_MS as BUCKET_ORIGIN_MS
from common.levels import INTERVALS as INTERVALS
from common.levels import LATEST_MS, SUMMARY_LEVELS, NumberedQuery, bar_rows_sql, numbered
from common.levels import BarQuery as BarQuery
from common.levels import Interval as Interval
from common.levels import bar_query_values as bars_body_values
from common.timeutil import MINUTE_MS, ms_to_datetime

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


# With TimescaleDB these levels are views aggregating ohlcvs (docs/operations.md): the newest bars
# with no start would aggregate a market's whole history first. The newest `limit` bars of width k
# minutes lie at or after the bar holding the (limit * k)-th newest stored minute (a bar holds at
# most k minutes), so that bar's open time is a start that changes no answer.
_VIEW_INTERVALS = frozenset(level.api_name for level in SUMMARY_LEVELS if level.timescale_view_of == "ohlcvs")
_MINUTE_FLOOR = (
    "SELECT (extract(epoch FROM time) * 1000)::bigint FROM ohlcvs WHERE exchange = {} AND base_id = {} "
    "AND quote_id = {} AND time <= {} ORDER BY time DESC OFFSET {} LIMIT 1"
)
MINUTE_FLOOR_QUERY = _MINUTE_FLOOR.format("$1", "$2", "$3", "$4", "$5")
"""For asyncpg, with `minute_floor_arguments`."""


def needs_minute_floor(query: BarQuery) -> bool:
    return query.start_ms is None and query.limit is not None and query.interval.name in _VIEW_INTERVALS


def minute_floor_arguments(query: BarQuery) -> tuple[object, ...]:
    assert query.limit is not None
    end = ms_to_datetime(LATEST_MS if query.end_ms is None else query.end_ms)
    return (*query.market, end, query.limit * (query.interval.width_ms // MINUTE_MS) - 1)


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


@cache
def bars_body_query(interval_name: str, as_ms: bool) -> NumberedQuery:
    """SQL answering (number of bars, the bars as comma-separated JSON objects, ascending) for the
    newest `limit` bars of `interval_name` in [start, end]; the same bars as `read_bars`."""
    quote, time_sql = _TIME_MS if as_ms else _TIME_ISO
    template = _BAR_OBJECT.format(time=quote)
    return numbered(
        _BODY.format(template=template, time=time_sql, rows=bar_rows_sql(INTERVALS[interval_name]))
    )


_CHUNK = (
    "SELECT coalesce(array_agg((date_part('epoch', t) * 1000)::bigint ORDER BY t), '{{}}'), "
    "coalesce(array_agg(format('{template}', {time}, open, high, low, close, volume) ORDER BY t), '{{}}') "
    "FROM ({rows}) AS s"
)


@cache
def bars_chunk_query(interval_name: str, as_ms: bool) -> NumberedQuery:
    """SQL answering (bar open times in ms, each bar's JSON object), both ascending, for the same
    bars and the same text as `bars_body_query`: the web's history cache keeps them apart so it can
    slice any window out of a block."""
    quote, time_sql = _TIME_MS if as_ms else _TIME_ISO
    template = _BAR_OBJECT.format(time=quote)
    return numbered(
        _CHUNK.format(template=template, time=time_sql, rows=bar_rows_sql(INTERVALS[interval_name]))
    )


MARKET_EXTENT_QUERY = (
    "SELECT (SELECT (date_part('epoch', time) * 1000)::bigint FROM ohlcvs "
    "WHERE exchange = $1 AND base_id = $2 AND quote_id = $3 ORDER BY time LIMIT 1), "
    "(SELECT (date_part('epoch', time) * 1000)::bigint FROM ohlcvs "
    "WHERE exchange = $1 AND base_id = $2 AND quote_id = $3 ORDER BY time DESC LIMIT 1)"
)
"""(first, newest) minute open time in ms of one market's `ohlcvs` rows; NULLs when it has none."""
