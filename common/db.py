"""Database access: connections, the one bulk-upsert path for candles, markets, errors, aggregates.

Everyone writes candles through `upsert_candles`: COPY into a session temp table, then
`INSERT … ON CONFLICT DO UPDATE`, so writes are idempotent and the newest source (REST is the
exchange's final word) overwrites. Decimals travel as their exact text; nothing is rounded.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg2
import psycopg2.errors
import psycopg2.extras
from psycopg2.extensions import connection as PgConnection

from common.candle import DECIMAL_TEXT, Candle, Market
from common.settings import Settings, get_settings

AGGREGATE_LEVELS: dict[str, timedelta] = {
    "ohlcvs_summary_5min": timedelta(minutes=5),
    "ohlcvs_summary_15min": timedelta(minutes=15),
    "ohlcvs_summary_30min": timedelta(minutes=30),
    "ohlcvs_summary_1hour": timedelta(hours=1),
    "ohlcvs_summary_6hour": timedelta(hours=6),
    "ohlcvs_summary_12hour": timedelta(hours=12),
    "ohlcvs_summary_daily": timedelta(days=1),
    "ohlcvs_summary_7day": timedelta(days=7),
}
# time_bucket's default origin (a Monday); the plain-PostgreSQL summaries use the same one.
BUCKET_ORIGIN = datetime(2000, 1, 3, tzinfo=UTC)

_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})

_CREATE_INCOMING = """
CREATE TEMP TABLE IF NOT EXISTS ohlcvs_incoming (
    time timestamptz NOT NULL, exchange text NOT NULL, base_id text NOT NULL, quote_id text NOT NULL,
    open numeric NOT NULL, high numeric NOT NULL, low numeric NOT NULL, close numeric NOT NULL,
    volume numeric NOT NULL
)
"""

_UPSERT_FROM_INCOMING = """
INSERT INTO ohlcvs AS o (time, exchange, base_id, quote_id, open, high, low, close, volume)
SELECT time, exchange, base_id, quote_id, open, high, low, close, volume FROM ohlcvs_incoming
ON CONFLICT (exchange, base_id, quote_id, time) DO UPDATE
SET open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low,
    close = EXCLUDED.close, volume = EXCLUDED.volume
WHERE (o.open::text, o.high::text, o.low::text, o.close::text, o.volume::text)
      IS DISTINCT FROM
      (EXCLUDED.open::text, EXCLUDED.high::text, EXCLUDED.low::text, EXCLUDED.close::text,
       EXCLUDED.volume::text)
"""

_MISSING_MARKETS = """
SELECT DISTINCT i.exchange, i.base_id, i.quote_id FROM ohlcvs_incoming i
LEFT JOIN symbol_exchange s USING (exchange, base_id, quote_id)
WHERE s.exchange IS NULL ORDER BY 1, 2, 3 LIMIT 5
"""


class DatabaseError(RuntimeError):
    """A database problem explained in one line (unreachable, no rights, bad schema)."""


class UnknownMarketError(ValueError):
    """Candles were given for markets that are not in `symbol_exchange`."""

    def __init__(self, markets: Sequence[tuple[str, str, str]]):
        self.markets = list(markets)
        names = ", ".join(f"{e}:{b}/{q}" for e, b, q in self.markets)
        super().__init__(f"candles for markets not in symbol_exchange: {names}; refresh the markets first")


def connect(settings: Settings | None = None, dbname: str | None = None) -> PgConnection:
    """A new psycopg2 connection; failures become one readable `DatabaseError` line."""
    settings = settings or get_settings()
    try:
        return psycopg2.connect(
            host=settings.postgres_host,
            port=settings.postgres_port,
            user=settings.postgres_user,
            password=settings.postgres_password.get_secret_value() or None,
            dbname=dbname or settings.postgres_db,
            connect_timeout=10,
            application_name="coin-for-rich",
        )
    except psycopg2.OperationalError as error:
        reason = " ".join(line.strip() for line in str(error).strip().splitlines()) or "no answer"
        raise DatabaseError(
            f"cannot connect to PostgreSQL at {settings.postgres_host}:{settings.postgres_port} "
            f"database {dbname or settings.postgres_db!r} as {settings.postgres_user!r}: {reason}"
        ) from None


@contextmanager
def connection(settings: Settings | None = None) -> Iterator[PgConnection]:
    """A connection that commits on success, rolls back on error, and is always closed."""
    conn = connect(settings)
    try:
        with conn:
            yield conn
    finally:
        conn.close()


def has_timescaledb(conn: PgConnection) -> bool:
    with conn.cursor() as cur:
        cur.execute("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')")
        return bool(cur.fetchone()[0])


def _copy_text(value: str) -> str:
    return value.translate(_COPY_ESCAPES)


def _candle_rows(candles: Iterable[Candle]) -> tuple[io.StringIO, int]:
    """Tab-separated COPY text; duplicate keys keep the last candle (ON CONFLICT needs unique keys).

    On the backfill's hot path: texts that repeat within a batch (names, times) are built once."""
    latest: dict[tuple[str, str, str, datetime], Candle] = {}
    for candle in candles:
        latest[(candle.exchange, candle.base_id, candle.quote_id, candle.time)] = candle
    names: dict[tuple[str, str, str], str] = {}
    times: dict[datetime, str] = {}
    parts: list[str] = []
    for (exchange, base_id, quote_id, time), c in latest.items():
        market = names.get((exchange, base_id, quote_id))
        if market is None:
            market = names[(exchange, base_id, quote_id)] = (
                f"{_copy_text(exchange)}\t{_copy_text(base_id)}\t{_copy_text(quote_id)}"
            )
        stamp = times.get(time)
        if stamp is None:
            stamp = times[time] = time.isoformat()
        parts.append(
            f"{stamp}\t{market}\t{_decimal_text(c.open)}\t{_decimal_text(c.high)}\t"
            f"{_decimal_text(c.low)}\t{_decimal_text(c.close)}\t{_decimal_text(c.volume)}\n"
        )
    return io.StringIO("".join(parts)), len(latest)


