"""The updater: closed bars from Redis (`ws_sub_…`) into `ohlcvs`, without losing or doubling one.

Every `updater_flush_seconds`:
1. read the outage and coverage records the fetchers queued, then each exchange's clock (the newest
   bar time its fetchers saw), so every bar read afterwards is at least as fresh as the clock that
   closes it, and every bar a coverage record vouches for is already in Redis;
2. read the `ws_sub_…` hashes named in `ws_sub_list`, many per round trip, and pick the closed
   bars (`closed_times`), straight into COPY text (no object per bar);
3. insert them, a batch of about `ROWS_PER_BATCH` per transaction, with "fill missing only" (a live
   bar never overwrites a row; one that changed after its minute was stored makes that minute an
   outage, so the repair fetches the exchange's final word); commit;
4. only then delete exactly what that batch stored, and only if it did not change meanwhile (one
   Lua compare-and-delete per batch), so `kill -9` at any instant loses nothing and doubles nothing;
   once every batch is committed, store the records of step 1 (coverage never runs ahead of its bars);
5. on plain PostgreSQL, each batch's writer then rebuilds that batch's markets' 5-minute buckets
   that have closed (the level proportional to the rows), and once all are in, one refresh builds
   the levels above, what earlier flushes left and each level's open buckets.
Steps 3-5 run on `WRITERS` threads, each with its own connection, while the main thread reads the
next batch (the database and Redis work in other processes, so all of it overlaps on several cores).
A database outage leaves everything in Redis; the next flush tries again.
"""

from __future__ import annotations

import io
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import psycopg2
import psycopg2.extras
import redis
from prometheus_client import Histogram
from psycopg2.extensions import connection as PgConnection

from common.candle import NUMBER_CHARS, MarketKey
from common.coverage import CoverageRange, record_coverage
from common.db import (
    DatabaseError,
    connect,
    copy_text,
    has_timescaledb,
    insert_missing_copy_text,
    refresh_aggregates,
    refresh_first_level,
)
from common.exchanges import EXCHANGES
from common.ohlcvs_versions import markets_written, oldest_by_market
from common.redis_keys import WS_OUTAGES, WS_SUB_LIST, WS_SUB_REJECTED, WS_UPDATER_HEALTH, ws_health_key
from common.redis_records import (
    OutageRecord,
    RejectedBar,
    decode_record,
    encode_record,
    said_closed,
    waiting_bar_values,
)
from common.settings import Settings
from common.timeutil import MINUTE_MS, ms_to_datetime

log = logging.getLogger(__name__)

CLOSE_AFTER_INTERVALS = 2
KEYS_PER_READ = 100
ROWS_PER_BATCH = 10_000
WRITERS = 2
"""Batches written at once, each by its own thread and connection: PostgreSQL's per-row cost
(indexes, the foreign-key check, ON CONFLICT) is most of a flush, and two backends use two cores."""
OUTAGES_PER_FLUSH = 50_000
SMALLEST_BUCKET_MS = 5 * MINUTE_MS
SECOND_LEVEL_MS = 15 * MINUTE_MS
"""Bucket width of `ohlcvs_summary_15min`, the first level the per-batch refresh leaves alone."""

# KEYS: ws_sub_list, then sub keys; ARGV: per key the number of fields n, then n (field, stored
# value) pairs. A field goes only if it still holds the value that was stored in the database.
DELETE_STORED = """
local a = 1
for k = 2, #KEYS do
  local key = KEYS[k]
  local n = tonumber(ARGV[a])
  for i = 1, n do
    local f = ARGV[a + 2 * i - 1]
    if redis.call('HGET', key, f) == ARGV[a + 2 * i] then redis.call('HDEL', key, f) end
  end
  a = a + 1 + 2 * n
  if redis.call('HLEN', key) == 0 then redis.call('SREM', KEYS[1], key) end
end
return 1
"""

