"""The `ohlcvs_coverage` table: which minutes of each market are known complete, and by what.

`record_coverage` merges ranges into the table inside the caller's transaction — the REST writer
calls it in the transaction that holds the request's candles, the updater in the one that holds the
live bars — so coverage is never claimed for rows that are not committed. Writers of the same
market are serialised by a transaction-scoped advisory lock (taken in a fixed order, so two writers
never wait on each other in a cycle); ranges of one market and source stay merged.
`load_evidence` reads everything the completeness rules (`common.completeness`) judge by.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from psycopg2.extensions import connection as PgConnection

from common.completeness import MarketEvidence
from common.ranges import Range, merge
from common.timeutil import datetime_to_ms

REST = "rest"
WS = "ws"
ARCHIVE = "archive"
"""A file of the exchange's public data archive whose checksum matched: final, like REST."""
SOURCES = (REST, WS, ARCHIVE)
FINAL_SOURCES = (REST, ARCHIVE)
"""Sources that are the exchange's final word: what they cover is complete whatever the live feed did."""

PairKey = tuple[str, str]
"""(base_id, quote_id) of a market of one exchange."""


@dataclass(frozen=True, slots=True)
class CoverageRange:
    """Minutes [start_ms, end_ms) of one market known complete, and the source that says so."""

    exchange: str
    base_id: str
    quote_id: str
    start_ms: int
    end_ms: int
    source: str


