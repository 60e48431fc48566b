"""The schema and the one bulk-upsert path, against a real PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg2
import pytest

import common.schema
from common.candle import Candle, CandleBlock, Market
from common.db import (
    AGGREGATE_LEVELS,
    DatabaseError,
    FetchErrorRecord,
    UnknownMarketError,
    closed_until,
    connect,
    load_markets,
    record_fetch_error,
    refresh_aggregates,
    upsert_candle_blocks,
    upsert_candles,
    upsert_markets,
)
from common.levels import SUMMARY_LEVELS, SummaryLevel
from common.schema import INIT_SQL_DIR, apply_schema, ensure_database, init_database, probe_timescaledb
from common.settings import PROJECT_ROOT
from common.timeutil import MINUTE_MS, datetime_to_ms, ms_to_datetime
from scripts.local.servers import postgres_bindir
from tests.conftest import service_env

pytestmark = pytest.mark.integration

T0 = datetime(2021, 1, 1, tzinfo=UTC)
BTC_USD = Market("bitfinex", "BTC", "USD", "tBTCUSD")
REFRESHERS = 4


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


@pytest.fixture
def fresh(settings, postgres_server):
    """Settings for a database that does not exist yet (dropped after the test, if made)."""
    fresh = settings.model_copy(update={"postgres_db": f"{settings.postgres_db}_fresh"})
    yield fresh
    postgres_server.drop_database(fresh.postgres_db)


@pytest.fixture
def fatal_schema(tmp_path):
    """Init files whose second one makes the server end the session, as a FATAL error (e.g.
    TimescaleDB not preloaded) does."""
    (tmp_path / "001_tables.sql").write_text((INIT_SQL_DIR / "001_tables.sql").read_text())
    (tmp_path / "002_fatal.sql").write_text("SELECT pg_terminate_backend(pg_backend_pid());\n")
    return tmp_path


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


# --- Aggregates: every level, every bucket (partial edges included), through the public relations ---

ORIGIN = datetime(2000, 1, 3, tzinfo=UTC)  # a Monday: weeks start on Mondays, as time_bucket's do
ETH_BTC = Market("binance", "ETH", "BTC", "ETHBTC")


def ohlcv_rows(conn):
    with conn.cursor() as cur:
        cur.execute("SELECT exchange, base_id, quote_id, time, open, high, low, close, volume FROM ohlcvs")
        return cur.fetchall()


def expected_buckets(rows, width: timedelta) -> dict:
    """Each level recomputed in Python from the 1-minute rows: first open, max high, min low, last
    close, summed volume per (market, bucket)."""
    groups: dict = {}
    for exchange, base, quote, time, open_, high, low, close, volume in sorted(rows, key=lambda r: r[3]):
        bucket = ORIGIN + ((time - ORIGIN) // width) * width
        key = (exchange, base, quote, bucket)
        if key not in groups:
            groups[key] = [open_, high, low, close, volume]
        else:
            g = groups[key]
            g[1], g[2], g[3], g[4] = max(g[1], high), min(g[2], low), close, g[4] + volume
    return {key: tuple(values) for key, values in groups.items()}


def level_contents(conn, name: str) -> dict:
    with conn.cursor() as cur:
        cur.execute(f"SELECT exchange, base_id, quote_id, bucket, open, high, low, close, volume FROM {name}")
        return {tuple(row[:4]): tuple(row[4:]) for row in cur.fetchall()}


def assert_every_level_matches_ohlcvs(conn) -> None:
    conn.rollback()  # a fresh snapshot
    rows = ohlcv_rows(conn)
    assert rows, "no rows to aggregate"
    for name, width in AGGREGATE_LEVELS.items():
        expected, actual = expected_buckets(rows, width), level_contents(conn, name)
        wrong = sorted(k for k in expected.keys() | actual.keys() if expected.get(k) != actual.get(k))
        assert not wrong, (
            f"{name}: {len(wrong)} of {len(expected)} buckets differ from ohlcvs, e.g. {wrong[0]}: "
            f"expected {expected.get(wrong[0])}, shown {actual.get(wrong[0])}"
        )
    conn.rollback()


def minute_candles(
    market: Market, start: datetime, minutes: int, seed: int, step_minutes: int = 1
) -> list[Candle]:
    """A random-walk series with exact decimal texts (cents; volumes with 8 decimals)."""
    out, price = [], 20_000_00 + seed
    for i in range(minutes):
        step = ((i * 7919 + seed * 104_729) % 2001) - 1000
        open_, close = price, max(100, price + step)
        high = max(open_, close) + (i * 31 % 250)
        low = max(1, min(open_, close) - (i * 17 % 250))
        volume = Decimal((i * 1_000_003 + seed) % 9_000_000_000) / Decimal(10**8)
        out.append(
            Candle(
                market.exchange,
                market.base_id,
                market.quote_id,
                datetime_to_ms(start + timedelta(minutes=i * step_minutes)),
                str(Decimal(open_) / 100),
                str(Decimal(high) / 100),
                str(Decimal(low) / 100),
                str(Decimal(close) / 100),
                str(volume),
            )
        )
        price = close
    return out


def test_backfill_over_several_weeks_keeps_every_level_equal_to_ohlcvs(settings, db_conn):
    # Thursday 13:17 to a Tuesday 09:41 three weeks later: partial buckets at both ends of every
    # level and three Monday boundaries in between.
    start, end = datetime(2021, 3, 4, 13, 17, tzinfo=UTC), datetime(2021, 3, 23, 9, 41, tzinfo=UTC)
    minutes = int((end - start) / timedelta(minutes=1))
    upsert_markets(db_conn, [BTC_USD, ETH_BTC])
    upsert_candles(db_conn, minute_candles(BTC_USD, start, minutes, seed=1))
    upsert_candles(db_conn, minute_candles(ETH_BTC, start + timedelta(hours=5), minutes - 300, seed=2))
    db_conn.commit()
    refresh_aggregates(settings, start, end, now=end + timedelta(hours=1))
    assert_every_level_matches_ohlcvs(db_conn)
    with db_conn.cursor() as cur:
        cur.execute("SELECT bucket FROM ohlcvs_summary_7day WHERE exchange = 'bitfinex' ORDER BY bucket")
        weeks = [row[0] for row in cur.fetchall()]
    assert [w.date().isoformat() for w in weeks] == ["2021-03-01", "2021-03-08", "2021-03-15", "2021-03-22"]


def test_refreshes_at_the_same_time_all_succeed_and_every_level_equals_ohlcvs(settings, db_conn):
    """init, a backfill's end and (on TimescaleDB) the refresh policy's own job can refresh the same
    levels at once: none of them may fail for it, and the levels end equal to ohlcvs."""
    start, end = datetime(2021, 3, 4, 13, 17, tzinfo=UTC), datetime(2021, 3, 11, 9, 41, tzinfo=UTC)
    minutes = int((end - start) / timedelta(minutes=1))
    upsert_markets(db_conn, [BTC_USD, ETH_BTC])
    upsert_candles(db_conn, minute_candles(BTC_USD, start, minutes, seed=3))
    upsert_candles(db_conn, minute_candles(ETH_BTC, start, minutes, seed=4))
    db_conn.commit()
    ready = threading.Barrier(REFRESHERS)
    errors: list[BaseException] = []

    def refresh() -> None:
        ready.wait()
        try:
            refresh_aggregates(settings, start, end, now=end + timedelta(hours=1))
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=refresh) for _ in range(REFRESHERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert_every_level_matches_ohlcvs(db_conn)


def test_rows_written_into_open_buckets_show_after_the_next_refresh(settings, db_conn):
    # A backfill up to "now" (Wednesday 10:30), then live bars and a user's own INSERT inside the
    # buckets that were open then, then a refresh of an unrelated older range.
    now = datetime(2021, 3, 24, 10, 30, 40, tzinfo=UTC)
    upsert_markets(db_conn, [BTC_USD, ETH_BTC])
    backfill_start = datetime(2021, 3, 20, 22, 0, tzinfo=UTC)
    upsert_candles(
        db_conn, minute_candles(BTC_USD, backfill_start, int((now - backfill_start).total_seconds() // 60), 3)
    )
    db_conn.commit()
    refresh_aggregates(settings, backfill_start, now.replace(second=0), now=now)

    live_start = now.replace(second=0)
    upsert_candles(db_conn, minute_candles(BTC_USD, live_start, 90, seed=4))  # overwrites 10:30, goes on
    upsert_candles(db_conn, minute_candles(ETH_BTC, live_start + timedelta(minutes=5), 30, seed=5))
    with db_conn.cursor() as cur:
        cur.execute(
            "INSERT INTO ohlcvs (time, exchange, base_id, quote_id, open, high, low, close, volume) "
            "VALUES ('2021-03-24 12:15+00', 'bitfinex', 'BTC', 'USD', 1, 99999, 0.5, 2, 1000)"
        )
    db_conn.commit()
    later = now + timedelta(hours=2)
    older = datetime(2021, 1, 4, tzinfo=UTC)
    upsert_candles(db_conn, minute_candles(BTC_USD, older, 60, seed=6))
    db_conn.commit()
    refresh_aggregates(settings, older, older + timedelta(hours=1), now=later)
    assert_every_level_matches_ohlcvs(db_conn)
    with db_conn.cursor() as cur:
        cur.execute(
            "SELECT high FROM ohlcvs_summary_daily WHERE exchange = 'bitfinex' AND bucket = '2021-03-24+00'"
        )
        assert cur.fetchone()[0] == Decimal("99999")


def test_a_late_minute_in_each_levels_newest_closed_bucket_shows_after_its_refresh(settings, db_conn):
    """A repair rewrites the last minute of each level's newest closed bucket, right below the buckets
    still open; the refresh of its range rebuilds those buckets, which no open-bucket pass covers."""
    now = datetime(2021, 3, 24, 10, 30, 40, tzinfo=UTC)  # a Wednesday
    start = (now - timedelta(days=9)).replace(second=0)
    candles = minute_candles(BTC_USD, start, int((now - start).total_seconds() // 60), seed=8)
    upsert_markets(db_conn, [BTC_USD])
    upsert_candles(db_conn, candles)
    db_conn.commit()
    refresh_aggregates(settings, start, now.replace(second=0), now=now)

    late = []
    for width in AGGREGATE_LEVELS.values():
        index = (closed_until(width, now) - timedelta(minutes=1) - start) // timedelta(minutes=1)
        late.append(replace(candles[index], high=str(Decimal(candles[index].high) + 1000), volume="1234.5"))
    upsert_candles(db_conn, late)
    db_conn.commit()
    first, last = min(c.time for c in late), max(c.time for c in late)
    refresh_aggregates(settings, ms_to_datetime(first), ms_to_datetime(last + MINUTE_MS), now=now)
    assert_every_level_matches_ohlcvs(db_conn)


def test_init_fills_every_level_from_rows_already_in_ohlcvs(fresh, timescaledb):
    # Rows written before the summaries existed: only the core tables, then data, then init.
    ensure_database(fresh)
    conn = connect(fresh)
    with conn.cursor() as cur:
        cur.execute((INIT_SQL_DIR / "001_tables.sql").read_text())
    start = datetime(2021, 2, 25, 18, 3, tzinfo=UTC)
    upsert_markets(conn, [BTC_USD, ETH_BTC])
    upsert_candles(conn, minute_candles(BTC_USD, start, 9 * 1440 + 77, seed=7))
    upsert_candles(conn, minute_candles(ETH_BTC, start, 2 * 1440, seed=8))
    conn.commit()
    result = init_database(fresh, plain=not timescaledb)
    assert (result.created, result.timescale) == (False, timescaledb)
    assert_every_level_matches_ohlcvs(conn)
    # A later refresh of a later day leaves the earlier rows in every level.
    later = datetime(2021, 3, 10, tzinfo=UTC)
    upsert_candles(conn, minute_candles(BTC_USD, later, 1440, seed=9))
    conn.commit()
    refresh_aggregates(fresh, later, later + timedelta(days=1))
    assert_every_level_matches_ohlcvs(conn)
    conn.close()


def test_a_level_added_to_the_registry_is_made_and_filled_by_init(fresh, timescaledb, monkeypatch):
    """docs/architecture.md, "Adding a summary level": one `SummaryLevel` line, then init."""
    init_database(fresh, plain=not timescaledb)
    conn = connect(fresh)
    start = datetime(2021, 2, 25, 18, 3, tzinfo=UTC)
    upsert_markets(conn, [BTC_USD])
    upsert_candles(conn, minute_candles(BTC_USD, start, 3 * 1440 + 7, seed=11))
    conn.commit()
    refresh_aggregates(fresh, None, None)
    two = SummaryLevel("ohlcvs_summary_2min", timedelta(minutes=2), "2m", "ohlcvs", "ohlcvs", 2 * 60_000)
    monkeypatch.setattr(common.schema, "SUMMARY_LEVELS", (two, *SUMMARY_LEVELS))
    init_database(fresh, plain=not timescaledb)
    conn.rollback()
    expected, actual = expected_buckets(ohlcv_rows(conn), two.width), level_contents(conn, two.relation)
    assert actual and actual == expected
    with conn.cursor() as cur:
        cur.execute("SELECT name FROM ohlcv_aggregate_levels ORDER BY ordinal")
        assert [row[0] for row in cur.fetchall()] == [two.relation, *AGGREGATE_LEVELS]
    assert_every_level_matches_ohlcvs(conn)
    conn.close()


def test_a_lost_connection_during_init_is_one_line_and_leaves_nothing(fresh, fatal_schema, postgres_server):
    with pytest.raises(DatabaseError) as raised:
        init_database(fresh, plain=True, directory=fatal_schema)
    message = str(raised.value)
    assert "closed the connection" in message and "002_fatal.sql" in message, message
    assert "shared_preload_libraries" in message and "\n" not in message
    admin = postgres_server.connect("postgres")
    with admin.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (fresh.postgres_db,))
        assert cur.fetchone()[0] == 0, "the database init created was left behind"
    admin.close()


def test_a_lost_connection_changes_nothing_in_an_existing_database(fresh, fatal_schema):
    ensure_database(fresh)
    with pytest.raises(DatabaseError, match="nothing was changed"):
        apply_schema(fresh, plain=True, directory=fatal_schema)
    conn = connect(fresh)
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('ohlcvs') IS NULL")
        assert cur.fetchone()[0]
    conn.close()


def test_cloning_a_template_ends_sessions_still_attached_to_it(postgres_server, database):
    # TimescaleDB's job scheduler keeps such a session on every database with the extension.
    holder = postgres_server.connect(database)
    clone = f"{database}_clone"
    try:
        postgres_server.clone_database(clone, database)
        conn = postgres_server.connect(clone)
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('ohlcvs') IS NOT NULL")
            assert cur.fetchone()[0]
        conn.close()
        with pytest.raises(psycopg2.OperationalError):
            holder.cursor().execute("SELECT 1")
    finally:
        holder.close()
        postgres_server.drop_database(clone)


def test_populate_agg_script_fills_every_level(settings, db_conn, postgres_server):
    start = datetime(2021, 4, 1, 7, 13, tzinfo=UTC)  # a Thursday; 16 days
    upsert_markets(db_conn, [BTC_USD, ETH_BTC])
    upsert_candles(db_conn, minute_candles(BTC_USD, start, 16 * 1440 + 101, seed=11))
    upsert_candles(db_conn, minute_candles(ETH_BTC, start + timedelta(days=3), 4 * 1440, seed=12))
    db_conn.commit()
    result = subprocess.run(
        [
            str(postgres_bindir() / "psql"),
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-p",
            str(postgres_server.port),
            "-U",
            postgres_server.user,
            "-d",
            settings.postgres_db,
            "-f",
            str(PROJECT_ROOT / "scripts" / "database" / "once" / "populate_agg.sql"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert_every_level_matches_ohlcvs(db_conn)


# Each analytics view recomputed straight from ohlcvs (not from the summaries), in the same
# statement as the view so both see the same now().
DAILY_FROM_OHLCVS = """
WITH ranked AS (
    SELECT exchange, base_id, quote_id, date_trunc('day', time AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS day,
           first_value(open) OVER w AS day_open, last_value(close) OVER w AS day_close
    FROM ohlcvs
    WINDOW w AS (PARTITION BY exchange, base_id, quote_id, date_trunc('day', time AT TIME ZONE 'UTC')
                 ORDER BY time ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
), days AS (SELECT DISTINCT * FROM ranked)
"""

VIEW_CHECKS = {
    "geo_daily_return": (
        "SELECT exchange, base_id, quote_id, days, geo_daily_return FROM geo_daily_return ORDER BY 1, 2, 3",
        DAILY_FROM_OHLCVS
        + """
        SELECT exchange, base_id, quote_id, count(*), exp(sum(ln(day_close / day_open)) / count(*)) - 1
        FROM days WHERE day >= now() - INTERVAL '30 days' AND day_open > 0 AND day_close > 0
        GROUP BY 1, 2, 3 ORDER BY 1, 2, 3""",
    ),
    "weekly_return": (
        "SELECT exchange, base_id, quote_id, weekly_return FROM weekly_return ORDER BY 1, 2, 3",
        DAILY_FROM_OHLCVS
        + """
        , week AS (SELECT * FROM days WHERE day >= now() - INTERVAL '7 days')
        SELECT f.exchange, f.base_id, f.quote_id, l.day_close / f.day_open - 1
        FROM (SELECT DISTINCT ON (exchange, base_id, quote_id) * FROM week
              ORDER BY exchange, base_id, quote_id, day) f
        JOIN (SELECT DISTINCT ON (exchange, base_id, quote_id) * FROM week
              ORDER BY exchange, base_id, quote_id, day DESC) l USING (exchange, base_id, quote_id)
        ORDER BY 1, 2, 3""",
    ),
    "top_20_quoted_vol": (
        "SELECT exchange, base_id, quote_id, quoted_vol FROM top_20_quoted_vol",
        """
        WITH hours AS (
            SELECT DISTINCT exchange, base_id, quote_id, date_trunc('hour', time) AS hour,
                   sum(volume) OVER w AS volume, last_value(close) OVER w AS close
            FROM ohlcvs
            WINDOW w AS (PARTITION BY exchange, base_id, quote_id, date_trunc('hour', time) ORDER BY time
                         ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
        )
        SELECT exchange, base_id, quote_id, sum(volume * close) AS q FROM hours
        WHERE hour >= now() - INTERVAL '24 hours' GROUP BY 1, 2, 3 ORDER BY q DESC LIMIT 20""",
    ),
    "common_basequote_30": (
        "SELECT base_id, quote_id, exchanges, quoted_vol_30d FROM common_basequote_30",
        """
        WITH daily AS (
            SELECT DISTINCT exchange, base_id, quote_id,
                   date_trunc('day', time AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS day,
                   sum(volume) OVER w AS volume, last_value(close) OVER w AS close
            FROM ohlcvs
            WINDOW w AS (PARTITION BY exchange, base_id, quote_id, date_trunc('day', time AT TIME ZONE 'UTC')
                         ORDER BY time ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
        ), per_market AS (
            SELECT s.exchange, s.base_id, s.quote_id,
                   (SELECT coalesce(sum(d.volume * d.close), 0) FROM daily d
                    WHERE (d.exchange, d.base_id, d.quote_id) = (s.exchange, s.base_id, s.quote_id)
                      AND d.day >= now() - INTERVAL '30 days') AS vol
            FROM symbol_exchange s WHERE s.is_trading
        )
        SELECT base_id, quote_id, count(*) AS n, sum(vol) AS v FROM per_market
        GROUP BY 1, 2 HAVING count(*) >= 2 ORDER BY n DESC, v DESC LIMIT 30""",
    ),
}


def test_analytics_views_equal_the_same_figures_computed_from_ohlcvs(settings, db_conn):
    now = datetime.now(UTC)
    start = (now - timedelta(days=33)).replace(minute=7, second=0, microsecond=0)
    count = int((now - start) / timedelta(minutes=30)) - 1
    binance = [Market("binance", f"C{i:02d}", "USDT", f"C{i:02d}USDT") for i in range(22)]
    bitfinex = [Market("bitfinex", f"C{i:02d}", "USDT", f"tC{i:02d}UST") for i in range(0, 22, 3)]
    bittrex = [
        Market("bittrex", f"C{i:02d}", "USDT", f"C{i:02d}-USDT", is_trading=i != 3) for i in range(0, 22, 3)
    ]
    upsert_markets(db_conn, binance + bitfinex + bittrex)
    for seed, market in enumerate(binance + bitfinex + bittrex, start=20):
        first = start + timedelta(minutes=seed % 7)  # some markets start later than others
        upsert_candles(db_conn, minute_candles(market, first, count, seed=seed * 37, step_minutes=30))
    db_conn.commit()
    refresh_aggregates(settings, None, None)
    for view, (shown_sql, expected_sql) in VIEW_CHECKS.items():
        with db_conn.cursor() as cur:  # one transaction: one now()
            cur.execute(shown_sql)
            shown = cur.fetchall()
            cur.execute(expected_sql)
            expected = cur.fetchall()
        db_conn.rollback()
        assert shown, f"{view} is empty"
        assert shown == expected, f"{view}: shown {shown[:3]}… expected {expected[:3]}…"
    with db_conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM top_20_quoted_vol")
        assert cur.fetchone()[0] == 20
        cur.execute("SELECT exchanges FROM common_basequote_30 WHERE base_id = 'C03'")
        assert cur.fetchone()[0] == 2  # not trading on bittrex


def test_init_plain_from_the_command_line(fresh):
    result = subprocess.run(
        [sys.executable, "-m", "scripts.database", "init", "--plain"],
        capture_output=True,
        text=True,
        env={**os.environ, **service_env(fresh)},
        cwd=PROJECT_ROOT,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("(created): plain PostgreSQL"), result.stdout
    conn = connect(fresh)
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'")
        assert cur.fetchone()[0] == 0
    conn.close()


def test_a_database_setting_keeps_init_plain(fresh, postgres_server, timescaledb):
    ensure_database(fresh)
    admin = postgres_server.connect("postgres")
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"ALTER DATABASE {fresh.postgres_db} SET coin_for_rich.use_timescaledb = off")
    admin.close()
    conn = connect(fresh)
    assert probe_timescaledb(conn).switched_off
    conn.close()
    assert init_database(fresh).timescale is False


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


def test_candle_blocks_store_like_candles_and_a_later_overlapping_block_wins(db_conn):
    """The backfill's bulk path writes what `upsert_candles` writes; when two blocks of one market
    overlap in one batch (a request taken over and fetched again), the later block's values win."""
    eth = Market("bitfinex", "ETH", "USD", "tETHUSD")
    upsert_markets(db_conn, [BTC_USD, eth])
    first = [candle(m, "1.10", "2", "0.5", "1.5", "10") for m in range(3)]
    again = [candle(m, "1.20", "2", "0.5", "1.5", "0.00000001") for m in range(2, 4)]
    other = [candle(m, "3e-8", "3e-8", "3e-8", "3e-8", "0", market=eth) for m in range(2)]

    def as_block(candles: list[Candle]) -> CandleBlock:
        c = candles[0]
        return CandleBlock.from_candles(c.exchange, c.base_id, c.quote_id, candles)

    written = upsert_candle_blocks(db_conn, [as_block(first), as_block(other), as_block(again)])
    db_conn.commit()
    stored = fetch_ohlcvs(db_conn)
    db_conn.cursor().execute("TRUNCATE ohlcvs")
    upsert_candles(db_conn, first + other + again)
    db_conn.commit()
    assert written == 6
    assert stored == fetch_ohlcvs(db_conn)
    assert [row[1] for row in stored[:4]] == ["1.10", "1.10", "1.20", "1.20"]
    assert stored[-1][1:] == ("0.00000003", "0.00000003", "0.00000003", "0.00000003", "0")


def test_new_candle_blocks_are_copied_straight_in_and_ranges_with_rows_are_left_to_the_upsert(db_conn):
    """`copy_new_candle_blocks` (whole archive files) stores exactly what the upsert stores, across
    midnight and in either market; it writes nothing when a range already holds a row."""
    from common.db import copy_new_candle_blocks

    eth = Market("bitfinex", "ETH", "USD", "tETHUSD")
    upsert_markets(db_conn, [BTC_USD, eth])
    day = 1440
    btc = [candle(m, "1.10", "2", "0.5", "1.5", "10") for m in range(day - 2, day + 2)]
    other = [candle(m, "3e-8", "3e-8", "3e-8", "3e-8", "0", market=eth) for m in range(2)]

    def as_block(candles: list[Candle]) -> CandleBlock:
        c = candles[0]
        return CandleBlock.from_candles(c.exchange, c.base_id, c.quote_id, candles)

    assert copy_new_candle_blocks(db_conn, [as_block(btc), as_block(other)]) == 6
    db_conn.commit()
    copied = fetch_ohlcvs(db_conn)
    db_conn.cursor().execute("TRUNCATE ohlcvs")
    upsert_candles(db_conn, btc + other)
    db_conn.commit()
    assert copied == fetch_ohlcvs(db_conn)
    assert [row[0] for row in copied[:4]] == [T0 + timedelta(minutes=m) for m in range(day - 2, day + 2)]

    again = [candle(m, "9", "9", "9", "9", "9") for m in range(day + 1, day + 5)]
    assert copy_new_candle_blocks(db_conn, [as_block(again)]) is None
    assert copy_new_candle_blocks(db_conn, [as_block(btc[:1]), as_block(btc[1:])]) is None
    db_conn.commit()
    assert fetch_ohlcvs(db_conn) == copied
