"""Database access: connections, the one bulk-upsert path for candles, markets, errors, aggregates.

Everyone writes candles through `upsert_candles`: COPY into a session temp table, then
`INSERT … ON CONFLICT DO UPDATE`, so writes are idempotent and the newest source (REST is the
exchange's final word) overwrites. Prices travel as the exchange's exact text (checked against
`common.candle.DECIMAL_TEXT`) and times as epoch milliseconds; nothing is rounded.
"""

from __future__ import annotations

import bisect
import io
import logging
import operator
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise

import psycopg2
import psycopg2.errors
import psycopg2.extras
from psycopg2.extensions import connection as PgConnection

from common import ohlcvs_versions
from common.backoff import backoff_seconds
from common.candle import Candle, CandleBlock, Market, only_number_chars
from common.levels import AGGREGATE_LEVELS, BUCKET_ORIGIN, VIEW_LEVELS_TIMESCALEDB
from common.settings import Settings, get_settings

log = logging.getLogger(__name__)

COPY_CHUNK_BYTES = 1 << 20
"""How much COPY text psycopg2 reads per call (its default, 8 KiB, costs a call per 70 rows)."""

_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})

_CREATE_INCOMING = """
CREATE TEMP TABLE IF NOT EXISTS ohlcvs_incoming (
    time_ms bigint NOT NULL, exchange text NOT NULL, base_id text NOT NULL, quote_id text NOT NULL,
    open numeric NOT NULL, high numeric NOT NULL, low numeric NOT NULL, close numeric NOT NULL,
    volume numeric NOT NULL
)
"""

_UPSERT_FROM_INCOMING = """
INSERT INTO ohlcvs AS o (time, exchange, base_id, quote_id, open, high, low, close, volume)
SELECT timestamptz 'epoch' + time_ms * interval '1 millisecond', exchange, base_id, quote_id,
       open, high, low, close, volume
FROM ohlcvs_incoming
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

    ValueError unless every time is an `int` and every value a `str` of number characters (see
    `common.candle`; PostgreSQL rejects the malformed rest). On the backfill's hot path: each
    market's text is built once, values pass through as the exchange wrote them, and the character
    check runs once over the whole batch."""
    latest: dict[tuple[str, str, str, int], Candle] = {}
    for candle in candles:
        latest[(candle.exchange, candle.base_id, candle.quote_id, candle.time)] = candle
    names: dict[tuple[str, str, str], str] = {}
    parts: list[str] = []
    values: list[str] = []
    for (exchange, base_id, quote_id, time_ms), c in latest.items():
        market = names.get((exchange, base_id, quote_id))
        if market is None:
            market = names[(exchange, base_id, quote_id)] = (
                f"{_copy_text(exchange)}\t{_copy_text(base_id)}\t{_copy_text(quote_id)}"
            )
        if not (
            time_ms.__class__ is int
            and c.open.__class__ is str
            and c.high.__class__ is str
            and c.low.__class__ is str
            and c.close.__class__ is str
            and c.volume.__class__ is str
        ):
            raise ValueError(f"a candle needs an int time (ms) and str values: {c!r}")
        numbers = f"{c.open}\t{c.high}\t{c.low}\t{c.close}\t{c.volume}"
        values.append(numbers)
        parts.append(f"{time_ms}\t{market}\t{numbers}\n")
    joined = "\n".join(values)
    if (
        not only_number_chars(joined, b"\t\n")
        or joined.count("\t") != 4 * len(values)
        or joined.count("\n") != len(values) - 1
        or "\t\t" in joined
        or "\n\t" in joined
        or "\t\n" in joined
        or joined.startswith("\t")
        or joined.endswith("\t")
    ):
        for c in latest.values():
            for value in (c.open, c.high, c.low, c.close, c.volume):
                if not value or not only_number_chars(value):
                    raise ValueError(
                        f"prices and volumes must be decimal number text, got {value!r} in {c!r}"
                    )
    return io.StringIO("".join(parts)), len(latest)


_CANDLE_COLUMNS = "time_ms, exchange, base_id, quote_id, open, high, low, close, volume"
_BLOCK_COLUMNS = "exchange, base_id, quote_id, time_ms, open, high, low, close, volume"