# KEYS: ws_sub_list, ws_sub_rejected, the sub key; ARGV: field, stored value, the rejection record.
# The bar moves to the dead-letter list only if it still holds the value that was refused.
REJECT_STORED = """
if redis.call('HGET', KEYS[3], ARGV[1]) == ARGV[2] then
  redis.call('RPUSH', KEYS[2], ARGV[3])
  redis.call('HDEL', KEYS[3], ARGV[1])
  if redis.call('HLEN', KEYS[3]) == 0 then redis.call('SREM', KEYS[1], KEYS[3]) end
end
return 1
"""


def closed_times(bars: Mapping[int, str | bytes], exchange_clock_ms: int) -> list[int]:
    """Open times of the closed bars of one market (docs/architecture.md, "Closure and the updater"):
    every bar older than the newest one (a newer bar arrived), and the newest when the exchange said
    so or when the exchange's own clock is two intervals past it. Never the local clock. Bars are the
    stored JSON, as text or bytes."""
    if not bars:
        return []
    newest = max(bars)
    closed = sorted(t for t in bars if t != newest)
    if said_closed(bars[newest]) or exchange_clock_ms >= newest + CLOSE_AFTER_INTERVALS * MINUTE_MS:
        closed.append(newest)
    return closed


@dataclass(frozen=True, slots=True)
class FlushResult:
    rows: int
    inserted: int
    outages: int
    backlog: int


@dataclass(slots=True)
class Batch:
    """Closed bars as COPY lines, and what to delete once they are committed."""

    lines: list[bytes] = field(default_factory=list)
    values: list[bytes] = field(default_factory=list)
    """Each bar's five values, tab-joined, for one bulk check of the whole batch."""
    delete: list[tuple[str, list[bytes]]] = field(default_factory=list)
    """(sub key, [field, stored value, ...]); an empty list for a key whose hash is empty."""
    oldest_ms: int | None = None
    markets: list[MarketKey] = field(default_factory=list)
    """(exchange, base, quote) of the bars in the batch, for refreshing their aggregates."""


def split_sub_key(key: str, delimiter: str) -> MarketKey:
    exchange, base_id, quote_id = key[len("ws_sub_") :].split(delimiter)
    return MarketKey(exchange, base_id, quote_id)


def written_rows(
    stored: Iterable[tuple[str, list[bytes]]], delimiter: str
) -> Iterable[tuple[str, str, str, int]]:
    """(exchange, base_id, quote_id, time_ms) of the bars a batch stored (`Batch.delete`)."""
    for key, pairs in stored:
        if pairs:
            yield *split_sub_key(key, delimiter), min(int(t) for t in pairs[::2])


DECIMAL_VALUES = re.compile(
    rb"(?:[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?)(?:\t[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)"
    rb"(?:[eE][-+]?[0-9]+)?){4}"
)
"""Five decimal numbers, tab-separated, as PostgreSQL's numeric reads them."""


def bad_values(values: list[bytes], strict: bool = False) -> list[int]:
    """Indexes of the bars whose five values are not all made of number characters (one pass over
    the whole batch when every bar is good, the common case) or, `strict`, not all decimal numbers
    (`1.2.3` is made of number characters: only PostgreSQL's refusal of a batch pays for this)."""
    if strict:
        return [i for i, one in enumerate(values) if not DECIMAL_VALUES.fullmatch(one)]
    joined = b"\n".join(values)
    count = len(values)
    if (
        not joined.translate(None, NUMBER_CHARS + b"\t\n")
        and joined.count(b"\t") == 4 * count
        and b"\t\t" not in joined
        and b"\n\t" not in joined
        and b"\t\n" not in joined
        and not joined.startswith(b"\t")
        and not joined.endswith(b"\t")
    ):
        return []
    bad = []
    for i, one in enumerate(values):
        parts = one.split(b"\t")
        if len(parts) != 5 or not all(p and not p.translate(None, NUMBER_CHARS) for p in parts):
            bad.append(i)
    return bad


