"""Every summary level stays fresh while the updater runs: a bucket that closed is shown, equal to
its 1-minute rows, within one bucket length of its close (on plain PostgreSQL the updater refreshes
them; with TimescaleDB real-time aggregation shows them).

Eight simulated days of live bars for two markets pass through the real Redis sink and the real
updater, three hours per step (the exchange's clock is the newest bar, as the fetchers report it);
after every flush each level is compared with the same figures recomputed from the 1-minute bars
(which `ohlcvs` is checked to hold).
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from decimal import Decimal

import pytest
import redis.asyncio as aioredis

from common.candle import Market
from common.db import AGGREGATE_LEVELS, BUCKET_ORIGIN, connection, has_timescaledb, upsert_markets
from common.timeutil import MINUTE_MS, datetime_to_ms, ms_to_datetime
from fetchers.exchanges.base import WsCandle
from fetchers.ws.sink import MarketKeys, RedisSink
from fetchers.ws.updater import Updater

pytestmark = pytest.mark.integration

MARKETS = [Market("binance", "BTC", "USDT", "BTCUSDT"), Market("binance", "ETH", "BTC", "ETHBTC")]
START = datetime(2021, 3, 7, 13, 17, tzinfo=UTC)  # a Sunday, off every bucket boundary
STEP_MINUTES = 180
DAYS = 8  # past a whole 7-day bucket


def live_bar(market: Market, minute: int) -> WsCandle:
    """A deterministic random walk in exact decimal text."""
    seed = 7 if market.base_id == "BTC" else 11
    price = 20_000_00 + ((minute * 7919 + seed * 104_729) % 40_001) - 20_000
    high = price + (minute * 31 % 250)
    low = price - (minute * 17 % 250)
    close = price + ((minute * 13) % 200) - 100
    volume = Decimal((minute * 1_000_003 + seed) % 9_000_000_000) / Decimal(10**8)
    return WsCandle(
        market.symbol,
        datetime_to_ms(START) + minute * MINUTE_MS,
        str(Decimal(price) / 100),
        str(Decimal(max(high, close)) / 100),
        str(Decimal(min(low, close)) / 100),
        str(Decimal(close) / 100),
        str(volume),
    )


async def push(settings, first_minute: int, minutes: int) -> None:
    client = aioredis.from_url(settings.redis_url)
    try:
        sink = RedisSink(client, "binance", "shard0/1", lambda attempt: 0.01)
        for market in MARKETS:
            keys = MarketKeys.build("binance", market.base_id, market.quote_id, market.symbol, ";;")
            for minute in range(first_minute, first_minute + minutes):
                sink.add(keys, live_bar(market, minute), 0.0)
        await sink.flush()
    finally:
        await client.aclose()


def stored_rows(conn) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT base_id, quote_id, time, open, high, low, close, volume FROM ohlcvs "
            "ORDER BY time, base_id, quote_id"
        )
        return cur.fetchall()


def generated_rows(minutes: int) -> list[tuple]:
    """The rows `live_bar` makes of the first `minutes` minutes, as `stored_rows` reads them."""
    rows = []
    for minute in range(minutes):
        for market in sorted(MARKETS, key=lambda m: (m.base_id, m.quote_id)):
            bar = live_bar(market, minute)
            values = (bar.open, bar.high, bar.low, bar.close, bar.volume)
            rows.append((market.base_id, market.quote_id, ms_to_datetime(bar.time), *map(Decimal, values)))
    return rows


def expected_levels(conn) -> dict[str, dict]:
    return levels_of(stored_rows(conn))


def levels_of(rows: list[tuple]) -> dict[str, dict]:
    """Every level's buckets recomputed from 1-minute rows in time order."""
    levels: dict[str, dict] = {}
    for name, width in AGGREGATE_LEVELS.items():
        groups: dict = {}
        for base, quote, time, open_, high, low, close, volume in rows:
            key = (base, quote, BUCKET_ORIGIN + ((time - BUCKET_ORIGIN) // width) * width)
            g = groups.get(key)
            if g is None:
                groups[key] = [open_, high, low, close, volume]
            else:
                g[1], g[2], g[3], g[4] = max(g[1], high), min(g[2], low), close, g[4] + volume
        levels[name] = {key: tuple(values) for key, values in groups.items()}
    return levels


def shown(conn, name: str, since: datetime) -> dict:
    with conn.cursor() as cur:
        cur.execute(
            f"SELECT base_id, quote_id, bucket, open, high, low, close, volume FROM {name} "
            "WHERE bucket >= %s",
            (since,),
        )
        return {tuple(row[:3]): tuple(row[3:]) for row in cur.fetchall()}


@pytest.mark.parametrize("rows_per_batch", [None, 100], ids=["one batch", "a batch per market"])
def test_every_level_shows_each_closed_bucket_within_one_bucket_length(
    settings, redis_server, monkeypatch, rows_per_batch
):
    import fetchers.ws.updater as updater_module

    if rows_per_batch:  # each batch's markets are refreshed by its writer while the next is written
        monkeypatch.setattr(updater_module, "ROWS_PER_BATCH", rows_per_batch)
    with connection(settings) as conn:
        upsert_markets(conn, MARKETS)
    updater = Updater(settings, redis_server.client())
    checked = dict.fromkeys(AGGREGATE_LEVELS, 0)
    generated = generated_rows(DAYS * 1440)
    expected = levels_of(generated)  # a due bucket's minutes are all pushed: the same as from ohlcvs
    try:
        for first in range(0, DAYS * 1440, STEP_MINUTES):
            asyncio.run(push(settings, first, STEP_MINUTES))
            updater.flush()
            clock = ms_to_datetime(datetime_to_ms(START) + (first + STEP_MINUTES - 1) * MINUTE_MS)
            with connection(settings) as conn:
                for name, width in AGGREGATE_LEVELS.items():
                    due = {k: v for k, v in expected[name].items() if k[2] + width <= clock - width}
                    actual = shown(conn, name, START - width)
                    late = sorted(k for k in due if actual.get(k) != due[k])
                    assert not late, (
                        f"at {clock}: {name} bucket {late[0][2]} of {late[0][:2]} closed at "
                        f"{late[0][2] + width} shows {actual.get(late[0])}, expected {due[late[0]]}"
                    )
                    checked[name] += len(due) > 0
        with connection(settings) as conn:  # the minutes the levels were held to are those stored
            stored = stored_rows(conn)
        closed = len(stored)
        assert stored == generated[:closed] and closed >= len(generated) - 2 * len(MARKETS), closed
    finally:
        updater.close()
    assert all(checked.values()), checked  # every level, 7 days included, had closed buckets to check


class Killed(BaseException):
    """Stands for `kill -9`: the process ends right there, nothing after it runs."""


def killed_on_plain_postgres(settings):
    """Where the kill lands: on plain PostgreSQL the updater refreshes the levels after its commit,
    so the flush dies there; on TimescaleDB it refreshes nothing (real-time aggregation), so there
    is no such window and the flush ends normally. Either way the levels must end up right."""
    with connection(settings) as conn:
        plain = not has_timescaledb(conn)
    return pytest.raises(Killed) if plain else contextlib.nullcontext()


@pytest.mark.parametrize("refresh", ["refresh_first_level", "refresh_aggregates"])
def test_an_updater_killed_between_its_commit_and_its_refresh_leaves_no_bucket_stale(
    settings, redis_server, monkeypatch, refresh
):
    import fetchers.ws.updater as updater_module

    with connection(settings) as conn:
        upsert_markets(conn, MARKETS)
    client = redis_server.client()
    asyncio.run(push(settings, 0, 10))  # 13:17 .. 13:26; 13:26 is still open
    first = Updater(settings, client)
    first.flush()
    asyncio.run(push(settings, 10, 40))  # up to 14:06: a backlog of many buckets, 14:06 still open

    def killed(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(updater_module, refresh, killed)  # its batch's refresh, or the one after
    with killed_on_plain_postgres(settings):
        first.flush()  # committed 13:26 .. 14:05, then died before (all of) its refresh
    first.close()
    monkeypatch.undo()

    asyncio.run(push(settings, 50, 20))  # the supervisor's new updater carries on from 14:07
    second = Updater(settings, client)
    second.flush()
    second.close()
    clock = ms_to_datetime(datetime_to_ms(START) + 68 * MINUTE_MS)  # bars up to 14:24 are in
    with connection(settings) as conn:
        expected = expected_levels(conn)
        for name, width in AGGREGATE_LEVELS.items():
            due = {k: v for k, v in expected[name].items() if k[2] + width <= clock}
            actual = shown(conn, name, START - width)
            assert {k: actual.get(k) for k in due} == due, name


def test_an_updater_killed_in_its_first_flush_between_its_batches_and_the_refresh_after_them(
    settings, redis_server, monkeypatch
):
    """No refresh has ever finished (no open-bucket marks): the next updater still rebuilds the
    levels above the 5-minute buckets the killed one's writers had built."""
    import fetchers.ws.updater as updater_module

    with connection(settings) as conn:
        upsert_markets(conn, MARKETS)
    client = redis_server.client()
    asyncio.run(push(settings, 0, 60))  # 13:17 .. 14:16, a backlog of many buckets

    def killed(*args, **kwargs):
        raise Killed

    first = Updater(settings, client)
    monkeypatch.setattr(updater_module, "refresh_aggregates", killed)
    with killed_on_plain_postgres(settings):
        first.flush()
    first.close()
    monkeypatch.undo()

    asyncio.run(push(settings, 60, 20))
    second = Updater(settings, client)
    second.flush()
    second.close()
    clock = ms_to_datetime(datetime_to_ms(START) + 78 * MINUTE_MS)
    with connection(settings) as conn:
        expected = expected_levels(conn)
        for name, width in AGGREGATE_LEVELS.items():
            due = {k: v for k, v in expected[name].items() if k[2] + width <= clock}
            actual = shown(conn, name, START - width)
            assert {k: actual.get(k) for k in due} == due, name