def _decimal_text(value: Decimal) -> str:
    if value.__class__ is not Decimal or not value.is_finite():
        raise ValueError(f"prices and volumes must be finite Decimals, got {value!r}")
    return str(value)


def upsert_candles(conn: PgConnection, candles: Iterable[Candle]) -> int:
    """Write candles idempotently in the caller's transaction; returns rows inserted or changed.

    Raises `UnknownMarketError` (and leaves the transaction rolled back) when a candle's market is
    not in `symbol_exchange`.
    """
    buffer, count = _candle_rows(candles)
    if count == 0:
        return 0
    with conn.cursor() as cur:
        cur.execute(_CREATE_INCOMING)
        cur.copy_expert(
            "COPY ohlcvs_incoming (time, exchange, base_id, quote_id, open, high, low, close, volume) "
            "FROM STDIN",
            buffer,
        )
        cur.execute("SAVEPOINT before_upsert")
        try:
            cur.execute(_UPSERT_FROM_INCOMING)
        except psycopg2.errors.ForeignKeyViolation:
            cur.execute("ROLLBACK TO SAVEPOINT before_upsert")
            cur.execute(_MISSING_MARKETS)
            missing = cur.fetchall()
            conn.rollback()
            raise UnknownMarketError(missing) from None
        written = cur.rowcount
        cur.execute("RELEASE SAVEPOINT before_upsert")
        cur.execute("TRUNCATE ohlcvs_incoming")  # empty again for the next call, in this transaction or not
    return written


_CREATE_LIVE_INCOMING = """
CREATE TEMP TABLE IF NOT EXISTS ohlcvs_live_incoming (
    time_ms bigint NOT NULL, exchange text NOT NULL, base_id text NOT NULL, quote_id text NOT NULL,
    open numeric NOT NULL, high numeric NOT NULL, low numeric NOT NULL, close numeric NOT NULL,
    volume numeric NOT NULL
)
"""

_INSERT_MISSING_FROM_LIVE = """
INSERT INTO ohlcvs (time, exchange, base_id, quote_id, open, high, low, close, volume)
SELECT 'epoch'::timestamptz + i.time_ms * interval '1 millisecond',
       i.exchange, i.base_id, i.quote_id, i.open, i.high, i.low, i.close, i.volume
FROM ohlcvs_live_incoming i
JOIN symbol_exchange s USING (exchange, base_id, quote_id)
ON CONFLICT (exchange, base_id, quote_id, time) DO NOTHING
"""


