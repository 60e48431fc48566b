"""History in TimescaleDB's columnstore: every write path stays exact over compressed chunks, and
every read answers the same before and after compression.

The same tests run on both database paths: on plain PostgreSQL there is nothing to compress, so
they check the same answers without it; with CFR_TEST_TIMESCALEDB=1 the compression policies are
run (`CALL run_job`: this build's background workers cannot) and the chunks checked compressed.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from common.candle import MarketKey
from common.db import (
    LATE_CHANGE_REASON,
    connect,
    insert_missing_candles,
    refresh_aggregates,
    upsert_candles,
    upsert_markets,
)
from common.schema import init_database
from common.timeutil import datetime_to_ms
from tests.integration.test_database import (
    BTC_USD,
    ETH_BTC,
    assert_every_level_matches_ohlcvs,
    minute_candles,
)
from web.reads import INTERVALS, BarQuery, read_bars

pytestmark = pytest.mark.integration

START = datetime(2021, 3, 1, tzinfo=UTC)  # a Monday: weeks and chunks both start here or before
MINUTES = 3 * 7 * 1440  # three weeks: several 7-day chunks


def compress_history(conn, timescaledb: bool) -> None:
    """Run every compression policy once (TimescaleDB) and check that it compressed ohlcvs."""
    conn.commit()
    if not timescaledb:
        return
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT job_id FROM timescaledb_information.jobs WHERE proc_name = 'policy_compression'"
            )
            jobs = [row[0] for row in cur.fetchall()]
            assert len(jobs) == 2, "one policy for ohlcvs, one for the hourly level"
            cur.execute(
                "SELECT job_id FROM timescaledb_information.job_stats "
                "WHERE job_id = ANY(%s) AND last_run_started_at IS NOT NULL",
                (jobs,),
            )
            assert cur.fetchall() == [], "no scheduler may run a policy beside this test's run"
            for job in jobs:
                cur.execute("CALL run_job(%s)", (job,))
            cur.execute(
                "SELECT hypertable_name, bool_and(is_compressed) FROM timescaledb_information.chunks "
                "GROUP BY hypertable_name"
            )
            compressed = dict(cur.fetchall())
    finally:
        conn.autocommit = False
    assert compressed.pop("ohlcvs") is True
    assert compressed and all(compressed.values()), compressed


def stored_text(conn) -> list[tuple]:
    """Every row of ohlcvs as psql shows it (values as text)."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT exchange, base_id, quote_id, time, open::text, high::text, low::text, close::text, "
            "volume::text FROM ohlcvs ORDER BY exchange, base_id, quote_id, time"
        )
        rows = cur.fetchall()
    conn.rollback()
    return rows


def api_bars(conn) -> dict[str, list]:
    """What GET /api/ohlcvs reads for the whole history at every interval, both markets."""
    answers = {}
    for market in (BTC_USD, ETH_BTC):
        key = MarketKey(market.exchange, market.base_id, market.quote_id)
        for name, interval in INTERVALS.items():
            query = BarQuery(key, interval, None, None, 100_000)
            answers[f"{market.symbol} {name}"] = read_bars(conn, query)
    conn.rollback()
    return answers


@pytest.fixture
def history(settings, db_conn):
    """Three weeks of two markets' minutes, summaries refreshed; the candles written."""
    upsert_markets(db_conn, [BTC_USD, ETH_BTC])
    candles = minute_candles(BTC_USD, START, MINUTES, seed=1) + minute_candles(
        ETH_BTC, START, MINUTES, seed=2
    )
    upsert_candles(db_conn, candles)
    db_conn.commit()
    refresh_aggregates(settings, None, None)
    return candles


def test_reads_answer_the_same_before_and_after_compression(history, db_conn, timescaledb):
    before_rows, before_api = stored_text(db_conn), api_bars(db_conn)
    assert len(before_rows) == 2 * MINUTES
    compress_history(db_conn, timescaledb)
    assert stored_text(db_conn) == before_rows
    assert api_bars(db_conn) == before_api
    assert_every_level_matches_ohlcvs(db_conn)


def test_rest_overwrites_compressed_minutes_exactly(settings, history, db_conn, timescaledb):
    compress_history(db_conn, timescaledb)
    changed = [
        replace(c, open=c.open + "0", high=str(Decimal(c.high) + Decimal("7.12345678")), volume="0.00000001")
        for c in history[100:5000:13]
    ]
    assert upsert_candles(db_conn, changed) == len(changed)
    db_conn.commit()
    assert upsert_candles(db_conn, changed) == 0  # the same values again change nothing
    db_conn.commit()
    expected = {(c.exchange, c.base_id, c.quote_id, c.time): c for c in history}
    expected.update({(c.exchange, c.base_id, c.quote_id, c.time): c for c in changed})
    rows = stored_text(db_conn)
    assert len(rows) == len(expected)
    for exchange, base, quote, time, *values in rows:
        c = expected[(exchange, base, quote, datetime_to_ms(time))]
        assert list(map(Decimal, values)) == list(map(Decimal, (c.open, c.high, c.low, c.close, c.volume)))
        assert values[0] == c.open  # the exchange's text, trailing zero included
    refresh_aggregates(settings, START, START + timedelta(minutes=MINUTES))
    assert_every_level_matches_ohlcvs(db_conn)


