"""The REST API on a real server, real PostgreSQL and Redis, with known data: values are checked."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from common.candle import Candle, Market, MarketKey
from common.db import connection, refresh_aggregates, upsert_candles, upsert_markets
from common.timeutil import isoformat_z, ms_to_datetime
from tests.support.services import RedisServer, free_port
from tests.support.web import (
    BASE_MS,
    BTC,
    ETH,
    HOUR_MS,
    expected_bar,
    http_get,
    imitate_live_pipeline_bar,
    imitate_waiting_minute,
    known_candle,
    market_key,
    minute_dict,
    running_web,
    seed_known_data,
    stored_form,
    wait_for,
)
from web.bars import encode_bars
from web.database import AsyncPool
from web.reads import INTERVALS, BarQuery, bars_body_query, bars_body_values, read_bars

pytestmark = pytest.mark.integration

MISSING = {7, 8, 100, 101, 102}
MINUTES = [i for i in range(6 * 60) if i not in MISSING]  # six hours with a few minutes without trades
MIN = 60_000
MARKET_KEY = MarketKey("binance", "BTC", "USDT")


@pytest.fixture
def seeded(settings):
    return seed_known_data(settings, [BTC, ETH], MINUTES)


@pytest.fixture
def api(settings, seeded):
    with running_web(settings) as base:
        yield base + "/api"


def ohlcvs(api, market=BTC, **params):
    query = dict(exchange=market.exchange, base_id=market.base_id, quote_id=market.quote_id, **params)
    return http_get(f"{api}/ohlcvs", **query)


def grouped(candles: list[Candle], width_ms: int) -> list[dict]:
    buckets: dict[int, list[Candle]] = {}
    for candle in candles:
        t = int(candle.time.timestamp() * 1000)
        buckets.setdefault(BASE_MS + (t - BASE_MS) // width_ms * width_ms, []).append(candle)
    return [expected_bar(buckets[b], b) for b in sorted(buckets)]


# ------------------------------------------------------------------------------------- ohlcvs


def test_one_minute_bars_are_the_stored_decimal_text(api, seeded):
    status, body = ohlcvs(api, interval="1m", start=BASE_MS, end=BASE_MS + 59 * MIN)
    assert status == 200
    assert body == [
        minute_dict(c) for c in seeded[BTC] if int(c.time.timestamp() * 1000) <= BASE_MS + 59 * MIN
    ]
    assert body[0]["volume"] == "0.123456789" and body[0]["open"] == "100.0000", "trailing zeros kept"


@pytest.mark.parametrize(
    "interval, width_ms",
    [("5m", 5 * MIN), ("15m", 15 * MIN), ("30m", 30 * MIN), ("1h", HOUR_MS), ("3h", 3 * HOUR_MS)],
)
def test_aggregate_intervals_equal_bars_computed_from_the_minutes(api, seeded, interval, width_ms):
    status, body = ohlcvs(api, interval=interval)
    assert status == 200
    assert body == grouped(seeded[BTC], width_ms)


@pytest.mark.parametrize("interval", ["6h", "12h", "1D", "7D", "14D", "1M"])
def test_long_intervals_hold_the_whole_six_hours_in_one_bar(api, seeded, interval):
    # 2024-01-01 is a Monday, the first of a month, and a 14-day bucket start from 2000-01-03.
    status, body = ohlcvs(api, interval=interval)
    assert status == 200
    assert body == [expected_bar(seeded[BTC], BASE_MS)]


def test_limit_keeps_the_newest_bars_in_ascending_order(api, seeded):
    status, body = ohlcvs(api, interval="1m", limit=3)
    assert status == 200
    assert body == [minute_dict(c) for c in seeded[BTC][-3:]]
    status, body = ohlcvs(api, interval="1h", end=BASE_MS + 2 * HOUR_MS, limit=2)
    assert [bar["time"] for bar in body] == [BASE_MS + HOUR_MS, BASE_MS + 2 * HOUR_MS]


def test_start_and_end_are_inclusive(api):
    status, body = ohlcvs(api, interval="5m", start=BASE_MS + 10 * MIN, end=BASE_MS + 20 * MIN)
    assert status == 200
    assert [bar["time"] for bar in body] == [BASE_MS + 10 * MIN, BASE_MS + 15 * MIN, BASE_MS + 20 * MIN]


def test_empty_ts_fills_minutes_without_trades_at_the_previous_close(api, seeded):
    status, body = ohlcvs(
        api, interval="1m", start=BASE_MS + 5 * MIN, end=BASE_MS + 10 * MIN, empty_ts="true"
    )
    assert status == 200
    close_6 = str(known_candle(BTC, 6).close)
    flat = {"open": close_6, "high": close_6, "low": close_6, "close": close_6, "volume": "0"}
    assert body == [
        minute_dict(known_candle(BTC, 5)),
        minute_dict(known_candle(BTC, 6)),
        {"time": BASE_MS + 7 * MIN, **flat},
        {"time": BASE_MS + 8 * MIN, **flat},
        minute_dict(known_candle(BTC, 9)),
        minute_dict(known_candle(BTC, 10)),
    ]
    status, plain = ohlcvs(api, interval="1m", start=BASE_MS + 5 * MIN, end=BASE_MS + 10 * MIN)
    assert [bar["time"] for bar in plain] == [BASE_MS + m * MIN for m in (5, 6, 9, 10)]


@pytest.mark.parametrize("interval", ["1m", "5m", "1h", "3h"])
def test_end_holds_a_live_minute_exactly_as_a_stored_one(api, settings, redis_server, interval):
    """`end` is inclusive (docs/api.md): the bar opening at `end` is returned, whether the minute in
    it is still live in Redis or stored. BTC and ETH hold the same values; minute 362 (in the bars
    opening at minutes 360 and 362) is live for BTC and stored for ETH, so every answer must match."""
    live_ms = BASE_MS + 362 * MIN
    imitate_live_pipeline_bar(redis_server.client(), settings, BTC, minute_dict(known_candle(BTC, 362)))
    with connection(settings) as conn:
        upsert_candles(conn, [stored_form(known_candle(ETH, 362))])
    refresh_aggregates(settings, None, None)
    bar_open = INTERVALS[interval].bucket_start(live_ms)

    for end in (bar_open, live_ms, bar_open - 1):
        status, live = ohlcvs(api, BTC, interval=interval, end=end, limit=2)
        assert status == 200
        assert live == ohlcvs(api, ETH, interval=interval, end=end, limit=2)[1], f"end={end}"
        assert (live[-1]["time"] == bar_open) == (end >= bar_open), f"end={end}: {live}"


def test_results_mls_false_gives_iso_times(api):
    status, body = ohlcvs(api, interval="1h", limit=1, results_mls="false")
    assert status == 200
    assert body[0]["time"] == isoformat_z(ms_to_datetime(BASE_MS + 5 * HOUR_MS)) == "2024-01-01T05:00:00Z"


def test_minutes_still_in_redis_are_merged_and_the_database_wins(api, settings, seeded, redis_server):
    client = redis_server.client()
    last = BASE_MS + 359 * MIN
    waiting = {
        "time": last + MIN,
        "open": "1.10",
        "high": "999.5",
        "low": "1.00",
        "close": "1.05",
        "volume": "2.5",
    }
    live = {
        "time": last + 2 * MIN,
        "open": "1.05",
        "high": "1.2",
        "low": "0.5",
        "close": "1.15",
        "volume": "0.25",
    }
    duplicate = {**minute_dict(known_candle(BTC, 359)), "close": "7", "high": "99999"}
    imitate_waiting_minute(client, settings, BTC, waiting)
    imitate_waiting_minute(client, settings, BTC, duplicate)
    imitate_live_pipeline_bar(client, settings, BTC, live)

    status, body = ohlcvs(api, interval="1m", limit=3)
    assert status == 200
    assert body == [minute_dict(known_candle(BTC, 359)), waiting, live]

    newer = {**live, "time": last + 3 * MIN, "close": "1.25"}
    imitate_live_pipeline_bar(client, settings, BTC, newer)
    wait_for(lambda: ohlcvs(api, interval="1m", limit=1)[1] == [newer], 10, "a new live bar shows at once")

    status, body = ohlcvs(api, interval="1h", start=BASE_MS + 5 * HOUR_MS)
    last_hour = [c for c in seeded[BTC] if int(c.time.timestamp() * 1000) >= BASE_MS + 5 * HOUR_MS]
    stored = expected_bar(last_hour, BASE_MS + 5 * HOUR_MS)
    assert body[0] == stored, "the stored hour is not touched by the duplicate"
    assert body[1] == {
        "time": BASE_MS + 6 * HOUR_MS,
        "open": "1.10",
        "high": "999.5",
        "low": "0.5",
        "close": "1.25",
        "volume": "2.75",
    }


@pytest.mark.parametrize("interval", list(INTERVALS))
def test_the_body_postgresql_writes_equals_the_bars_read_and_encoded(settings, seeded, interval):
    """History pages leave as the text PostgreSQL builds; pages with live minutes or filled gaps
    are encoded in Python from `read_bars`. Both must give the same bytes for the same bars."""
    windows = [
        (None, None, 500),
        (BASE_MS + 7 * MIN, BASE_MS + 200 * MIN, 500),
        (BASE_MS + 95 * MIN, None, 3),
        (None, BASE_MS + 2 * HOUR_MS + 17 * MIN, 2),
        (BASE_MS + 7 * MIN, BASE_MS + 8 * MIN, 10),
    ]

    async def bodies(as_ms: bool) -> list[tuple[int, str]]:
        pool = AsyncPool(settings, 2)
        await pool.open()
        try:
            query = bars_body_query(interval, as_ms)
            out = []
            for start, end, limit in windows:
                values = bars_body_values(BarQuery(MARKET_KEY, INTERVALS[interval], start, end, limit))
                count, text = await pool.fetchrow(query.text, *query.arguments(values))
                out.append((count, "[" + text + "]"))
            return out
        finally:
            await pool.close()

    for as_ms in (True, False):
        with connection(settings) as conn:
            expected = []
            for start, end, limit in windows:
                bars = read_bars(conn, BarQuery(MARKET_KEY, INTERVALS[interval], start, end, limit))
                expected.append((len(bars), encode_bars(bars, as_ms).decode()))
        assert asyncio.run(bodies(as_ms)) == expected
        assert any(count for count, _ in expected), "bars were compared, not only empty pages"


def test_an_empty_range_of_a_known_market_is_an_empty_list(api):
    status, body = ohlcvs(api, interval="1m", start=BASE_MS + 7 * MIN, end=BASE_MS + 8 * MIN)
    assert (status, body) == (200, [])


# ---------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "params, status, fragment",
    [
        (dict(exchange="kraken"), 422, "'bitfinex', 'binance' or 'bittrex'"),
        (dict(base_id="NOPE"), 404, "GET /api/symbol-exchange?exchange=binance"),
        (dict(interval="2m"), 422, "'1m'"),
        (dict(start=BASE_MS + HOUR_MS, end=BASE_MS), 400, "send start <= end"),
        (dict(limit=0), 422, "send a number from 1 to 5000"),
        (dict(limit=5001), 422, "send a number from 1 to 5000"),
        (dict(limit="many"), 422, "valid integer"),
        (dict(start="yesterday"), 422, "start: Input should be a valid integer"),
        (dict(end="1e99"), 422, "end: Input should be a valid integer"),
        (dict(start=-5), 422, "greater than or equal to 0"),
        (dict(end=10**20), 422, "less than or equal to"),
        (dict(base_id="BTC'; DROP TABLE ohlcvs;--"), 422, "base_id: String should match pattern"),
        (dict(empty_ts="perhaps"), 422, "empty_ts: Input should be a valid boolean"),
    ],
)
def test_bad_input_is_a_4xx_that_says_what_to_send(api, params, status, fragment):
    query = dict(exchange="binance", base_id="BTC", quote_id="USDT", interval="1m", **{})
    query.update(params)
    got_status, body = http_get(f"{api}/ohlcvs", **query)
    assert got_status == status, body
    assert fragment in body["detail"], body


def test_a_missing_parameter_is_named(api):
    status, body = http_get(f"{api}/ohlcvs", exchange="binance", base_id="BTC")
    assert status == 422 and "quote_id: required" in body["detail"]


# ------------------------------------------------------------------------------- symbol-exchange


def test_symbol_exchange_filters(api, settings):
    with connection(settings) as conn:
        upsert_markets(conn, [Market("binance", "ETH", "USDT", "ETHUSDT", is_trading=False)])
    status, body = http_get(f"{api}/symbol-exchange")
    assert status == 200 and [(m["exchange"], m["symbol"]) for m in body] == [
        ("binance", "BTCUSDT"),
        ("binance", "ETHUSDT"),
        ("bitfinex", "tETHBTC"),
    ]
    assert http_get(f"{api}/symbol-exchange", exchange="binance", is_trading="true")[1] == [
        {"exchange": "binance", "base_id": "BTC", "quote_id": "USDT", "symbol": "BTCUSDT", "is_trading": True}
    ]
    assert [m["symbol"] for m in http_get(f"{api}/symbol-exchange", base_id="ETH")[1]] == [
        "ETHUSDT",
        "tETHBTC",
    ]
    assert [m["symbol"] for m in http_get(f"{api}/symbol-exchange", quote_id="BTC")[1]] == ["tETHBTC"]
    status, body = http_get(f"{api}/symbol-exchange", exchange="ftx")
    assert status == 422 and "bittrex" in body["detail"]


# ---------------------------------------------------------------------------------- analytics


@pytest.fixture
def recent(settings):
    """Two markets with one candle a day over the last 5 days (and hourly ones for volume)."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    days = [today - timedelta(days=d) for d in range(4, -1, -1)]
    opens = {
        BTC: ["100", "110", "121", "133.1", "146.41"],
        ETH: ["2", "1.9", "1.805", "1.71475", "1.6290125"],
    }
    candles = []
    for market, values in opens.items():
        for day, value in zip(days, values, strict=True):
            open_ = Decimal(value)
            close = open_ * (Decimal("1.1") if market is BTC else Decimal("0.95"))
            candles.append(Candle(*market_key(market), day, open_, close, open_, close, Decimal("3")))
    with connection(settings) as conn:
        upsert_markets(conn, [BTC, ETH])
        upsert_candles(conn, [stored_form(c) for c in candles])
    refresh_aggregates(settings, None, None)
    return candles