def _block_rows(blocks: Iterable[CandleBlock]) -> tuple[io.StringIO, int]:
    """COPY text of the blocks, one join per block (no per-candle work: the blocks are checked).
    Blocks of one market whose times overlap are merged, a later block's candle kept."""
    by_market: dict[tuple[str, str, str], list[CandleBlock]] = {}
    for block in blocks:
        if block.lines:
            by_market.setdefault((block.exchange, block.base_id, block.quote_id), []).append(block)
    parts: list[str] = []
    count = 0
    for market, group in by_market.items():
        ordered = sorted(group, key=lambda block: block.times[0])
        if any(later.times[0] <= earlier.times[-1] for earlier, later in pairwise(ordered)):
            latest: dict[int, str] = {}
            for block in group:
                latest.update(zip(block.times, block.lines, strict=True))
            times = sorted(latest)
            ordered = [CandleBlock(*market, times, [latest[t] for t in times])]
        prefix = "\t".join(map(_copy_text, market)) + "\t"
        for block in ordered:
            parts.append(prefix + ("\n" + prefix).join(block.lines) + "\n")
            count += len(block.lines)
    return io.StringIO("".join(parts)), count


def _stage(cur, buffer: io.StringIO, count: int, columns: str) -> int:
    """COPY the rows into the session's empty `ohlcvs_incoming`; returns how many (0: nothing)."""
    if count:
        cur.execute(_CREATE_INCOMING)
        cur.copy_expert(f"COPY ohlcvs_incoming ({columns}) FROM STDIN", buffer, size=COPY_CHUNK_BYTES)
    return count


def _stage_candles(cur, candles: Iterable[Candle]) -> int:
    return _stage(cur, *_candle_rows(candles), _CANDLE_COLUMNS)


def _upsert_staged(conn: PgConnection, cur) -> int:
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


def upsert_candles(conn: PgConnection, candles: Iterable[Candle]) -> int:
    """Write candles idempotently in the caller's transaction; returns rows inserted or changed.

    Raises `UnknownMarketError` (and leaves the transaction rolled back) when a candle's market is
    not in `symbol_exchange`.
    """
    with conn.cursor() as cur:
        if not _stage_candles(cur, candles):
            return 0
        return _upsert_staged(conn, cur)


_MINUTE_OF_DAY_TEXT = [f" {h:02d}:{m:02d}:00+00" for h in range(24) for m in range(60)]
"""The time of day of each minute as timestamptz text (after the date)."""
_DAY_MS = 86_400_000
_OHLCVS_COPY_COLUMNS = "time, exchange, base_id, quote_id, open, high, low, close, volume"
_ANY_ROW_IN_RANGE = """
SELECT EXISTS (SELECT 1 FROM ohlcvs WHERE exchange = %s AND base_id = %s AND quote_id = %s
               AND time >= timestamptz 'epoch' + %s * interval '1 millisecond'
               AND time <= timestamptz 'epoch' + %s * interval '1 millisecond')
"""


def _day_text(day_ms: int) -> str:
    return datetime.fromtimestamp(day_ms / 1000, UTC).strftime("%Y-%m-%d")