def test_live_bars_fill_but_never_overwrite_compressed_minutes(history, db_conn, timescaledb, caplog):
    with db_conn.cursor() as cur:
        cur.execute("DELETE FROM ohlcvs WHERE time = %s", (START + timedelta(minutes=60),))
    compress_history(db_conn, timescaledb)
    before = stored_text(db_conn)
    stale = replace(history[30], close="1.5", volume="99")
    missing = history[60]
    assert insert_missing_candles(db_conn, [stale, missing]) == 1
    db_conn.commit()
    after = stored_text(db_conn)
    assert len(after) == len(before) + 1
    assert set(before) <= set(after)
    with db_conn.cursor() as cur:
        cur.execute("SELECT start_time, reason FROM ohlcvs_outages")
        assert cur.fetchall() == [(START + timedelta(minutes=30), LATE_CHANGE_REASON)]
    late = (START + timedelta(minutes=30)).isoformat()
    assert [r.getMessage() for r in caplog.records if r.name == "common.db"] == [
        f"{stale.exchange}: 1 stored minutes ({late} .. {late}) changed by a later live bar: "
        "outages for the repair"
    ]


def test_psql_updates_and_deletes_work_on_compressed_minutes(settings, history, db_conn, timescaledb):
    compress_history(db_conn, timescaledb)
    with db_conn.cursor() as cur:
        cur.execute(
            "UPDATE ohlcvs SET volume = 12.340000001 WHERE exchange = 'binance' AND time = %s",
            (START + timedelta(days=2),),
        )
        assert cur.rowcount == 1
        cur.execute(
            "DELETE FROM ohlcvs WHERE exchange = 'bitfinex' AND time < %s", (START + timedelta(days=1),)
        )
        assert cur.rowcount == 1440
    db_conn.commit()
    with db_conn.cursor() as cur:
        cur.execute(
            "SELECT volume::text FROM ohlcvs WHERE exchange = 'binance' AND time = %s",
            (START + timedelta(days=2),),
        )
        assert cur.fetchone() == ("12.340000001",)
    db_conn.rollback()
    refresh_aggregates(settings, START, START + timedelta(days=3))
    assert_every_level_matches_ohlcvs(db_conn)


def test_a_compressed_batch_holds_a_markets_whole_chunk(settings, history, db_conn, timescaledb):
    """`init` sets the database's batch size to a market's 7-day chunk (10,080 minutes: 9.8 against
    11.1 B a candle with TimescaleDB's 1,000) and lifts the per-transaction decompression cap that
    such batches would hit; a session begun afterwards, as a policy's background job is, compresses
    each market's part of each chunk into one batch, and the values read back the same."""
    before = stored_text(db_conn)
    conn = connect(settings)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase "
                "WHERE d.datname = current_database() AND array_to_string(s.setconfig, ',') LIKE %s",
                ("%timescaledb.%",),
            )
            assert cur.fetchone() == ((1,) if timescaledb else (0,))
            if timescaledb:
                cur.execute("SHOW timescaledb.compression_batch_size_limit")
                assert cur.fetchone() == ("10080",)
                cur.execute("SHOW timescaledb.max_tuples_decompressed_per_dml_transaction")
                assert cur.fetchone() == ("0",)
        conn.rollback()
        compress_history(conn, timescaledb)
        if timescaledb:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT format('%I.%I', c.schema_name, c.table_name), i.range_start, i.range_end "
                    "FROM timescaledb_information.chunks i "
                    "JOIN _timescaledb_catalog.chunk u ON u.schema_name = i.chunk_schema "
                    "AND u.table_name = i.chunk_name "
                    "JOIN _timescaledb_catalog.chunk c ON c.id = u.compressed_chunk_id "
                    "WHERE i.hypertable_name = 'ohlcvs'"
                )
                chunks = cur.fetchall()
                assert len(chunks) >= 3
                for compressed, start, end in chunks:
                    cur.execute(
                        f"SELECT base_id, quote_id, count(*), sum(_ts_meta_count) FROM {compressed} "
                        "GROUP BY 1, 2 ORDER BY 1, 2"
                    )
                    batches = cur.fetchall()
                    cur.execute(
                        "SELECT base_id, quote_id, 1, count(*) FROM ohlcvs WHERE time >= %s AND time < %s "
                        "GROUP BY 1, 2 ORDER BY 1, 2",
                        (start, end),
                    )
                    assert batches == cur.fetchall(), (start, end)
            conn.rollback()
    finally:
        conn.close()
    assert stored_text(db_conn) == before