def test_returns_tables_with_cutoffs_and_limits(api, recent):
    status, body = http_get(f"{api}/analytics/geodr", limit=-1)
    assert status == 200
    assert [(r["exchange"], r["days"]) for r in body] == [("binance", 5), ("bitfinex", 5)]
    assert abs(Decimal(body[0]["geo_daily_return"]) - Decimal("0.1")) < Decimal("1e-12")
    assert abs(Decimal(body[1]["geo_daily_return"]) + Decimal("0.05")) < Decimal("1e-12")
    assert [r["exchange"] for r in http_get(f"{api}/analytics/geodr", limit=1)[1]] == ["binance"]
    assert [r["exchange"] for r in http_get(f"{api}/analytics/geodr", upper_cutoff="0")[1]] == ["bitfinex"]
    assert http_get(f"{api}/analytics/geodr", lower_cutoff="0.2")[1] == []

    status, body = http_get(f"{api}/analytics/wr", limit=-1)
    assert status == 200 and [r["exchange"] for r in body] == ["binance", "bitfinex"]
    # last close / first open - 1 over the five days
    assert abs(Decimal(body[0]["weekly_return"]) - (Decimal("1.1") ** 5 - 1)) < Decimal("1e-12")
    assert abs(Decimal(body[1]["weekly_return"]) - (Decimal("0.95") ** 5 - 1)) < Decimal("1e-12")


