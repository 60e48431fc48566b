"""The backfill engine: drain one job's durable queue under the exchange's shared rate budget.

Exchange-agnostic: everything exchange-specific comes from the adapter (request building, parsing,
error classification, limits). Any number of engines — in Celery workers on several machines, or
in the CLI with `--local` — can drain the same job together; each request is claimed by one.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import uvloop

from common.backoff import backoff_seconds
from common.candle import CandleBlock
from common.coverage import ARCHIVE, REST, CoverageRange
from common.db import FetchErrorRecord, refresh_aggregates
from common.redis_clients import async_client
from common.settings import Settings
from common.timeutil import ms_to_datetime
from fetchers.exchanges import get_adapter
from fetchers.exchanges.base import ErrorKind, ExchangeError
from fetchers.rest.archive import ArchiveClient
from fetchers.rest.exchange_clock import ExchangeClock
from fetchers.rest.job_store import HEARTBEAT_TTL_SECONDS, Claim, JobInfo, JobStore
from fetchers.rest.metrics import EXCHANGE_USED_WEIGHT, count_request
from fetchers.rest.rate_limiter import LOW, SharedRateLimiter
from fetchers.rest.service_retry import with_database_retry
from fetchers.rest.sources import ARCHIVE as ARCHIVE_ONLY
from fetchers.rest.sources import rest_fallback
from fetchers.rest.writer import CandleWriter

log = logging.getLogger(__name__)

BACKOFF_BASE_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 30.0
MAX_RATE_LIMIT_WAITS = 20
ARCHIVE_WRITERS = 2
ORPHAN_POLL_SECONDS = 1.0
YIELD_POLL_SECONDS = 0.25

T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a backfill coroutine to its end on uvloop, the backfill's event loop: it spends less CPU
    per request than asyncio's own loop (see benchmarks/backfill.py)."""
    return uvloop.run(coroutine)


@dataclass(frozen=True, slots=True)
class EngineOptions:
    """Knobs of one engine run; defaults come from settings."""

    concurrency: int
    max_retries: int
    timeout_seconds: float
    unlimited_rate: bool = False
    backoff_base_seconds: float = BACKOFF_BASE_SECONDS
    backoff_max_seconds: float = BACKOFF_MAX_SECONDS

    @classmethod
    def from_settings(cls, settings: Settings, **overrides) -> EngineOptions:
        values = dict(
            concurrency=settings.rest_concurrency,
            max_retries=settings.rest_max_retries,
            timeout_seconds=settings.rest_timeout_seconds,
        )
        values.update(overrides)
        return cls(**values)


@dataclass(frozen=True, slots=True)
class FetchOutcome:
    """How one request ended: its candles, or the error that finally stopped it."""

    candles: CandleBlock | None
    error: ExchangeError | None = None
    exception_class: str = ""


def request_coverage(claim: Claim) -> CoverageRange:
    """A request that succeeded covers the whole range it asked for (no candle = no trade); so does
    an archive file whose checksum matched (source `archive`)."""
    t = claim.task
    return CoverageRange(
        t.exchange, t.base_id, t.quote_id, t.start_ms, t.end_ms, ARCHIVE if t.archive else REST
    )


