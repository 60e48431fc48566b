"""Bars for one market and interval: closed history from PostgreSQL, the newest minutes from Redis.

The live pipeline keeps minutes that are not in the database yet in the `ws_sub_` hash and the
latest bar in the `ws_send_` hash. They are merged in here so a chart has no hole between the
database and the live bar; a minute the database already has always wins.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from psycopg2.extensions import connection as PgConnection

from common.candle import Bar, MarketKey
from common.redis_keys import ws_send_key, ws_sub_key
from web import reads
from web.bars import (
    combine,
    encode_bars,
    fill_empty,
    group_minutes,
    merge_minutes,
    parse_latest_hash,
    parse_live_bar,
)
from web.database import AsyncPool, ConnectionPool
from web.history_cache import HistoryCache, body_from_database
from web.reads import BarQuery


async def live_minutes(client: aioredis.Redis, market: MarketKey, delimiter: str) -> list[Bar]:
    """Minutes waiting in Redis (`ws_sub_` hash) plus the latest bar (`ws_send_` hash), ascending;
    malformed entries are skipped."""
    async with client.pipeline(transaction=False) as pipe:
        pipe.hvals(ws_sub_key(*market, delimiter=delimiter))
        pipe.hgetall(ws_send_key(*market, delimiter=delimiter))
        waiting, latest = await pipe.execute()
    bars = {}
    for raw in waiting:
        bar = parse_live_bar(raw)
        if bar is not None:
            bars[bar[0]] = bar
    newest = parse_latest_hash(latest)
    if newest is not None:
        bars[newest[0]] = newest  # the latest state of the open minute
    return [bars[t] for t in sorted(bars)]


async def ohlcvs_body(
    fast: AsyncPool,
    pool: ConnectionPool,
    recent_minutes: Callable[[MarketKey], Awaitable[list[Bar]]],
    query: BarQuery,
    empty_ts: bool,
    as_ms: bool,
    cache: HistoryCache | None = None,
) -> tuple[int, bytes]:
    """(number of bars, JSON body) of GET /api/ohlcvs: the bars `query` asks for (the newest `limit`
    whose open time is in [start, end]), ascending. When no live minute falls in one of those bars
    and no gap is to be filled - every page of history - PostgreSQL writes the body itself in one
    prepared query, or the `cache` of rendered closed history serves what it holds; otherwise the
    bars are read, merged and filled here (`read_ohlcvs`) and encoded."""
    live = await _live_in_window(recent_minutes, query)
    if not live and not empty_ts:
        if cache is not None:
            return await cache.body(query, as_ms)
        count, text = await body_from_database(fast, query, as_ms)
        return count, ("[" + text + "]").encode()
    bars = await read_ohlcvs(pool, live, query, empty_ts)
    return len(bars), encode_bars(bars, as_ms)


async def ohlcvs_bars(
    pool: ConnectionPool,
    recent_minutes: Callable[[MarketKey], Awaitable[list[Bar]]],
    query: BarQuery,
    empty_ts: bool,
) -> list[Bar]:
    """The bars of `ohlcvs_body` as tuples, for answers other than JSON (CSV): the same bars, the
    live minutes merged and gaps filled the same way."""
    return await read_ohlcvs(pool, await _live_in_window(recent_minutes, query), query, empty_ts)


async def _live_in_window(
    recent_minutes: Callable[[MarketKey], Awaitable[list[Bar]]], query: BarQuery
) -> list[Bar]:
    """The live minutes that fall in a bar `query` asks for. A live minute counts by the open time
    of the bar holding it, as stored minutes do: the bar opening at `end` holds minutes after `end`."""
    start_ms, end_ms, interval = query.start_ms, query.end_ms, query.interval
    return [
        b
        for b in await recent_minutes(query.market)
        if (start_ms is None or interval.bucket_start(b[0]) >= start_ms)
        and (end_ms is None or interval.bucket_start(b[0]) <= end_ms)
    ]


async def read_ohlcvs(pool: ConnectionPool, live: list[Bar], query: BarQuery, empty_ts: bool) -> list[Bar]:
    """The bars of GET /api/ohlcvs (ascending, what `query` asks for) from stored bars and the
    `live` minutes in Redis that fall in the window."""

    def work(conn: PgConnection) -> list[Bar]:
        bars = reads.read_bars(conn, query)
        if live and query.interval.name == "1m":
            bars = merge_minutes(bars, live, query.limit)
        elif live:
            bars = _merge_buckets(conn, query, bars, live)
        return bars

    bars = await pool.run(work)
    return fill_empty(bars, query.interval, query.limit) if empty_ts else bars


def _merge_buckets(conn: PgConnection, query: BarQuery, bars: list[Bar], live: list[Bar]) -> list[Bar]:
    """Rebuild every interval bar that live minutes fall in from stored minutes plus those."""
    interval = query.interval
    by_time = {bar[0]: bar for bar in bars}
    for bucket_ms, minutes in group_minutes(live, interval).items():
        if query.start_ms is not None and bucket_ms < query.start_ms:
            continue
        bar = live_bucket(conn, query.market, bucket_ms, interval.next_start(bucket_ms), minutes)
        if bar is not None:
            by_time[bucket_ms] = bar
    return [by_time[t] for t in sorted(by_time)][-query.limit :]


def live_bucket(
    conn: PgConnection, market: MarketKey, bucket_ms: int, end_ms: int, minutes: list[Bar]
) -> Bar | None:
    """The bar opening at `bucket_ms` from the stored minutes in [bucket_ms, end_ms) and the live
    `minutes` the database does not have yet; None when there are neither."""
    stored = reads.minutes_stored(conn, market, [b[0] for b in minutes])
    fresh = [b for b in minutes if b[0] not in stored]
    folded = reads.fold_minutes(conn, market, bucket_ms, end_ms)
    return combine_stored_and_fresh(bucket_ms, folded, fresh)


def combine_stored_and_fresh(bucket_ms: int, folded: reads.Fold | None, fresh: list[Bar]) -> Bar | None:
    """One bar from the fold of stored minutes and live minutes (ascending) the database lacks:
    the open of whichever minute is first, the close of whichever is last."""
    if folded is None:
        return combine(fresh, bucket_ms) if fresh else None
    if not fresh:
        return (bucket_ms, folded.open, folded.high, folded.low, folded.close, folded.volume)
    merged = combine(
        [(folded.first_ms, folded.open, folded.high, folded.low, folded.close, folded.volume), *fresh],
        bucket_ms,
    )
    open_ = fresh[0][1] if fresh[0][0] < folded.first_ms else folded.open
    close = folded.close if folded.last_ms > fresh[-1][0] else fresh[-1][4]
    return (bucket_ms, open_, merged[2], merged[3], close, merged[5])