def test_top_quoted_volume(api, recent):
    since = datetime.now(UTC) - timedelta(hours=24)  # the view keeps hourly buckets opening since then
    expected = {}
    for c in recent:  # each at 00:00 UTC: its own hour's bucket
        if c.time >= since:
            expected[c.exchange] = expected.get(c.exchange, Decimal(0)) + c.volume * c.close
    status, body = http_get(f"{api}/analytics/top20qvlm")
    assert status == 200
    assert {r["exchange"]: Decimal(r["quoted_vol"]) for r in body} == expected
    assert [Decimal(r["quoted_vol"]) for r in body] == sorted(expected.values(), reverse=True)


@pytest.mark.parametrize(
    "path, params, fragment",
    [
        ("geodr", dict(lower_cutoff="lots"), "lower_cutoff: send a decimal number"),
        ("wr", dict(upper_cutoff="NaN"), "upper_cutoff: send a decimal number"),
        ("wr", dict(lower_cutoff="1", upper_cutoff="0"), "send lower <= upper"),
        ("geodr", dict(limit=0), "or -1 for all"),
        ("geodr", dict(limit=-2), "greater than or equal to -1"),
        ("top20qvlm", dict(limit=21), "less than or equal to 20"),
        ("top20qvlm", dict(limit="x"), "valid integer"),
    ],
)
def test_analytics_bad_input(api, path, params, fragment):
    status, body = http_get(f"{api}/analytics/{path}", **params)
    assert 400 <= status < 500 and fragment in body["detail"], body