class BackfillEngine:
    def __init__(
        self,
        settings: Settings,
        job_id: str,
        options: EngineOptions | None = None,
        worker_id: str | None = None,
        yield_when: Callable[[], Awaitable[bool]] | None = None,
    ):
        """`yield_when`: asked before each request; when it says True the engine stops after the
        requests in hand (the rest stay queued for a later run), e.g. a repair giving its worker to
        user backfills waiting in the queue."""
        self.settings = settings
        self.yield_when = yield_when
        self.yielded = False
        self.job_id = job_id
        self.options = options or EngineOptions.from_settings(settings)
        self.worker_id = worker_id or f"{uuid.uuid4().hex[:8]}"
        self.requests_sent = 0
        self.archive_files = 0
        self._sent_reported = 0
        self.refresh_seconds = 0.0
        self._clock: ExchangeClock | None = None
        self._file_writers: Iterator[CandleWriter] | None = None

    async def run(self) -> JobInfo:
        """Work until the job's queue is empty; refresh aggregates if this run finished the job."""
        client = async_client(self.settings, ride_out_outages=True)
        store = JobStore(client)
        heartbeat: asyncio.Task | None = None
        try:
            job = await store.info(self.job_id)
            adapter = get_adapter(job.exchange)
            limiter = SharedRateLimiter(
                client,
                job.exchange,
                adapter.rate_limit(self.settings),
                unlimited=self.options.unlimited_rate,
                priority=job.priority,
                yield_seconds=self.settings.repair_yield_seconds,
            )
            await store.heartbeat(self.worker_id)
            await store.join(self.job_id, self.worker_id)
            heartbeat = asyncio.create_task(self._keep_alive(store))
            if adapter.candles_request_uses_clock:
                self._clock = ExchangeClock(self.settings, job.exchange, limiter)
            requeued = await store.requeue_orphans(self.job_id)
            if requeued:
                log.info("job %s: re-queued %d request(s) of stopped workers", self.job_id, requeued)

            async def committed(written: list[tuple[Claim, int]]) -> None:
                await store.complete_done(self.job_id, written)

            writer = CandleWriter(self.settings, committed, coverage_of=request_coverage)
            # Archive files are written apart, each its own transaction, on ARCHIVE_WRITERS connections
            # at once: a file is a whole day or month of one market, COPYed straight in where new.
            file_writers = [
                CandleWriter(self.settings, committed, 1, coverage_of=request_coverage, copy_when_new=True)
                for _ in range(ARCHIVE_WRITERS if job.archive else 0)
            ]
            self._file_writers = itertools.cycle(file_writers) if file_writers else None
            timeout = aiohttp.ClientTimeout(total=self.options.timeout_seconds)
            connector = aiohttp.TCPConnector(limit=self.options.concurrency)
            archive = await ArchiveClient(self.settings, job.exchange).open() if job.archive else None
            loops_wanted = self.options.concurrency + (archive.concurrency if archive else 0)
            async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
                try:
                    while True:
                        loops = [
                            asyncio.create_task(
                                self._drain(store, adapter, limiter, http, writer, archive, job.source)
                            )
                            for _ in range(loops_wanted)
                        ]
                        try:
                            await asyncio.gather(*loops)
                        finally:
                            for loop in loops:
                                loop.cancel()
                        await writer.flush()
                        await self._report_sent(store)
                        if self.yielded or not await self._wait_for_others(store):
                            break
                finally:
                    await writer.close()
                    for file_writer in file_writers:
                        await file_writer.close()
                    if archive is not None:
                        await archive.close()
            job = await store.info(self.job_id)
            if job.finished and not job.refreshed and await store.claim_refresh(self.job_id, self.worker_id):
                await self._refresh(store, job)
                job = await store.info(self.job_id)
            return job
        finally:
            if heartbeat is not None:
                heartbeat.cancel()
            await store.retire(self.worker_id)
            await client.aclose()

    async def _wait_for_others(self, store: JobStore) -> bool:
        """The queue is empty: wait while other workers finish their requests. True when requests of
        workers that died (heartbeat expired) were put back and this engine should drain again."""
        while True:
            job = await store.info(self.job_id)
            if job.finished or job.in_flight == 0:
                return job.pending > 0
            if await store.requeue_orphans(self.job_id, idle_worker=self.worker_id):
                log.info("job %s: took over the requests of a stopped worker", self.job_id)
                return True
            await asyncio.sleep(ORPHAN_POLL_SECONDS)

    async def _keep_alive(self, store: JobStore) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_TTL_SECONDS / 3)
            await store.heartbeat(self.worker_id)
            await self._report_sent(store)

    async def _report_sent(self, store: JobStore) -> None:
        counted, self._sent_reported = self.requests_sent - self._sent_reported, self.requests_sent
        await store.count_sent(self.job_id, counted)

    async def _refresh(self, store: JobStore, job: JobInfo) -> None:
        start, end = ms_to_datetime(job.start_ms), ms_to_datetime(job.end_ms)
        began = time.monotonic()
        await asyncio.to_thread(
            with_database_retry,
            self.settings,
            lambda: refresh_aggregates(self.settings, start, end),
            lambda: None,
        )
        await store.mark_refreshed(self.job_id)
        self.refresh_seconds = time.monotonic() - began
        log.info(
            "job %s: aggregates refreshed for %s .. %s in %.1fs",
            self.job_id,
            start,
            end,
            self.refresh_seconds,
        )

    async def _should_yield(self, limiter: SharedRateLimiter) -> bool:
        """Whether `yield_when` says stop, asked before claiming a request — and again and again
        while a low-priority engine waits for user backfills to leave the budget free, so a repair
        never sits on its worker while a backfill waits for one."""
        if self.yield_when is None:
            return False
        while True:
            if await self.yield_when():
                return True
            busy = await limiter.busy_seconds() if limiter.priority == LOW else 0.0
            if busy <= 0:
                return False
            await asyncio.sleep(min(busy, YIELD_POLL_SECONDS))

    async def _drain(self, store, adapter, limiter, http, writer, archive=None, source=REST) -> None:
        while True:
            if self.yielded or await self._should_yield(limiter):
                self.yielded = True
                return
            # With no exchange clock to ask first, nothing is awaited between the claim and the send:
            # the claim's own script asks the limiter too (one round trip for both). Not in a job with
            # archive files: a file must take no REST weight, and the limiter is asked when sending.
            gate = limiter if self._clock is None and archive is None else None
            claim = await store.claim(self.job_id, self.worker_id, gate, adapter.candles_request_weight)
            if claim is None:
                return
            if claim.task.archive:
                await self._archive_file(store, adapter, archive, writer, claim, source)
                continue
            outcome = await self._fetch(adapter, limiter, http, claim)
            if outcome.error is None:
                await writer.add(claim, outcome.candles)
                continue
            await self._give_up(store, adapter, writer, claim, outcome)

    async def _archive_file(self, store, adapter, archive, writer, claim: Claim, source: str) -> None:
        """One archive file: its verified candles go to the writer like a request's; a file that
        failed hands its range to REST (queued in its place), or with `--source archive` is
        recorded as failed."""
        outcome = await archive.fetch(claim.task)
        self.archive_files += 1
        if outcome.block is not None:
            await next(self._file_writers).add(claim, outcome.block)
            return
        if source == ARCHIVE_ONLY:
            error = ExchangeError(
                ErrorKind.FATAL, None, None, f"archive: {outcome.reason}", 404 if outcome.missing else None
            )
            await self._give_up(store, adapter, writer, claim, FetchOutcome(None, error, "ArchiveFileError"))
            return
        tasks = rest_fallback(adapter, claim.task)
        log.warning(
            "%s %s: %s; its range goes to REST (%d request(s))",
            adapter.name,
            claim.task.symbol,
            outcome.reason,
            len(tasks),
        )
        await store.replace(self.job_id, claim, tasks)

    async def _give_up(self, store, adapter, writer, claim: Claim, outcome: FetchOutcome) -> None:
        error = outcome.error
        assert error is not None
        log.error(
            "%s %s: giving up on %s: %s", adapter.name, claim.task.symbol, claim.task.key, error.message
        )
        await writer.record_error(
            FetchErrorRecord(
                exchange=adapter.name,
                symbol=claim.task.symbol,
                start_date=ms_to_datetime(claim.task.start_ms),
                end_date=ms_to_datetime(claim.task.end_ms),
                time_frame="1m",
                ohlcv_section="hist",
                resp_status_code=error.status,
                exception_class=outcome.exception_class or f"{error.kind.name.title()}Error",
                exception_message=error.message,
            )
        )
        await store.complete(self.job_id, claim, 0, failed=True)

    async def _fetch(self, adapter, limiter, http, claim: Claim) -> FetchOutcome:
        """One request with retries: rate-limit signals pause the exchange (shared by every worker),
        transient errors back off with jitter, a malformed body counts as transient."""
        task = claim.task
        gate_wait_us = claim.gate_wait_us  # the limiter's answer for the first attempt, if asked
        attempt = 0
        waits = 0
        while True:
            now_ms = await self._clock.now_ms(http) if self._clock else int(time.time() * 1000)
            request = adapter.candles_request(task, now_ms)
            url = request.url(self.settings.rest_url(adapter.name))
            if request.weight != adapter.candles_request_weight:
                gate_wait_us = None  # asked for another weight: ask again for this one
            await limiter.acquire(request.weight, gate_wait_us)
            gate_wait_us = None
            self.requests_sent += 1
            exception_class = ""
            used = None
            try:
                async with http.get(url) as response:
                    status, headers = response.status, dict(response.headers)
                    body = await response.text()
            except (TimeoutError, aiohttp.ClientError) as exc:
                count_request(adapter.name, None, request.weight)
                exception_class = type(exc).__name__
                error = ExchangeError(
                    ErrorKind.RETRY, None, None, f"{exception_class}: {exc}".rstrip(": "), None
                )
            else:
                count_request(adapter.name, status, request.weight)
                used = adapter.used_weight(headers)
                if used is not None:
                    EXCHANGE_USED_WEIGHT.labels(adapter.name).set(used)
                if used is not None and status == 200:
                    await limiter.note_used_weight(used)
                if status == 200:
                    try:
                        return FetchOutcome(adapter.parse_candle_block(task, body))
                    except ValueError as exc:
                        exception_class = "MalformedResponse"
                        error = ExchangeError(
                            ErrorKind.RETRY, None, None, f"malformed response: {exc}", status
                        )
                else:
                    error = adapter.classify_error(status, headers, body)

            if error.kind in (ErrorKind.RATE_LIMITED, ErrorKind.BANNED):
                waits += 1
                if used is not None:
                    await limiter.learn_refusal(used)
                wait = error.wait_seconds if error.wait_seconds is not None else limiter.limit.window_seconds
                await limiter.block_for(wait, f"HTTP {error.status} {error.message}")
                if waits <= MAX_RATE_LIMIT_WAITS:
                    continue
                return FetchOutcome(None, error, "RateLimitError")
            if error.kind is ErrorKind.RETRY and attempt < self.options.max_retries:
                attempt += 1
                delay = backoff_seconds(
                    attempt, self.options.backoff_base_seconds, self.options.backoff_max_seconds
                )
                log.warning(
                    "%s %s: %s; retry %d/%d in %.1fs",
                    adapter.name,
                    task.symbol,
                    error.message,
                    attempt,
                    self.options.max_retries,
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            return FetchOutcome(None, error, exception_class)