def check_batch(batch: Batch) -> None:
    """Every value is number text and every bar has five: the last guard before COPY."""
    bad = bad_values(batch.values)
    if bad:
        raise ValueError(f"prices and volumes must be decimal number text, got {batch.values[bad[0]]!r}")


def split_coverage(records: Iterable[bytes | str]) -> tuple[list[OutageRecord], list[CoverageRange]]:
    """The fetchers' queued records (`ws_outages`): the outages, and the coverage among them."""
    outages: list[OutageRecord] = []
    covered: list[CoverageRange] = []
    for raw in records:
        record = decode_record(raw)
        (covered if isinstance(record, CoverageRange) else outages).append(record)
    return outages, covered


def insert_outages(conn: PgConnection, records: Iterable[OutageRecord]) -> int:
    rows = [
        (
            r.exchange,
            r.base_id,
            r.quote_id,
            ms_to_datetime(r.start_ms),
            ms_to_datetime(r.end_ms),
            r.reason[:500],
        )
        for r in records
    ]
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
        self._move_aside = client.register_script(REJECT_STORED)
        self._local = threading.local()
        self._conns: list[PgConnection] = []
        self._conns_lock = threading.Lock()
        self._timescale: bool | None = None
        self._writers: ThreadPoolExecutor | None = None
        self._dirty_from_ms: int | None = None
        self.rows_flushed_total = 0
        self.flushes_ok = 0
        self.flushes_failed = 0
        self.last_backlog = 0
        self.flush_seconds: Histogram | None = None
        """Set by `fetchers.ws.metrics.updater_registry` when the process publishes metrics."""

    def _db(self) -> PgConnection:
        """This thread's connection (each writer thread has its own)."""
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = self._local.conn = connect(self.settings)
            self._timescale = has_timescaledb(conn)
            conn.commit()
            with self._conns_lock:
                self._conns = [c for c in self._conns if not c.closed] + [conn]
        return conn

    def close(self) -> None:
        """Close every connection (the writer threads reconnect on their next batch)."""
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()

    def stop(self) -> None:
        self.close()
        if self._writers is not None:
            self._writers.shutdown()
            self._writers = None

    def exchange_clocks(self) -> dict[str, int]:
        pipe = self.redis.pipeline(transaction=False)
        for exchange in EXCHANGES:
            pipe.hget(ws_health_key(exchange), "exchange_time_ms")
        return {ex: int(v) if v else 0 for ex, v in zip(EXCHANGES, pipe.execute(), strict=True)}

    def read_batches(self, clocks: Mapping[str, int]) -> Iterable[tuple[Batch, int]]:
        """Closed bars in batches of about `ROWS_PER_BATCH`, each with the number of bars read
        (closed or not) for the backlog figure."""
        keys = sorted(k.decode() for k in self.redis.smembers(WS_SUB_LIST))
        batch = Batch()
        seen = 0
        for start in range(0, len(keys), KEYS_PER_READ):
            chunk = keys[start : start + KEYS_PER_READ]
            pipe = self.redis.pipeline(transaction=False)
            for key in chunk:
                pipe.hgetall(key)
            for key, fields in zip(chunk, pipe.execute(), strict=True):
                seen += len(fields)
                try:
                    exchange, base_id, quote_id = split_sub_key(key, self.delimiter)
                except ValueError:
                    log.warning(
                        "ignoring %s: not a ws_sub_{exchange}%s{base}%s{quote} name",
                        key,
                        *[self.delimiter] * 2,
                    )
                    continue
                if not fields:
                    batch.delete.append((key, []))
                    continue
                try:
                    bars = {int(t): raw for t, raw in fields.items()}
                except ValueError:
                    bars = self._minute_fields(key, fields)
                closed = closed_times(bars, clocks.get(exchange, 0))
                if not closed:
                    continue
                market = f"\t{copy_text(exchange)}\t{copy_text(base_id)}\t{copy_text(quote_id)}\t".encode()
                pairs: list[bytes] = []
                for t in closed:
                    raw = bars[t]
                    try:
                        values = waiting_bar_values(t, raw)
                    except ValueError as exc:
                        self._reject(key, b"%d" % t, raw, str(exc))
                        continue
                    batch.values.append(values)
                    batch.lines.append(b"%d%s%s\n" % (t, market, values))
                    pairs += (b"%d" % t, raw)
                if not pairs:
                    continue
                batch.delete.append((key, pairs))
                batch.markets.append(MarketKey(exchange, base_id, quote_id))
                if batch.oldest_ms is None or closed[0] < batch.oldest_ms:
                    batch.oldest_ms = closed[0]
                if len(batch.lines) >= ROWS_PER_BATCH:
                    yield self._without_bad_values(batch), seen
                    batch, seen = Batch(), 0
        yield self._without_bad_values(batch), seen

    def _minute_fields(self, key: str, fields: Mapping[bytes, bytes]) -> dict[int, bytes]:
        """The fields named by a minute (ms); any other field is moved aside."""
        bars: dict[int, bytes] = {}
        for name, raw in fields.items():
            try:
                bars[int(name)] = raw
            except ValueError:
                self._reject(key, name, raw, "the field is not a minute's time in ms")
        return bars

    def _without_bad_values(self, batch: Batch, strict: bool = False) -> Batch:
        """The batch less the bars whose values are not decimal number text (moved aside)."""
        bad = set(bad_values(batch.values, strict))
        if not bad:
            return batch
        kept = Batch(oldest_ms=batch.oldest_ms, markets=batch.markets)
        i = 0
        for key, pairs in batch.delete:
            keep: list[bytes] = []
            for j in range(0, len(pairs), 2):
                if i in bad:
                    reason = "prices and volumes must be decimal number text"
                    self._reject(key, pairs[j], pairs[j + 1], reason)
                else:
                    keep += pairs[j : j + 2]
                    kept.lines.append(batch.lines[i])
                    kept.values.append(batch.values[i])
                i += 1
            if keep or not pairs:
                kept.delete.append((key, keep))
        return kept

    def _reject(self, key: str, name: bytes, raw: bytes, reason: str) -> None:
        """Move a stored bar that cannot be read to `ws_sub_rejected` (if it still holds the value
        read), so one bad value never blocks the bars behind it; logged with its key and text."""
        text = raw.decode(errors="backslashreplace")
        minute = name.decode(errors="backslashreplace")
        log.error(
            "moved an unreadable bar to %s: %s field %s: %s: %r", WS_SUB_REJECTED, key, minute, reason, text
        )
        record = encode_record(RejectedBar(key, minute, text, reason, int(time.time() * 1000)))
        self._move_aside(keys=[WS_SUB_LIST, WS_SUB_REJECTED, key], args=[name, raw, record])

    def _write(self, batch: Batch, refresh_until_ms: int | None) -> tuple[int, int]:
        """Commit one batch, then delete what it stored from Redis; then (plain PostgreSQL) rebuild
        its markets' 5-minute buckets over its minutes before `refresh_until_ms`, while the other
        writer inserts the next batch (the levels above follow once every batch is in). Returns
        the bars stored and the rows that were new."""
        check_batch(batch)
        conn = self._db()
        try:
            inserted = self._insert(conn, batch)
        except psycopg2.DataError:  # a value made of number characters that is no number
            readable = self._without_bad_values(batch, strict=True)
            if len(readable.lines) == len(batch.lines):
                raise
            batch = readable
            inserted = self._insert(conn, batch)
        if inserted:
            markets_written(self.settings, oldest_by_market(written_rows(batch.delete, self.delimiter)))
        self._delete_stored(batch.delete)
        if (
            refresh_until_ms is not None
            and batch.oldest_ms is not None
            and batch.oldest_ms < refresh_until_ms
        ):
            try:
                start, end = ms_to_datetime(batch.oldest_ms), ms_to_datetime(refresh_until_ms)
                refresh_first_level(conn, start, end, batch.markets)
                conn.commit()
            except BaseException:
                if not conn.closed:
                    conn.rollback()
                raise
        return len(batch.lines), inserted

    @staticmethod
    def _insert(conn: PgConnection, batch: Batch) -> int:
        try:
            inserted = insert_missing_copy_text(conn, io.BytesIO(b"".join(batch.lines))) if batch.lines else 0
            conn.commit()
        except BaseException:
            if not conn.closed:
                conn.rollback()
            raise
        return inserted

    def _store_records(self, records: list[bytes]) -> int:
        """Commit the outage and coverage records the fetchers queued, then trim them from Redis;
        returns how many outages they held."""
        gaps, covered = split_coverage(records)
        conn = self._db()
        try:
            insert_outages(conn, gaps)
            record_coverage(conn, covered)
            conn.commit()
        except BaseException:
            if not conn.closed:
                conn.rollback()
            raise
        self.redis.ltrim(WS_OUTAGES, len(records), -1)
        return len(gaps)

    def flush(self) -> FlushResult:
        """One pass over everything waiting; batches are committed (and only then deleted) one by
        one, so a failure part-way leaves the rest in Redis for the next flush."""
        # The records first: a coverage record was queued after the bars it covers, so they are
        # all in Redis (and closed by the clock read next) when it is read.
        records = self.redis.lrange(WS_OUTAGES, 0, OUTAGES_PER_FLUSH - 1)
        clocks = self.exchange_clocks()
        newest_clock = max(clocks.values(), default=0)
        closed_until = newest_clock - newest_clock % SMALLEST_BUCKET_MS
        outage_count = 0
        rows = inserted = backlog = 0
        oldest: int | None = None
        prior: tuple[int, int] | None = None
        prior_read = False
        pending: deque[Future[tuple[int, int]]] = deque()
        if self._writers is None:  # kept across flushes: each thread keeps its connection
            self._writers = ThreadPoolExecutor(WRITERS, thread_name_prefix="updater-db")
        writers = self._writers
        try:
            for batch, seen in self.read_batches(clocks):
                backlog += seen
                if not batch.lines and not batch.delete:
                    continue
                if batch.lines and not prior_read:  # before this flush writes a row
                    prior, prior_read = self._prior_unrefreshed(), True
                if len(pending) >= WRITERS:
                    stored, new = pending.popleft().result()
                    rows, inserted = rows + stored, inserted + new
                refresh_until = None if self._timescale else closed_until
                pending.append(writers.submit(self._write, batch, refresh_until))
                if batch.oldest_ms is not None:
                    oldest = batch.oldest_ms if oldest is None else min(oldest, batch.oldest_ms)
            while pending:
                stored, new = pending.popleft().result()
                rows, inserted = rows + stored, inserted + new
            if records:  # only now: every bar a coverage record vouches for is committed
                outage_count = self._store_records(records)
        except BaseException:
            if oldest is not None:  # some batches may be committed: their minutes need a refresh too
                dirty = [t for t in (self._dirty_from_ms, prior and prior[0]) if t is not None]
                self._dirty_from_ms = min([oldest, *dirty])
            raise
        finally:
            while pending:  # something failed: the batches already read still go in
                try:
                    pending.popleft().result()
                except BaseException:  # noqa: BLE001 - the first error is the one raised
                    pass
        self.rows_flushed_total += rows
        if oldest is not None:
            self._refresh_aggregates(oldest, prior, closed_until, newest_clock)
        return FlushResult(rows, inserted, outage_count, backlog - rows)

    def _delete_stored(self, stored: list[tuple[str, list[bytes]]]) -> None:
        for start in range(0, len(stored), KEYS_PER_READ):
            chunk = stored[start : start + KEYS_PER_READ]
            args: list[bytes | int] = []
            for _, pairs in chunk:
                args.append(len(pairs) // 2)
                args += pairs
            self._delete(keys=[WS_SUB_LIST, *(key for key, _ in chunk)], args=args)

    def _prior_unrefreshed(self) -> tuple[int, int] | None:
        """[start, end) in ms of the rows written before this flush that no refresh may have covered:
        from where the last flush's refresh stopped or, on this process's first, from the bucket
        before the newest 15-minute one built (an updater killed between its commit and its refresh,
        or a bar closed late; the second level, as writers build the first ahead of the levels above
        it, which one transaction builds together), every row with none built; up to the newest
        row. None when there is no such row, and on TimescaleDB."""
        conn = self._db()
        if self._timescale:
            return None
        with conn.cursor() as cur:
            cur.execute("SELECT (extract(epoch FROM max(time)) * 1000)::bigint FROM ohlcvs")
            newest = cur.fetchone()[0]
            start = self._dirty_from_ms
            if newest is not None and start is None:
                cur.execute(
                    "SELECT (extract(epoch FROM coalesce((SELECT max(bucket) FROM ohlcvs_summary_15min) "
                    "- %s * interval '1 millisecond', (SELECT min(time) FROM ohlcvs))) * 1000)::bigint",
                    (SECOND_LEVEL_MS,),
                )
                start = cur.fetchone()[0]
        conn.commit()
        if newest is None or start is None:
            return None
        return start, newest + MINUTE_MS

    def _refresh_aggregates(
        self, oldest_ms: int, prior: tuple[int, int] | None, closed_until: int, newest_clock: int
    ) -> None:
        """Plain PostgreSQL: each batch rebuilt its own markets' 5-minute buckets up to
        `closed_until` (the buckets the exchange's clock closed) right after its commit; what is
        left, in one call: every level over the rows of earlier flushes in [prior), the levels above
        the first over this flush's [oldest_ms, closed_until), then each level's open buckets and
        their marks (each level is built from the one below, so wider buckets follow). TimescaleDB's
        real-time aggregation needs nothing."""
        if self._timescale:
            return
        first = oldest_ms if prior is None else min(oldest_ms, prior[0])
        if closed_until <= first - first % SMALLEST_BUCKET_MS:
            self._dirty_from_ms = first  # its bucket is still open: refresh once it closes
            return
        start, end = (
            (closed_until, closed_until) if prior is None else (prior[0], min(prior[1], closed_until))
        )
        refresh_aggregates(  # open buckets are judged by the exchange's clock, not this machine's
            self.settings,
            ms_to_datetime(start),
            ms_to_datetime(max(start, end)),
            ms_to_datetime(newest_clock),
            (ms_to_datetime(oldest_ms), ms_to_datetime(max(oldest_ms, closed_until))),
        )
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
                self.flushes_ok += 1
                self.last_backlog = result.backlog
                if self.flush_seconds is not None:
                    self.flush_seconds.observe(time.monotonic() - started)
                if result.rows or result.outages:
                    log.info(
                        "flushed %d closed bars (%d new rows), %d outage records; %d bars wait",
                        result.rows,
                        result.inserted,
                        result.outages,
                        result.backlog,
                    )
            except (DatabaseError, psycopg2.Error) as exc:
                self.flushes_failed += 1
                log.warning("database unavailable, bars wait in Redis: %s", str(exc).strip().splitlines()[0])
                self.close()
            except redis.exceptions.RedisError as exc:
                self.flushes_failed += 1
                log.warning("Redis unavailable: %s", exc)
            remaining = period - (time.monotonic() - started)
            deadline = time.monotonic() + max(remaining, 0)
            while not stop_requested() and time.monotonic() < deadline:
                time.sleep(min(0.2, max(deadline - time.monotonic(), 0)))
