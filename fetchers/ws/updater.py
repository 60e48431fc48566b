"""The updater: closed bars from Redis (`ws_sub_…`) into `ohlcvs`, without losing or doubling one.

Every `updater_flush_seconds`:
1. read each exchange's clock (the newest bar time its fetchers saw) - first, so every bar read
   afterwards is at least as fresh as the clock that closes it;
2. read every `ws_sub_…` hash named in `ws_sub_list` and pick the closed bars (`closed_times`);
3. insert them in one transaction with "fill missing only" (a live bar never overwrites a row) and
   store the outage and coverage records the fetchers queued (read before the bars, so the bars a
   coverage record vouches for are in this transaction or an earlier one); commit;
4. only then delete exactly what was stored, and only if it did not change meanwhile (a Lua
   compare-and-delete), so `kill -9` at any instant loses nothing and doubles nothing;
5. on plain PostgreSQL, refresh the aggregates over the 5-minute buckets that have closed.
A database outage leaves everything in Redis; the next flush tries again.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import psycopg2
import psycopg2.extras
import redis
from psycopg2.extensions import connection as PgConnection

from common.candle import Candle
from common.coverage import WS, CoverageRange, record_coverage
from common.db import DatabaseError, connect, has_timescaledb, insert_missing_candles, refresh_aggregates
from common.redis_keys import WS_OUTAGES, WS_SUB_LIST, WS_UPDATER_HEALTH, ws_health_key
from common.settings import EXCHANGES, Settings
from common.timeutil import MINUTE_MS, ms_to_datetime
from fetchers.ws.coverage import COVERAGE_KIND

log = logging.getLogger(__name__)

CLOSE_AFTER_INTERVALS = 2
KEYS_PER_READ = 500
OUTAGES_PER_FLUSH = 50_000
SMALLEST_BUCKET_MS = 5 * MINUTE_MS

# KEYS: ws_sub_list, then sub keys; ARGV: per key a JSON array of [time, stored json] pairs.
DELETE_STORED = """
for k = 2, #KEYS do
  local key = KEYS[k]
  for _, pair in ipairs(cjson.decode(ARGV[k - 1])) do
    if redis.call('HGET', key, pair[1]) == pair[2] then redis.call('HDEL', key, pair[1]) end
  end
  if redis.call('HLEN', key) == 0 then redis.call('SREM', KEYS[1], key) end
end
return 1
"""


def closed_times(bars: Mapping[int, str], exchange_clock_ms: int) -> list[int]:
    """Open times of the closed bars of one market (DESIGN.md): every bar older than the newest one
    (a newer bar arrived), and the newest when the exchange said so or when the exchange's own clock
    is two intervals past it. Never the local clock."""
    if not bars:
        return []
    newest = max(bars)
    closed = sorted(t for t in bars if t != newest)
    if '"closed":true' in bars[newest] or exchange_clock_ms >= newest + CLOSE_AFTER_INTERVALS * MINUTE_MS:
        closed.append(newest)
    return closed


@dataclass(frozen=True, slots=True)
class FlushResult:
    rows: int
    inserted: int
    outages: int
    backlog: int


def split_sub_key(key: str, delimiter: str) -> tuple[str, str, str]:
    exchange, base_id, quote_id = key[len("ws_sub_") :].split(delimiter)
    return exchange, base_id, quote_id


def bar_candle(exchange: str, base_id: str, quote_id: str, text: str) -> Candle:
    """A stored bar as the Candle the database layer takes (time in ms, exact decimal text)."""
    bar = json.loads(text)
    return Candle(
        exchange,
        base_id,
        quote_id,
        int(bar["time"]),
        bar["open"],
        bar["high"],
        bar["low"],
        bar["close"],
        bar["volume"],
    )


def split_coverage(records: list[str]) -> tuple[list[str], list[CoverageRange]]:
    """The fetchers' queued records: outages, and the coverage records among them."""
    outages: list[str] = []
    covered: list[CoverageRange] = []
    for text in records:
        r = json.loads(text)
        if r.get("kind") == COVERAGE_KIND:
            covered.append(
                CoverageRange(
                    r["exchange"], r["base_id"], r["quote_id"], int(r["start_ms"]), int(r["end_ms"]), WS
                )
            )
        else:
            outages.append(text)
    return outages, covered


def insert_outages(conn: PgConnection, records: Iterable[str]) -> int:
    rows = []
    for text in records:
        r = json.loads(text)
        rows.append(
            (
                r["exchange"],
                r["base_id"],
                r["quote_id"],
                ms_to_datetime(r["start_ms"]),
                ms_to_datetime(r["end_ms"]),
                r["reason"][:500],
            )
        )
    if not rows:
        return 0
    with conn.cursor() as cur:
        psycopg2.extras.execute_values(
            cur,
            "INSERT INTO ohlcvs_outages (exchange, base_id, quote_id, start_time, end_time, reason) "
            "VALUES %s ON CONFLICT DO NOTHING",
            rows,
            page_size=1000,
        )
        return cur.rowcount