# ------------------------------------------------------------------------------------ health


def test_health_reports_fetchers_and_updater(api, settings, redis_server):
    status, body = http_get(f"{api}/health")
    assert status == 200, body
    assert body["database"]["state"] == "ok" and body["redis"]["state"] == "ok"
    assert {e: f["state"] for e, f in body["fetchers"].items()} == dict.fromkeys(
        ("bitfinex", "binance", "bittrex"), "absent"
    )
    client = redis_server.client()
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    client.hset("ws_health_binance", mapping={"last_message_ms": now_ms - 2000, "connections_up": 3})
    client.hset(
        "ws_updater_health", mapping={"last_flush_ms": now_ms, "backlog": 42, "rows_flushed_total": 7}
    )
    status, body = http_get(f"{api}/health")
    assert status == 200 and body["fetchers"]["binance"]["state"] == "ok"
    assert 2 <= body["fetchers"]["binance"]["last_message_age_s"] < 60
    assert body["fetchers"]["binance"]["connections_up"] == 3
    assert body["updater"]["backlog"] == 42 and body["updater"]["state"] == "ok"

    client.hset("ws_health_bitfinex", mapping={"last_message_ms": now_ms - 600_000})
    status, body = http_get(f"{api}/health")
    assert status == 503 and body["status"] == "degraded"
    assert body["fetchers"]["bitfinex"]["state"] == "stale"


