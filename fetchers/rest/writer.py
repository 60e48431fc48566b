"""Batching database writer for the backfill: many requests' candles per upsert, completion after commit.

Upserts run in a worker thread (psycopg2 releases the GIL while PostgreSQL works), one batch at a
time, while the event loop keeps fetching the next batch. A request is marked complete in the job
store only after the transaction holding its candles has committed — so a crash at any point
leaves it in flight, to be re-queued, never lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from common.candle import CandleBlock
from common.coverage import CoverageRange, record_coverage
from common.db import (
    FetchErrorRecord,
    connect,
    copy_new_candle_blocks,
    record_fetch_error,
    upsert_candle_blocks,
)
from common.ohlcvs_versions import markets_written, oldest_by_market
from common.settings import Settings
from fetchers.rest.service_retry import with_database_retry

log = logging.getLogger(__name__)

BATCH_ROWS = 20_000
BATCH_SECONDS = 0.5


@dataclass
class _Batch:
    blocks: list[CandleBlock] = field(default_factory=list)
    owners: list[tuple[object, int]] = field(default_factory=list)
    rows: int = 0


OnCommitted = Callable[[list[tuple[object, int]]], Awaitable[None]]
CoverageOf = Callable[[object], CoverageRange | None]


class CandleWriter:
    """`add(owner, block)` buffers; after each commit `on_committed([(owner, count), ...])` is
    awaited with every owner the transaction covered. With `coverage_of`, the range each owner
    covers goes into `ohlcvs_coverage` in the transaction that holds its candles. A write that
    failed for good in the background (the batch's timer) is raised by the next `add` or `flush`."""

    def __init__(
        self,
        settings: Settings,
        on_committed: OnCommitted,
        batch_rows: int = BATCH_ROWS,
        batch_seconds: float = BATCH_SECONDS,
        coverage_of: CoverageOf | None = None,
        copy_when_new: bool = False,
    ):
        """`copy_when_new`: COPY straight into `ohlcvs` where the batch's ranges hold no rows yet
        (`common.db.copy_new_candle_blocks`), else upsert: for writers of whole archive files."""
        self.settings = settings
        self.copy_when_new = copy_when_new
        self.on_committed = on_committed
        self.coverage_of = coverage_of
        self.batch_rows = batch_rows
        self.batch_seconds = batch_seconds
        self._batch = _Batch()
        self._flush_lock = asyncio.Lock()
        self._db_lock = asyncio.Lock()
        self._conn = None
        self._timer: asyncio.Task | None = None
        self._writes: set[asyncio.Future] = set()
        self._failure: Exception | None = None

    def _connection(self):
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.settings)
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001 - it is broken already
                pass
            self._conn = None

    def _write_sync(self, blocks: list[CandleBlock], covered: list[CoverageRange]) -> None:
        def attempt() -> None:
            conn = self._connection()
            with conn:  # commit, or roll back on error; the connection stays open
                if not self.copy_when_new or copy_new_candle_blocks(conn, blocks) is None:
                    upsert_candle_blocks(conn, blocks)
                record_coverage(conn, covered)

        with_database_retry(self.settings, attempt, self._drop_connection)
        markets_written(
            self.settings,
            oldest_by_market((b.exchange, b.base_id, b.quote_id, b.times[0]) for b in blocks if b.times),
        )

    async def add(self, owner: object, block: CandleBlock) -> None:
        """Buffer one request's candles; flushes when the batch is full. Applies backpressure:
        while a flush is running, a full batch waits for it instead of growing without bound."""
        self._raise_failure()
        batch = self._batch
        batch.blocks.append(block)
        batch.owners.append((owner, len(block)))
        batch.rows += len(block)
        if batch.rows >= self.batch_rows:
            await self.flush()
        elif self._timer is None or self._timer.done():
            self._timer = asyncio.create_task(self._flush_later())

    async def _flush_later(self) -> None:
        await asyncio.sleep(self.batch_seconds)
        try:
            await self.flush()
        except Exception as error:  # noqa: BLE001 - nobody awaits this task: the next add or flush raises it
            self._failure = self._failure or error

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    async def flush(self) -> None:
        self._raise_failure()
        async with self._flush_lock:
            batch, self._batch = self._batch, _Batch()
            if not batch.owners:
                return
            write = asyncio.ensure_future(self._write_batch(batch))
            self._writes.add(write)
            write.add_done_callback(self._write_done)
            # Shielded: a cancelled caller must not abandon a write its thread is still doing.
            await asyncio.shield(write)

    def _write_done(self, write: asyncio.Future) -> None:
        """A write that failed for good fails the writer: the next `add` or `flush` raises its error
        (a cancelled flush leaves its shielded write running, with nobody to hear how it ended)."""
        self._writes.discard(write)
        if not write.cancelled() and write.exception() is not None:
            self._failure = self._failure or write.exception()

    async def _write_batch(self, batch: _Batch) -> None:
        covered = []
        if self.coverage_of is not None:
            covered = [c for c in (self.coverage_of(owner) for owner, _ in batch.owners) if c is not None]
        async with self._db_lock:
            await asyncio.to_thread(self._write_sync, batch.blocks, covered)
        await self.on_committed(batch.owners)

    async def record_error(self, record: FetchErrorRecord) -> None:
        def attempt() -> None:
            conn = self._connection()
            with conn:
                record_fetch_error(conn, record)

        def write() -> None:
            with_database_retry(self.settings, attempt, self._drop_connection)

        async with self._db_lock:
            await asyncio.to_thread(write)

    async def close(self) -> None:
        if self._timer is not None and not self._timer.done():
            self._timer.cancel()
        try:
            await self.flush()
        finally:
            if self._writes:
                await asyncio.gather(*self._writes, return_exceptions=True)
            if self._conn is not None:
                self._conn.close()
