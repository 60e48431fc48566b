"""The schema and the one bulk-upsert path, against a real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from common.candle import Candle, Market
from common.db import (
    FetchErrorRecord,
    UnknownMarketError,
    load_markets,
    record_fetch_error,
    refresh_aggregates,
    upsert_candles,
    upsert_markets,
)
from common.schema import apply_schema
from common.timeutil import datetime_to_ms, ms_to_datetime

pytestmark = pytest.mark.integration

T0 = datetime(2021, 1, 1, tzinfo=UTC)
BTC_USD = Market("bitfinex", "BTC", "USD", "tBTCUSD")


def candle(minute: int, open_: str, high: str, low: str, close: str, volume: str, market=BTC_USD) -> Candle:
    return Candle(
        market.exchange,
        market.base_id,
        market.quote_id,
        datetime_to_ms(T0 + timedelta(minutes=minute)),
        open_,
        high,
        low,
        close,
        volume,
    )


def fetch_ohlcvs(conn):
    with conn.cursor() as cur:
        cur.execute(
            "SELECT time, open::text, high::text, low::text, close::text, volume::text FROM ohlcvs "
            "ORDER BY exchange, base_id, quote_id, time"
        )
        return cur.fetchall()


def schema_snapshot(conn):
    with conn.cursor() as cur:
        cur.execute(
            "SELECT c.relname, c.relkind, pg_get_viewdef(c.oid) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' ORDER BY 1"
        )
        relations = cur.fetchall()
        cur.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'public' ORDER BY 1, 2"
        )
        return relations, cur.fetchall()


def test_schema_has_public_relations(db_conn):
    relations, columns = schema_snapshot(db_conn)
    names = {name for name, _, _ in relations}
    expected = {
        "ohlcvs",
        "symbol_exchange",
        "ohlcvs_errors",
        "ohlcvs_summary_5min",
        "ohlcvs_summary_15min",
        "ohlcvs_summary_30min",
        "ohlcvs_summary_1hour",
        "ohlcvs_summary_6hour",
        "ohlcvs_summary_12hour",
        "ohlcvs_summary_daily",
        "ohlcvs_summary_7day",
        "geo_daily_return",
        "weekly_return",
        "top_20_quoted_vol",
        "common_basequote_30",
    }
    assert expected <= names
    ohlcvs_columns = {(c, t) for table, c, t in columns if table == "ohlcvs"}
    assert ohlcvs_columns == {
        ("time", "timestamp with time zone"),
        ("exchange", "text"),
        ("base_id", "text"),
        ("quote_id", "text"),
        ("open", "numeric"),
        ("high", "numeric"),
        ("low", "numeric"),
        ("close", "numeric"),
        ("volume", "numeric"),
    }
    with db_conn.cursor() as cur:
        cur.execute(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
            "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = 'ohlcvs'::regclass AND i.indisprimary "
            "ORDER BY array_position(i.indkey, a.attnum)"
        )
        assert [row[0] for row in cur.fetchall()] == ["exchange", "base_id", "quote_id", "time"]


def test_schema_init_is_idempotent(settings, db_conn):
    before = schema_snapshot(db_conn)
    upsert_markets(db_conn, [BTC_USD])
    upsert_candles(db_conn, [candle(0, "1", "2", "0.5", "1.5", "10")])
    db_conn.commit()
    apply_schema(settings)
    apply_schema(settings)
    assert schema_snapshot(db_conn) == before
    assert len(fetch_ohlcvs(db_conn)) == 1


def test_exact_decimals_round_trip(db_conn):
    upsert_markets(db_conn, [BTC_USD])
    upsert_candles(
        db_conn,
        [candle(0, "0.00000001234", "123456789.12345678", "1e-8", "37050.01000000", "12.34567000")],
    )
    db_conn.commit()
    ((_, open_, high, low, close, volume),) = fetch_ohlcvs(db_conn)
    assert (open_, high, low, close, volume) == (
        "0.00000001234",
        "123456789.12345678",
        "0.00000001",
        "37050.01000000",
        "12.34567000",
    )
    with db_conn.cursor() as cur:
        cur.execute("SELECT open, high, low FROM ohlcvs")
        assert cur.fetchone() == (Decimal("0.00000001234"), Decimal("123456789.12345678"), Decimal("1e-8"))


def test_upsert_is_idempotent_and_later_values_win(db_conn):
    upsert_markets(db_conn, [BTC_USD])
    first = [candle(m, "1", "2", "0.5", "1.5", "10") for m in range(3)]
    assert upsert_candles(db_conn, first) == 3
    assert upsert_candles(db_conn, first) == 0
    corrected = candle(1, "1", "2.5", "0.5", "2", "11.5")
    assert upsert_candles(db_conn, [corrected]) == 1
    db_conn.commit()
    rows = fetch_ohlcvs(db_conn)
    assert len(rows) == 3
    assert rows[1][1:] == ("1", "2.5", "0.5", "2", "11.5")


def test_duplicate_keys_in_one_batch_keep_the_last(db_conn):
    upsert_markets(db_conn, [BTC_USD])
    upsert_candles(db_conn, [candle(0, "1", "1", "1", "1", "1"), candle(0, "2", "2", "2", "2", "2")])
    db_conn.commit()
    assert fetch_ohlcvs(db_conn)[0][1:] == ("2", "2", "2", "2", "2")


def test_candles_for_unknown_market_are_rejected(db_conn):
    upsert_markets(db_conn, [BTC_USD])
    db_conn.commit()
    unknown = Market("binance", "NOPE", "USDT", "NOPEUSDT")
    with pytest.raises(UnknownMarketError) as raised:
        upsert_candles(
            db_conn, [candle(0, "1", "1", "1", "1", "1"), candle(0, "1", "1", "1", "1", "1", unknown)]
        )
    assert raised.value.markets == [("binance", "NOPE", "USDT")]
    assert "binance:NOPE/USDT" in str(raised.value)
    assert fetch_ohlcvs(db_conn) == []


def test_markets_no_longer_listed_are_marked_not_trading(db_conn):
    eth = Market("bitfinex", "ETH", "USD", "tETHUSD")
    upsert_markets(db_conn, [BTC_USD, eth], exchange="bitfinex")
    upsert_markets(db_conn, [BTC_USD], exchange="bitfinex")
    db_conn.commit()
    markets = {m.symbol: m.is_trading for m in load_markets(db_conn, "bitfinex")}
    assert markets == {"tBTCUSD": True, "tETHUSD": False}
    assert [m.symbol for m in load_markets(db_conn, "bitfinex", trading_only=True)] == ["tBTCUSD"]


def test_fetch_errors_are_recorded(db_conn):
    record_fetch_error(
        db_conn,
        FetchErrorRecord(
            "binance",
            "BTCUSDT",
            T0,
            T0 + timedelta(hours=1),
            "1m",
            "hist",
            503,
            "ServerError",
            "Service Unavailable",
        ),
    )
    db_conn.commit()
    with db_conn.cursor() as cur:
        cur.execute("SELECT exchange, symbol, resp_status_code, exception_class FROM ohlcvs_errors")
        assert cur.fetchall() == [("binance", "BTCUSDT", 503, "ServerError")]


def test_aggregates_refresh_over_a_range(settings, db_conn):
    upsert_markets(db_conn, [BTC_USD])
    # 20 minutes starting 23:50 on Jan 3 2021 (a Sunday) so buckets cross a day and a week boundary.
    start = datetime(2021, 1, 3, 23, 50, tzinfo=UTC)
    rows = []
    for i in range(20):
        price = Decimal(100 + i)
        rows.append(
            Candle(
                "bitfinex",
                "BTC",
                "USD",
                datetime_to_ms(start + timedelta(minutes=i)),
                str(price),
                str(price + Decimal("0.5")),
                str(price - Decimal("0.25")),
                str(price + Decimal("0.1")),
                str(Decimal("0.001") * (i + 1)),
            )
        )
    upsert_candles(db_conn, rows)
    db_conn.commit()
    refresh_aggregates(settings, start, start + timedelta(minutes=20))

    def level(name):
        with db_conn.cursor() as cur:
            cur.execute(f"SELECT bucket, open, high, low, close, volume FROM {name} ORDER BY bucket")
            return cur.fetchall()

    def expected(width: timedelta, origin=datetime(2000, 1, 3, tzinfo=UTC)):
        buckets = {}
        for c in rows:
            b = origin + ((ms_to_datetime(c.time) - origin) // width) * width
            buckets.setdefault(b, []).append(c)
        return [
            (
                b,
                Decimal(cs[0].open),
                max(Decimal(c.high) for c in cs),
                min(Decimal(c.low) for c in cs),
                Decimal(cs[-1].close),
                sum(Decimal(c.volume) for c in cs),
            )
            for b, cs in sorted(buckets.items())
        ]

    assert level("ohlcvs_summary_5min") == expected(timedelta(minutes=5))
    assert level("ohlcvs_summary_15min") == expected(timedelta(minutes=15))
    assert level("ohlcvs_summary_1hour") == expected(timedelta(hours=1))
    assert level("ohlcvs_summary_daily") == expected(timedelta(days=1))
    weekly = level("ohlcvs_summary_7day")
    assert weekly == expected(timedelta(days=7))
    assert [b.weekday() for b, *_ in weekly] == [0, 0]  # weeks start on Monday, like time_bucket


def test_markets_count_every_row_changed(db_conn):
    """execute_values pages 100 rows at a time; the count must cover every page."""
    markets = [Market("binance", f"C{i:03d}", "USDT", f"C{i:03d}USDT") for i in range(293)]
    assert upsert_markets(db_conn, markets) == 293
    assert upsert_markets(db_conn, markets) == 0
    changed = [Market(m.exchange, m.base_id, m.quote_id, m.symbol, False) for m in markets[:150]]
    assert upsert_markets(db_conn, changed) == 150


@pytest.mark.parametrize(
    "bad",
    [
        {"volume": "NaN"},
        {"high": "Infinity"},
        {"low": 1.5},
        {"close": "1\t2"},
        {"open": "1\n"},
        {"open": ""},
        {"time": datetime(2021, 1, 1, tzinfo=UTC)},
    ],
)
def test_values_that_are_not_exact_decimal_text_are_rejected(db_conn, bad):
    upsert_markets(db_conn, [BTC_USD])
    good = candle(0, "1", "2", "0.5", "1.5", "10")
    values = {name: getattr(good, name) for name in ("time", "open", "high", "low", "close", "volume")}
    values.update(bad)
    with pytest.raises(ValueError):
        upsert_candles(db_conn, [Candle("bitfinex", "BTC", "USD", **values)])