def test_a_stale_updater_makes_health_503(api, settings, redis_server):
    """README: `/api/health` answers 503 when the updater is down - silent (no flush) for longer
    than WEB_HEALTH_STALE_SECONDS - even with every other part well."""
    client = redis_server.client()
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    for exchange in ("bitfinex", "binance", "bittrex"):
        client.hset(f"ws_health_{exchange}", mapping={"last_message_ms": now_ms})
    silent_ms = int(settings.web_health_stale_seconds * 1000) + 60_000
    client.hset("ws_updater_health", mapping={"last_flush_ms": now_ms - silent_ms, "backlog": 0})
    status, body = http_get(f"{api}/health")
    assert (status, body["status"], body["updater"]["state"]) == (503, "degraded", "stale"), body
    assert {f["state"] for f in body["fetchers"].values()} == {"ok"}

    client.hset("ws_updater_health", "last_flush_ms", int(datetime.now(UTC).timestamp() * 1000))
    status, body = http_get(f"{api}/health")
    assert (status, body["status"], body["updater"]["state"]) == (200, "ok", "ok"), body


def test_starts_with_both_stores_down_answers_503_and_recovers(settings, postgres_server, template_database):
    redis_port = free_port()
    later_db = f"cfr_later_{free_port()}"
    down = settings.model_copy(update={"redis_port": redis_port, "postgres_db": later_db})
    with running_web(down) as base:
        status, body = http_get(f"{base}/api/health")
        assert status == 503
        assert body["database"]["state"] == "down" and later_db in body["database"]["error"]
        assert body["redis"]["state"] == "down"
        status, body = http_get(
            f"{base}/api/ohlcvs", exchange="binance", base_id="BTC", quote_id="USDT", interval="1m"
        )
        assert status == 503 and "unavailable" in body["detail"]

        redis = RedisServer(port=redis_port).start()
        admin = postgres_server.connect("postgres")
        admin.autocommit = True
        try:
            wait_for(lambda: http_get(f"{base}/api/health")[1]["redis"]["state"] == "ok", 30, "Redis is back")
            status, body = http_get(
                f"{base}/api/ohlcvs", exchange="binance", base_id="BTC", quote_id="USDT", interval="1m"
            )
            assert (status, body["detail"].split(":")[0]) == (503, "database unavailable"), body
            assert later_db in body["detail"]
            with admin.cursor() as cur:
                cur.execute(f"CREATE DATABASE {later_db} TEMPLATE {template_database}")
            wait_for(lambda: http_get(f"{base}/api/health")[0] == 200, 30, "health recovers")
            status, body = http_get(
                f"{base}/api/ohlcvs", exchange="binance", base_id="BTC", quote_id="USDT", interval="1m"
            )
            assert status == 404, "a working database now answers: the market is unknown there"
        finally:
            redis.stop()
            with admin.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS {later_db} WITH (FORCE)")
            admin.close()


def test_openapi_and_docs_are_served(api):
    status, body = http_get(f"{api}/openapi.json")
    assert status == 200
    assert {"/api/ohlcvs", "/api/symbol-exchange", "/api/health", "/api/analytics/geodr"} <= set(
        body["paths"]
    )
    params = {p["name"] for p in body["paths"]["/api/ohlcvs"]["get"]["parameters"]}
    assert params == {
        "exchange",
        "base_id",
        "quote_id",
        "interval",
        "start",
        "end",
        "limit",
        "empty_ts",
        "results_mls",
        "format",
    }