class Updater:
    def __init__(self, settings: Settings, client: redis.Redis) -> None:
        self.settings = settings
        self.redis = client
        self.delimiter = settings.redis_key_delimiter
        self._delete = client.register_script(DELETE_STORED)
        self._conn: PgConnection | None = None
        self._timescale: bool | None = None
        self._dirty_from_ms: int | None = None
        self.rows_flushed_total = 0

    def _db(self) -> PgConnection:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.settings)
            self._timescale = has_timescaledb(self._conn)
            self._conn.commit()
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def exchange_clocks(self) -> dict[str, int]:
        pipe = self.redis.pipeline(transaction=False)
        for exchange in EXCHANGES:
            pipe.hget(ws_health_key(exchange), "exchange_time_ms")
        return {ex: int(v) if v else 0 for ex, v in zip(EXCHANGES, pipe.execute(), strict=True)}

    def read_closed(
        self, clocks: Mapping[str, int]
    ) -> tuple[list[Candle], dict[str, list[tuple[str, str]]], int]:
        """Closed bars, what to delete once stored (key -> [(time, raw json)]), and the backlog size."""
        keys = sorted(k.decode() for k in self.redis.smembers(WS_SUB_LIST))
        candles: list[Candle] = []
        stored: dict[str, list[tuple[str, str]]] = {}
        backlog = 0
        for start in range(0, len(keys), KEYS_PER_READ):
            chunk = keys[start : start + KEYS_PER_READ]
            pipe = self.redis.pipeline(transaction=False)
            for key in chunk:
                pipe.hgetall(key)
            for key, fields in zip(chunk, pipe.execute(), strict=True):
                backlog += len(fields)
                try:
                    exchange, base_id, quote_id = split_sub_key(key, self.delimiter)
                except ValueError:
                    log.warning(
                        "ignoring %s: not a ws_sub_{exchange}%s{base}%s{quote} name",
                        key,
                        *[self.delimiter] * 2,
                    )
                    continue
                bars = {int(t): raw.decode() for t, raw in fields.items()}
                closed = closed_times(bars, clocks.get(exchange, 0))
                if not fields:
                    stored[key] = []
                for t in closed:
                    candles.append(bar_candle(exchange, base_id, quote_id, bars[t]))
                    stored.setdefault(key, []).append((str(t), bars[t]))
        return candles, stored, backlog

    def flush(self) -> FlushResult:
        # The records first: a coverage record was queued after the bars it covers, so they are
        # all in Redis (and closed by the clock read next) when it is read.
        outages = [o.decode() for o in self.redis.lrange(WS_OUTAGES, 0, OUTAGES_PER_FLUSH - 1)]
        clocks = self.exchange_clocks()
        candles, stored, backlog = self.read_closed(clocks)
        if not candles and not outages and not stored:
            return FlushResult(0, 0, 0, backlog)
        gaps, covered = split_coverage(outages)
        conn = self._db()
        try:
            inserted = insert_missing_candles(conn, candles)
            insert_outages(conn, gaps)
            record_coverage(conn, covered)
            conn.commit()
        except BaseException:
            if not conn.closed:
                conn.rollback()
            raise
        if outages:
            self.redis.ltrim(WS_OUTAGES, len(outages), -1)
        self._delete_stored(stored)
        self.rows_flushed_total += len(candles)
        if candles:
            self._refresh_aggregates(min(c.time for c in candles), clocks)
        return FlushResult(len(candles), inserted, len(gaps), backlog - len(candles))

    def _delete_stored(self, stored: Mapping[str, list[tuple[str, str]]]) -> None:
        items = list(stored.items())
        for start in range(0, len(items), KEYS_PER_READ):
            chunk = items[start : start + KEYS_PER_READ]
            keys = [WS_SUB_LIST, *(key for key, _ in chunk)]
            self._delete(keys=keys, args=[json.dumps(pairs) for _, pairs in chunk])

    def _refresh_aggregates(self, oldest_ms: int, clocks: Mapping[str, int]) -> None:
        """Plain PostgreSQL: rebuild the levels over the 5-minute buckets that closed since last
        time (each level is built from the one below, so wider buckets follow). TimescaleDB's
        real-time aggregation needs nothing."""
        if self._timescale:
            return
        start = oldest_ms if self._dirty_from_ms is None else min(self._dirty_from_ms, oldest_ms)
        newest_clock = max(clocks.values(), default=0)
        closed_until = newest_clock - newest_clock % SMALLEST_BUCKET_MS
        if closed_until <= start - start % SMALLEST_BUCKET_MS:
            self._dirty_from_ms = start  # its bucket is still open: refresh once it closes
            return
        refresh_aggregates(self.settings, ms_to_datetime(start), ms_to_datetime(closed_until))
        self._dirty_from_ms = closed_until

    def write_health(self, backlog: int) -> None:
        self.redis.hset(
            WS_UPDATER_HEALTH,
            mapping={
                "last_flush_ms": int(time.time() * 1000),
                "backlog": backlog,
                "rows_flushed_total": self.rows_flushed_total,
            },
        )

    def run(self, stop_requested) -> None:
        """Flush every `updater_flush_seconds` until `stop_requested()`; services failing are retried."""
        period = self.settings.updater_flush_seconds
        while not stop_requested():
            started = time.monotonic()
            try:
                result = self.flush()
                self.write_health(result.backlog)
                if result.rows or result.outages:
                    log.info(
                        "flushed %d closed bars (%d new rows), %d outage records; %d bars wait",
                        result.rows,
                        result.inserted,
                        result.outages,
                        result.backlog,
                    )
            except (DatabaseError, psycopg2.Error) as exc:
                log.warning("database unavailable, bars wait in Redis: %s", str(exc).strip().splitlines()[0])
                self.close()
            except redis.exceptions.RedisError as exc:
                log.warning("Redis unavailable: %s", exc)
            remaining = period - (time.monotonic() - started)
            deadline = time.monotonic() + max(remaining, 0)
            while not stop_requested() and time.monotonic() < deadline:
                time.sleep(min(0.2, max(deadline - time.monotonic(), 0)))