def insert_missing_candles(conn: PgConnection, candles: Iterable[Candle]) -> int:
    """Live bars: fill minutes that have no row yet, never change an existing row (REST data is the
    exchange's final word). `time` is the open time in epoch ms, prices and volume the exchange's
    decimal text, one bar per market and minute. Bars of markets missing from `symbol_exchange` are
    skipped. Returns rows inserted.
    Runs in the caller's transaction."""
    parts = []
    for c in candles:
        values = (c.open, c.high, c.low, c.close, c.volume)
        if not all(DECIMAL_TEXT.fullmatch(v) for v in values):
            raise ValueError(f"prices and volumes must be plain decimal text, got {values!r}")
        parts.append(
            f"{int(c.time)}\t{_copy_text(c.exchange)}\t{_copy_text(c.base_id)}\t{_copy_text(c.quote_id)}\t"
            + "\t".join(values)
            + "\n"
        )
    if not parts:
        return 0
    with conn.cursor() as cur:
        cur.execute(_CREATE_LIVE_INCOMING)
        cur.copy_expert(
            "COPY ohlcvs_live_incoming (time_ms, exchange, base_id, quote_id, open, high, low, close, "
            "volume) FROM STDIN",
            io.StringIO("".join(parts)),
        )
        cur.execute(_INSERT_MISSING_FROM_LIVE)
        written = cur.rowcount
        cur.execute("TRUNCATE ohlcvs_live_incoming")
    return written


def upsert_markets(conn: PgConnection, markets: Sequence[Market], exchange: str | None = None) -> int:
    """Insert or update markets. With `exchange`, markets of that exchange not in the list are
    marked not trading (never deleted: their candles stay)."""
    with conn.cursor() as cur:
        rows = [(m.exchange, m.base_id, m.quote_id, m.symbol, m.is_trading) for m in markets]
        psycopg2.extras.execute_values(
            cur,
            "INSERT INTO symbol_exchange (exchange, base_id, quote_id, symbol, is_trading) VALUES %s "
            "ON CONFLICT (exchange, base_id, quote_id) DO UPDATE SET symbol = EXCLUDED.symbol, "
            "is_trading = EXCLUDED.is_trading, updated_at = now() "
            "WHERE (symbol_exchange.symbol, symbol_exchange.is_trading) "
            "IS DISTINCT FROM (EXCLUDED.symbol, EXCLUDED.is_trading)",
            rows,
        )
        changed = cur.rowcount
        if exchange is not None:
            cur.execute(
                "UPDATE symbol_exchange SET is_trading = false, updated_at = now() "
                "WHERE exchange = %s AND is_trading AND NOT (symbol = ANY(%s))",
                (exchange, [m.symbol for m in markets if m.exchange == exchange]),
            )
            changed += cur.rowcount
    return changed


def load_markets(conn: PgConnection, exchange: str, trading_only: bool = False) -> list[Market]:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT exchange, base_id, quote_id, symbol, is_trading FROM symbol_exchange "
            "WHERE exchange = %s AND (is_trading OR NOT %s) ORDER BY base_id, quote_id",
            (exchange, trading_only),
        )
        return [Market(*row) for row in cur.fetchall()]


@dataclass(frozen=True, slots=True)
class FetchErrorRecord:
    """One row of `ohlcvs_errors`: a REST request that finally failed."""

    exchange: str
    symbol: str
    start_date: datetime
    end_date: datetime
    time_frame: str
    ohlcv_section: str
    resp_status_code: int | None
    exception_class: str
    exception_message: str


def record_fetch_error(conn: PgConnection, record: FetchErrorRecord) -> None:
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO ohlcvs_errors (exchange, symbol, start_date, end_date, time_frame, "
            "ohlcv_section, resp_status_code, exception_class, exception_message) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                record.exchange,
                record.symbol,
                record.start_date,
                record.end_date,
                record.time_frame,
                record.ohlcv_section,
                record.resp_status_code,
                record.exception_class,
                record.exception_message[:2000],
            ),
        )


def bucket_window(width: timedelta, start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """The smallest whole-bucket window covering [start, end).

    TimescaleDB refreshes only buckets that lie entirely inside the window it is given, so a
    backfilled range must be widened to bucket boundaries or its edge buckets stay stale.
    """
    first = BUCKET_ORIGIN + ((start - BUCKET_ORIGIN) // width) * width
    last_point = end - timedelta(microseconds=1)
    last = BUCKET_ORIGIN + ((last_point - BUCKET_ORIGIN) // width) * width + width
    return first, last


def refresh_aggregates(settings: Settings | None, start: datetime | None, end: datetime | None) -> None:
    """Refresh every aggregate level over the buckets touched by [start, end) (None = all data).

    TimescaleDB's refresh is a procedure that must run outside a transaction block, so this opens
    its own autocommit connection; the plain path calls refresh_ohlcv_aggregates().
    """
    conn = connect(settings)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            if has_timescaledb(conn):
                for level, width in AGGREGATE_LEVELS.items():
                    window = (None, None)
                    if start is not None and end is not None:
                        window = bucket_window(width, start, end)
                    cur.execute("CALL refresh_continuous_aggregate(%s, %s, %s)", (level, *window))
            else:
                cur.execute("SELECT refresh_ohlcv_aggregates(%s, %s)", (start, end))
    finally:
        conn.close()