def _copy_rows(block: CandleBlock, market: str) -> str:
    """COPY text of `ohlcvs` rows for a block: the time as timestamptz text, the market, the values.
    Built by whole columns (C loops, no Python code per row): the time texts of each day once,
    and the values as the tail of each block line (a time in ms has 13 digits from 2001 to 2286,
    so the tail starts at a fixed place; other times take the slow way)."""
    times, lines = block.times, block.lines
    stamps: list[str] = []
    if 10**12 <= times[0] and times[-1] < 10**13:
        tails = list(map(operator.itemgetter(slice(14, None)), lines))
    else:
        tails = [line[line.index("\t") + 1 :] for line in lines]
    day = times[0] - times[0] % _DAY_MS
    index = 0
    while index < len(times):
        date = _day_text(day)
        heads = [date + clock + market for clock in _MINUTE_OF_DAY_TEXT]
        end = bisect.bisect_left(times, day + _DAY_MS, index)
        if end - index == 1440:
            stamps += heads
        else:
            stamps += [heads[(t - day) // 60_000] for t in times[index:end]]
        index, day = end, day + _DAY_MS
    return "\n".join(map(operator.add, stamps, tails)) + "\n"


def copy_new_candle_blocks(conn: PgConnection, blocks: list[CandleBlock]) -> int | None:
    """COPY the blocks straight into `ohlcvs` when no market of theirs has a row in its block's
    range (a first backfill of closed history: the archive's whole days and months) — no staging
    table, no conflict to resolve, the same rows an upsert would leave. Returns the rows written,
    or None (nothing written) when some range holds rows, a market comes twice, or another writer
    got there first: the caller upserts instead. Runs in the caller's transaction."""
    blocks = [b for b in blocks if b.lines]
    markets = [(b.exchange, b.base_id, b.quote_id) for b in blocks]
    if not blocks or len(set(markets)) != len(markets):
        return None
    parts: list[str] = []
    with conn.cursor() as cur:
        for block, market in zip(blocks, markets, strict=True):
            cur.execute(_ANY_ROW_IN_RANGE, (*market, block.times[0], block.times[-1]))
            if cur.fetchone()[0]:
                return None
            parts.append(_copy_rows(block, "\t" + "\t".join(map(_copy_text, market)) + "\t"))
        cur.execute("SAVEPOINT before_copy")
        try:
            cur.copy_expert(
                f"COPY ohlcvs ({_OHLCVS_COPY_COLUMNS}) FROM STDIN",
                io.StringIO("".join(parts)),
                size=COPY_CHUNK_BYTES,
            )
        except (psycopg2.errors.UniqueViolation, psycopg2.errors.ForeignKeyViolation):
            cur.execute("ROLLBACK TO SAVEPOINT before_copy")
            return None
        cur.execute("RELEASE SAVEPOINT before_copy")
    return sum(len(b) for b in blocks)


def upsert_candle_blocks(conn: PgConnection, blocks: Iterable[CandleBlock]) -> int:
    """`upsert_candles` for candles in bulk (the backfill's path): same table, rules and errors."""
    with conn.cursor() as cur:
        if not _stage(cur, *_block_rows(blocks), _BLOCK_COLUMNS):
            return 0
        return _upsert_staged(conn, cur)


_INSERT_MISSING_FROM_INCOMING = """
INSERT INTO ohlcvs (time, exchange, base_id, quote_id, open, high, low, close, volume)
SELECT timestamptz 'epoch' + i.time_ms * interval '1 millisecond',
       i.exchange, i.base_id, i.quote_id, i.open, i.high, i.low, i.close, i.volume
FROM ohlcvs_incoming i
JOIN symbol_exchange s USING (exchange, base_id, quote_id)
ON CONFLICT (exchange, base_id, quote_id, time) DO NOTHING
"""

LATE_CHANGE_REASON = "live bar changed after its minute was stored"

# Minutes already stored that a live bar now gives other values (a late update of a closed bar,
# e.g. Bitfinex re-sending the previous candle): a live bar never overwrites a row, so the stored
# row may be stale. Unless a successful REST request or archive file covers it (the exchange's final
# word), the minute becomes an outage: never counted complete, and the repair fetches it over REST.
_RECORD_LATE_CHANGES = """
INSERT INTO ohlcvs_outages (exchange, base_id, quote_id, start_time, end_time, reason)
SELECT DISTINCT o.exchange, o.base_id, o.quote_id, o.time, o.time + interval '1 minute', %(reason)s
FROM ohlcvs_incoming i
JOIN ohlcvs o ON o.exchange = i.exchange AND o.base_id = i.base_id AND o.quote_id = i.quote_id
             AND o.time = timestamptz 'epoch' + i.time_ms * interval '1 millisecond'
WHERE (o.open::text, o.high::text, o.low::text, o.close::text, o.volume::text) IS DISTINCT FROM
      (i.open::text, i.high::text, i.low::text, i.close::text, i.volume::text)
  AND NOT EXISTS (
      SELECT 1 FROM ohlcvs_coverage c
      WHERE c.exchange = o.exchange AND c.base_id = o.base_id AND c.quote_id = o.quote_id
        AND c.source IN ('rest', 'archive') AND c.start_time <= o.time AND o.time < c.end_time)
ON CONFLICT DO NOTHING
RETURNING exchange, start_time
"""


def _insert_live_staged(cur, staged: int) -> int:
    """Write the `staged` live bars in `ohlcvs_incoming`: new minutes inserted, stored ones left as
    they are, and a stored minute the bar now gives other values recorded as an outage (above) and
    logged. Returns rows inserted."""
    cur.execute(_INSERT_MISSING_FROM_INCOMING)
    written = cur.rowcount
    if written < staged:  # minutes already stored (or of markets not in symbol_exchange)
        cur.execute(_RECORD_LATE_CHANGES, {"reason": LATE_CHANGE_REASON})
        _log_late_changes(cur.fetchall())
    cur.execute("TRUNCATE ohlcvs_incoming")
    return written


def _log_late_changes(rows: list[tuple[str, datetime]]) -> None:
    """One warning per exchange: how many stored minutes a live bar changed, and when they lie."""
    by_exchange: dict[str, list[datetime]] = {}
    for exchange, minute in rows:
        by_exchange.setdefault(exchange, []).append(minute)
    for exchange, minutes in sorted(by_exchange.items()):
        log.warning(
            "%s: %d stored minutes (%s .. %s) changed by a later live bar: outages for the repair",
            exchange,
            len(minutes),
            min(minutes).isoformat(),
            max(minutes).isoformat(),
        )


def insert_missing_candles(conn: PgConnection, candles: Iterable[Candle]) -> int:
    """Live bars: fill minutes that have no row yet, never change an existing row (REST data is the
    exchange's final word); a stored minute the bar gives other values becomes an outage for the
    repair. Same candle form and checks as `upsert_candles`; bars of markets missing from
    `symbol_exchange` are skipped. Returns rows inserted. Runs in the caller's transaction."""
    with conn.cursor() as cur:
        staged = _stage_candles(cur, candles)
        return _insert_live_staged(cur, staged) if staged else 0


def insert_missing_copy_text(conn: PgConnection, rows: io.BufferedIOBase | io.TextIOBase) -> int:
    """`insert_missing_candles` for a caller that built the COPY text itself (the live updater reads
    bars as text and checks them in bulk): lines of time_ms, exchange, base_id, quote_id, open, high,
    low, close, volume, tab-separated and COPY-escaped, unique per market and minute. The caller
    checks the values (`only_number_chars`); PostgreSQL's numeric input rejects malformed numbers."""
    with conn.cursor() as cur:
        cur.execute(_CREATE_INCOMING)
        cur.copy_expert(
            "COPY ohlcvs_incoming (time_ms, exchange, base_id, quote_id, open, high, low, close, volume) "
            "FROM STDIN",
            rows,
        )
        return _insert_live_staged(cur, cur.rowcount)


def copy_text(value: str) -> str:
    """`value` escaped for COPY's text format."""
    return _copy_text(value)


def upsert_markets(conn: PgConnection, markets: Sequence[Market], exchange: str | None = None) -> int:
    """Insert or update markets. With `exchange`, markets of that exchange not in the list are
    marked not trading (never deleted: their candles stay)."""
    with conn.cursor() as cur:
        rows = [(m.exchange, m.base_id, m.quote_id, m.symbol, m.is_trading) for m in markets]
        # RETURNING counts every page: execute_values sends 100 rows a page and rowcount keeps
        # only the last page's count.
        changed_rows = psycopg2.extras.execute_values(
            cur,
            "INSERT INTO symbol_exchange (exchange, base_id, quote_id, symbol, is_trading) VALUES %s "
            "ON CONFLICT (exchange, base_id, quote_id) DO UPDATE SET symbol = EXCLUDED.symbol, "
            "is_trading = EXCLUDED.is_trading, updated_at = now() "
            "WHERE (symbol_exchange.symbol, symbol_exchange.is_trading) "
            "IS DISTINCT FROM (EXCLUDED.symbol, EXCLUDED.is_trading) RETURNING 1",
            rows,
            fetch=True,
        )
        changed = len(changed_rows)
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


# A bucket counts as closed once its end is this far in the past: the live pipeline may still write
# the final version of the last minute just after it ends (the policies' end_offset is the same).
BUCKET_SETTLE = timedelta(minutes=1)


def closed_until(width: timedelta, now: datetime) -> datetime:
    """End of the last bucket of `width` that can no longer change at `now`."""
    return BUCKET_ORIGIN + ((now - BUCKET_SETTLE - BUCKET_ORIGIN) // width) * width


def bucket_window(
    width: timedelta, start: datetime | None, end: datetime | None, now: datetime
) -> tuple[datetime | None, datetime] | None:
    """The whole-bucket window to materialise for [start, end) at `now`; None when there is none.

    TimescaleDB refreshes only buckets that lie entirely inside the window it is given, so a
    backfilled range is widened to bucket boundaries or its edge buckets stay stale. The window never
    reaches past the last closed bucket: a materialised bucket is below the continuous aggregate's
    watermark, where later writes stay invisible until the next refresh, while open buckets are
    shown through real-time aggregation. `start` None means from the beginning.
    """
    last = closed_until(width, now)
    if end is not None:
        last_point = end - timedelta(microseconds=1)
        last = min(last, BUCKET_ORIGIN + ((last_point - BUCKET_ORIGIN) // width) * width + width)
    if start is None:
        return None, last
    first = BUCKET_ORIGIN + ((start - BUCKET_ORIGIN) // width) * width
    return (first, last) if last > first else None


def error_line(error: BaseException) -> str:
    """A database error as one line: the server's first line, else the client's text joined up."""
    pgerror = (getattr(error, "pgerror", None) or "").strip()
    if pgerror:
        return pgerror.splitlines()[0]
    return " ".join(str(error).split()) or error.__class__.__name__


CONCURRENT_REFRESH_TRIES = 8
CONCURRENT_REFRESH_WAIT_SECONDS = (0.2, 15.0)
"""Backoff base and cap between tries while TimescaleDB's own refresh policy holds a level."""


def refresh_continuous_aggregate(cur, level: str, window: tuple[datetime, datetime]) -> None:
    """One level's refresh. TimescaleDB refuses a refresh while another one of the same aggregate
    runs (its policy job starts as soon as init creates it); that one does the same work, so wait
    for it and try again rather than fail."""
    for attempt in range(CONCURRENT_REFRESH_TRIES):
        try:
            cur.execute("CALL refresh_continuous_aggregate(%s, %s, %s)", (level, *window))
            return
        except psycopg2.Error as error:
            last = attempt == CONCURRENT_REFRESH_TRIES - 1
            if last or "concurrent refresh" not in (error.pgerror or ""):
                raise
        time.sleep(backoff_seconds(attempt, *CONCURRENT_REFRESH_WAIT_SECONDS))


def refresh_aggregates(
    settings: Settings | None,
    start: datetime | None,
    end: datetime | None,
    now: datetime | None = None,
    upper: tuple[datetime, datetime] | None = None,
) -> None:
    """Bring every aggregate level up to date over the buckets touched by [start, end) (None = all)
    and, on plain PostgreSQL, the levels above the first over `upper` (whose first level
    `refresh_first_level` rebuilt).

    TimescaleDB: each continuous aggregate is refreshed over `bucket_window` (closed buckets only;
    the refresh is a procedure that must run outside a transaction block, so this uses its own
    autocommit connection). Plain PostgreSQL: refresh_ohlcv_aggregates() rebuilds the range and
    every bucket that was still open at its previous run. `now` is for tests; default the clock.
    """
    conn = connect(settings)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            changed_from = start
            if has_timescaledb(conn):
                at = now or datetime.now(UTC)
                for level, width in AGGREGATE_LEVELS.items():
                    if level in VIEW_LEVELS_TIMESCALEDB:
                        continue
                    window = bucket_window(width, start, end, at)
                    if window is not None:
                        refresh_continuous_aggregate(cur, level, window)
            else:
                cur.execute("BEGIN")  # the open buckets it will rebuild, read under the refresh's own lock
                cur.execute("SELECT pg_advisory_xact_lock(hashtext('refresh_ohlcv_aggregates'))")
                cur.execute("SELECT min(open_from) FROM ohlcv_aggregate_levels")
                open_from = cur.fetchone()[0]
                cur.execute(
                    "SELECT refresh_ohlcv_aggregates(%s, %s, coalesce(%s, now()), %s, %s)",
                    (start, end, now, *(upper or (None, None))),
                )
                cur.execute("COMMIT")
                if start is not None and open_from is not None:
                    changed_from = min(start, open_from)
        ohlcvs_versions.summaries_refreshed(
            settings, None if changed_from is None else int(changed_from.timestamp() * 1000)
        )
    except psycopg2.Error as error:
        what = "lost the connection to PostgreSQL" if conn.closed else "failed"
        raise DatabaseError(f"refreshing the aggregates {what}: {error_line(error)}") from None
    finally:
        conn.close()


def refresh_first_level(
    conn: PgConnection, start: datetime, end: datetime, markets: Sequence[tuple[str, str, str]]
) -> None:
    """Plain PostgreSQL: rebuild the first level (5 minutes) over [start, end) for these (exchange,
    base, quote) markets only, in the caller's transaction (the caller commits). The levels above
    it are left to a `refresh_aggregates(..., upper=...)` after it over the same range."""
    if not markets or end <= start:
        return
    exchanges, base_ids, quote_ids = (list(column) for column in zip(*markets, strict=True))
    with conn.cursor() as cur:
        cur.execute(
            "SELECT refresh_ohlcv_first_level(%s, %s, %s, %s, %s)",
            (start, end, exchanges, base_ids, quote_ids),
        )