def test_init_applies_the_compression_setting_idempotently(settings, db_conn, timescaledb):
    def policies() -> dict[str, str]:
        with db_conn.cursor() as cur:
            if not timescaledb:
                cur.execute("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'")
                assert cur.fetchone() == (0,)
                return {}
            cur.execute(
                "SELECT coalesce(c.view_name, j.hypertable_name), j.config ->> 'compress_after' "
                "FROM timescaledb_information.jobs j "
                "LEFT JOIN timescaledb_information.continuous_aggregates c "
                "ON c.materialization_hypertable_name = j.hypertable_name "
                "WHERE j.proc_name = 'policy_compression'"
            )
            found = dict(cur.fetchall())
        db_conn.rollback()
        return found

    default = policies()
    for days in (10, 10, 0, 3):
        init_database(
            settings.model_copy(update={"timescaledb_compress_after_days": days}), plain=not timescaledb
        )
        found = policies()
        if not timescaledb:
            assert found == {}
        elif days == 0:
            assert found == {}
        else:
            assert found == {"ohlcvs": f"{days} days", "ohlcvs_summary_1hour": f"{days} days"}
    assert policies() == default


def test_init_turns_an_older_timescaledb_layout_into_the_stored_and_viewed_levels(
    settings, db_conn, timescaledb
):
    """A database from before: 1-day chunks, no compression, every level a continuous aggregate.
    `init` makes it today's layout without losing a row, and reads answer as before."""
    if timescaledb:
        db_conn.autocommit = True
        with db_conn.cursor() as cur:
            cur.execute("DROP VIEW geo_daily_return, weekly_return, top_20_quoted_vol, common_basequote_30")
            for name in (
                "ohlcvs_summary_5min",
                "ohlcvs_summary_6hour",
                "ohlcvs_summary_daily",
                "ohlcvs_summary_7day",
            ):
                width = {"5min": "5 minutes", "6hour": "6 hours", "daily": "1 day", "7day": "7 days"}[
                    name.rsplit("_", 1)[1]
                ]
                cur.execute(f"DROP VIEW {name}")
                cur.execute(
                    f"CREATE MATERIALIZED VIEW {name} WITH (timescaledb.continuous, "
                    "timescaledb.materialized_only = false) AS "
                    "SELECT time_bucket(%s::interval, time) AS bucket, exchange, base_id, quote_id, "
                    "first(open, time) AS open, max(high) AS high, min(low) AS low, "
                    "last(close, time) AS close, sum(volume) AS volume FROM ohlcvs "
                    "GROUP BY bucket, exchange, base_id, quote_id WITH NO DATA",
                    (width,),
                )
            cur.execute("SELECT remove_compression_policy('ohlcvs')")
            cur.execute("ALTER TABLE ohlcvs SET (timescaledb.compress = false)")
            cur.execute("SELECT set_chunk_time_interval('ohlcvs', INTERVAL '1 day')")
        db_conn.autocommit = False
    upsert_markets(db_conn, [BTC_USD, ETH_BTC])
    upsert_candles(db_conn, minute_candles(BTC_USD, START, 3 * 1440, seed=3))
    db_conn.commit()
    refresh_aggregates(settings, None, None)
    before_rows, before_api = stored_text(db_conn), api_bars(db_conn)

    init_database(settings, plain=not timescaledb)
    init_database(settings, plain=not timescaledb)
    assert stored_text(db_conn) == before_rows
    assert api_bars(db_conn) == before_api
    compress_history(db_conn, timescaledb)
    assert stored_text(db_conn) == before_rows
    assert api_bars(db_conn) == before_api
    assert_every_level_matches_ohlcvs(db_conn)
    if timescaledb:
        with db_conn.cursor() as cur:
            cur.execute("SELECT view_name FROM timescaledb_information.continuous_aggregates")
            assert cur.fetchall() == [("ohlcvs_summary_1hour",)]
            cur.execute("SELECT count(*) FROM geo_daily_return")  # the analytics views are back
        db_conn.rollback()


def test_newest_sub_hour_bars_without_a_start_equal_those_with_one(history, db_conn, timescaledb):
    """Reads with no start begin at a bar found from the minutes (the sub-hour levels are views over
    ohlcvs on TimescaleDB); with gaps of whole and partial bars the answer is the same as with a
    start at the beginning of history."""
    with db_conn.cursor() as cur:
        cur.execute(
            "DELETE FROM ohlcvs WHERE exchange = 'bitfinex' "
            "AND (time >= %s OR extract(minute FROM time) < 20)",
            (START + timedelta(minutes=MINUTES - 200),),
        )
    compress_history(db_conn, timescaledb)
    key = MarketKey(BTC_USD.exchange, BTC_USD.base_id, BTC_USD.quote_id)
    end = datetime_to_ms(START + timedelta(minutes=MINUTES - 90))
    for name in ("5m", "15m", "30m"):
        for limit, end_ms in ((1, None), (7, None), (40, None), (40, end)):
            unbounded = read_bars(db_conn, BarQuery(key, INTERVALS[name], None, end_ms, limit))
            from_start = read_bars(
                db_conn, BarQuery(key, INTERVALS[name], datetime_to_ms(START), end_ms, limit)
            )
            assert unbounded == from_start and len(unbounded) == limit, (name, limit, end_ms)
    db_conn.rollback()