def lock_key(exchange: str, base_id: str, quote_id: str) -> int:
    """A stable signed 64-bit advisory-lock key for one market's coverage rows."""
    digest = hashlib.blake2b(f"coverage\0{exchange}\0{base_id}\0{quote_id}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


_MERGE = """
WITH new_ranges AS (
    SELECT exchange, base_id, quote_id, source,
           timestamptz 'epoch' + s_ms * interval '1 millisecond' AS start_time,
           timestamptz 'epoch' + e_ms * interval '1 millisecond' AS end_time
    FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::bigint[], %s::bigint[])
         AS n(exchange, base_id, quote_id, source, s_ms, e_ms)
), gone AS (
    DELETE FROM ohlcvs_coverage c USING new_ranges n
    WHERE c.exchange = n.exchange AND c.base_id = n.base_id AND c.quote_id = n.quote_id
      AND c.source = n.source AND c.start_time <= n.end_time AND c.end_time >= n.start_time
    RETURNING c.exchange, c.base_id, c.quote_id, c.source, c.start_time, c.end_time
), all_ranges AS (
    SELECT * FROM new_ranges UNION ALL SELECT * FROM gone
), marked AS (
    SELECT *, CASE WHEN start_time <= max(end_time) OVER earlier THEN 0 ELSE 1 END AS starts_island
    FROM all_ranges
    WINDOW earlier AS (PARTITION BY exchange, base_id, quote_id, source ORDER BY start_time, end_time
                       ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
), islands AS (
    SELECT *, sum(starts_island) OVER (PARTITION BY exchange, base_id, quote_id, source
                                       ORDER BY start_time, end_time ROWS UNBOUNDED PRECEDING) AS island
    FROM marked
)
INSERT INTO ohlcvs_coverage (exchange, base_id, quote_id, source, start_time, end_time)
SELECT exchange, base_id, quote_id, source, min(start_time), max(end_time)
FROM islands GROUP BY exchange, base_id, quote_id, source, island
"""


def record_coverage(conn: PgConnection, ranges: Iterable[CoverageRange]) -> int:
    """Merge `ranges` into `ohlcvs_coverage` in the caller's transaction (no commit here); returns
    how many merged ranges were written."""
    grouped: dict[tuple[str, str, str, str], list[Range]] = defaultdict(list)
    for r in ranges:
        if r.source not in SOURCES:
            raise ValueError(f"unknown coverage source {r.source!r}")
        grouped[(r.exchange, r.base_id, r.quote_id, r.source)].append((r.start_ms, r.end_ms))
    columns: list[list] = [[], [], [], [], [], []]
    for (exchange, base_id, quote_id, source), spans in grouped.items():
        for start, end in merge(spans):
            for column, value in zip(columns, (exchange, base_id, quote_id, source, start, end), strict=True):
                column.append(value)
    if not columns[0]:
        return 0
    keys = sorted({lock_key(e, b, q) for e, b, q, _ in grouped})
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(k) FROM unnest(%s::bigint[]) AS k", (keys,))
        cur.execute(_MERGE, columns)
    return len(columns[0])


def read_coverage(
    conn: PgConnection,
    exchange: str,
    base_id: str | None = None,
    quote_id: str | None = None,
    start_ms: int | None = None,
    end_ms: int | None = None,
) -> dict[PairKey, dict[str, list[Range]]]:
    """Covered ranges per market and source (overlapping [start_ms, end_ms) when given)."""
    query = (
        "SELECT base_id, quote_id, source, start_time, end_time FROM ohlcvs_coverage "
        "WHERE exchange = %(exchange)s"
        " AND (%(base)s::text IS NULL OR (base_id = %(base)s AND quote_id = %(quote)s))"
        " AND (%(start)s::bigint IS NULL OR end_time > timestamptz 'epoch' + %(start)s * interval '1 ms')"
        " AND (%(end)s::bigint IS NULL OR start_time < timestamptz 'epoch' + %(end)s * interval '1 ms')"
        " ORDER BY base_id, quote_id, source, start_time"
    )
    found: dict[PairKey, dict[str, list[Range]]] = defaultdict(lambda: {s: [] for s in SOURCES})
    with conn.cursor() as cur:
        cur.execute(
            query,
            {"exchange": exchange, "base": base_id, "quote": quote_id, "start": start_ms, "end": end_ms},
        )
        for base, quote, source, start, end in cur.fetchall():
            found[(base, quote)][source].append((datetime_to_ms(start), datetime_to_ms(end)))
    return dict(found)


def read_outages(
    conn: PgConnection,
    exchange: str,
    base_id: str | None = None,
    quote_id: str | None = None,
    since_ms: int = 0,
) -> dict[PairKey, list[Range]]:
    """Spans the live pipeline recorded as possibly incomplete (`ohlcvs_outages`)."""
    return _ranges_by_market(
        conn,
        "SELECT base_id, quote_id, start_time, end_time FROM ohlcvs_outages WHERE exchange = %(exchange)s"
        " AND (%(base)s::text IS NULL OR (base_id = %(base)s AND quote_id = %(quote)s))"
        " AND end_time > timestamptz 'epoch' + %(since)s * interval '1 ms'",
        {"exchange": exchange, "base": base_id, "quote": quote_id, "since": since_ms},
    )


def read_failed_requests(
    conn: PgConnection,
    exchange: str,
    base_id: str | None = None,
    quote_id: str | None = None,
    since_ms: int = 0,
) -> dict[PairKey, list[Range]]:
    """Ranges of REST requests that failed for good (`ohlcvs_errors`), per market."""
    return _ranges_by_market(
        conn,
        "SELECT s.base_id, s.quote_id, e.start_date, e.end_date FROM ohlcvs_errors e"
        " JOIN symbol_exchange s ON s.exchange = e.exchange AND s.symbol = e.symbol"
        " WHERE e.exchange = %(exchange)s AND e.start_date IS NOT NULL AND e.end_date IS NOT NULL"
        " AND (%(base)s::text IS NULL OR (s.base_id = %(base)s AND s.quote_id = %(quote)s))"
        " AND e.end_date > timestamptz 'epoch' + %(since)s * interval '1 ms'",
        {"exchange": exchange, "base": base_id, "quote": quote_id, "since": since_ms},
    )


def _ranges_by_market(conn: PgConnection, query: str, params: dict) -> dict[PairKey, list[Range]]:
    """Rows of (base_id, quote_id, start, end) as millisecond ranges per market."""
    found: dict[PairKey, list[Range]] = defaultdict(list)
    with conn.cursor() as cur:
        cur.execute(query, params)
        for base, quote, start, end in cur.fetchall():
            found[(base, quote)].append((datetime_to_ms(start), datetime_to_ms(end)))
    return dict(found)


def read_history_bounds(
    conn: PgConnection, exchange: str, base_id: str | None = None, quote_id: str | None = None
) -> dict[PairKey, Range]:
    """Per market of `symbol_exchange` that has rows: (first bar time, last bar time + 1 minute).
    Two index probes per market on the primary key, never a scan of `ohlcvs`."""
    found: dict[PairKey, Range] = {}
    with conn.cursor() as cur:
        cur.execute(
            "SELECT s.base_id, s.quote_id,"
            " (SELECT o.time FROM ohlcvs o WHERE o.exchange = s.exchange AND o.base_id = s.base_id"
            "  AND o.quote_id = s.quote_id ORDER BY o.time LIMIT 1),"
            " (SELECT o.time FROM ohlcvs o WHERE o.exchange = s.exchange AND o.base_id = s.base_id"
            "  AND o.quote_id = s.quote_id ORDER BY o.time DESC LIMIT 1)"
            " FROM symbol_exchange s WHERE s.exchange = %(exchange)s"
            " AND (%(base)s::text IS NULL OR (s.base_id = %(base)s AND s.quote_id = %(quote)s))",
            {"exchange": exchange, "base": base_id, "quote": quote_id},
        )
        for base, quote, first, last in cur.fetchall():
            if first is not None:
                found[(base, quote)] = (datetime_to_ms(first), datetime_to_ms(last) + 60_000)
    return found


def load_evidence(
    conn: PgConnection,
    exchange: str,
    base_id: str | None = None,
    quote_id: str | None = None,
    since_ms: int = 0,
) -> dict[PairKey, MarketEvidence]:
    """What the database knows about the completeness of one market or of every market of `exchange`."""
    bounds = read_history_bounds(conn, exchange, base_id, quote_id)
    coverage = read_coverage(conn, exchange, base_id, quote_id, since_ms)
    outages = read_outages(conn, exchange, base_id, quote_id, since_ms)
    failed = read_failed_requests(conn, exchange, base_id, quote_id, since_ms)
    keys = set(bounds) | set(coverage) | set(outages) | set(failed)
    return {
        key: MarketEvidence(
            bounds=bounds.get(key),
            rest=[r for source in FINAL_SOURCES for r in coverage.get(key, {}).get(source, [])],
            ws=coverage.get(key, {}).get(WS, []),
            outages=outages.get(key, []),
            failed=failed.get(key, []),
        )
        for key in keys
    }
