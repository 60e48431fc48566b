"""`ohlcvs_coverage` against a real PostgreSQL: merged on write, safe under concurrent writers."""

from __future__ import annotations

import threading

import pytest

from common.coverage import REST, WS, CoverageRange, read_coverage, record_coverage
from common.db import connect

pytestmark = pytest.mark.integration

M = 60_000
T0 = 1_622_505_600_000


def rng(a: int, b: int, source: str = REST, base: str = "BTC") -> CoverageRange:
    return CoverageRange("bitfinex", base, "USD", T0 + a * M, T0 + b * M, source)


def rows(conn) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT base_id, source, extract(epoch FROM start_time)::bigint * 1000, "
            "extract(epoch FROM end_time)::bigint * 1000 FROM ohlcvs_coverage ORDER BY 1, 2, 3"
        )
        return [(b, s, (a - T0) // M, (e - T0) // M) for b, s, a, e in cur.fetchall()]


def test_ranges_of_one_market_and_source_are_kept_merged(db_conn):
    record_coverage(db_conn, [rng(0, 10), rng(20, 30), rng(40, 50)])
    db_conn.commit()
    record_coverage(db_conn, [rng(10, 20), rng(45, 60), rng(100, 110), rng(5, 6, WS), rng(0, 3, REST, "ETH")])
    db_conn.commit()
    assert rows(db_conn) == [
        ("BTC", "rest", 0, 30),
        ("BTC", "rest", 40, 60),
        ("BTC", "rest", 100, 110),
        ("BTC", "ws", 5, 6),
        ("ETH", "rest", 0, 3),
    ]
    record_coverage(db_conn, [rng(-5, 200)])
    db_conn.commit()
    assert ("BTC", "rest", -5, 200) in rows(db_conn)
    assert len([r for r in rows(db_conn) if r[:2] == ("BTC", "rest")]) == 1
    found = read_coverage(db_conn, "bitfinex", "BTC", "USD", T0 + 150 * M, T0 + 160 * M)
    assert found[("BTC", "USD")][REST] == [(T0 - 5 * M, T0 + 200 * M)]
    assert found[("BTC", "USD")][WS] == []


def test_coverage_rolled_back_with_its_transaction_is_not_recorded(db_conn):
    record_coverage(db_conn, [rng(0, 10)])
    db_conn.rollback()
    assert rows(db_conn) == []


def test_concurrent_writers_of_one_market_leave_one_merged_range(settings):
    """Many transactions add adjacent minutes of the same market at once: no overlap, no error."""
    errors: list[BaseException] = []

    def writer(offset: int) -> None:
        conn = connect(settings)
        try:
            for minute in range(offset, 200, 8):
                with conn:
                    record_coverage(conn, [rng(minute, minute + 1), rng(minute, minute + 1, WS, "ETH")])
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)
        finally:
            conn.close()

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    conn = connect(settings)
    try:
        assert rows(conn) == [("BTC", "rest", 0, 200), ("ETH", "ws", 0, 200)]
    finally:
        conn.close()


def test_archive_coverage_is_stored_and_counts_as_final(db_conn):
    """An archive file is the exchange's final word, as a REST request is: the completeness rules
    read both as `rest` evidence."""
    from common.coverage import ARCHIVE, load_evidence

    record_coverage(db_conn, [rng(0, 10, ARCHIVE), rng(10, 20, REST), rng(30, 40, WS)])
    db_conn.commit()
    assert rows(db_conn) == [("BTC", "archive", 0, 10), ("BTC", "rest", 10, 20), ("BTC", "ws", 30, 40)]
    evidence = load_evidence(db_conn, "bitfinex", "BTC", "USD")[("BTC", "USD")]
    assert sorted(evidence.rest) == [(T0, T0 + 10 * M), (T0 + 10 * M, T0 + 20 * M)]


def test_init_upgrades_a_database_made_before_the_archive_source(settings, timescaledb):
    """A database created with the two-source CHECK of 006 accepts 'archive' after `init`, and a
    second `init` changes nothing."""
    from common.schema import apply_schema

    conn = connect(settings)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("ALTER TABLE ohlcvs_coverage DROP CONSTRAINT ohlcvs_coverage_source_check")
            cur.execute(
                "ALTER TABLE ohlcvs_coverage ADD CONSTRAINT ohlcvs_coverage_source_check"
                " CHECK (source IN ('rest', 'ws'))"
            )
        with pytest.raises(Exception, match="ohlcvs_coverage_source_check"), conn:
            record_coverage(conn, [rng(0, 10, "archive")])
        assert apply_schema(settings, plain=not timescaledb) == timescaledb
        assert apply_schema(settings, plain=not timescaledb) == timescaledb
        with conn:
            record_coverage(conn, [rng(0, 10, "archive")])
        assert rows(conn) == [("BTC", "archive", 0, 10)]
        with pytest.raises(Exception, match="ohlcvs_coverage_source_check"), conn:
            with conn.cursor() as cur:
                cur.execute(
                    "INSERT INTO ohlcvs_coverage (exchange, base_id, quote_id, source, start_time, end_time)"
                    " VALUES ('binance', 'BTC', 'USDT', 'guess', now(), now() + interval '1 minute')"
                )
    finally:
        conn.close()
