"""The automatic repair: find each market's missing minutes and queue a low-priority backfill of them.

`plan_repair` reads the evidence (first and last bar, coverage, outages, failed requests:
`common.coverage.load_evidence`) and asks the pure planner (`fetchers.rest.gaps`) for the gaps;
`submit_repair` stores them as an ordinary backfill job marked low priority — the same durable
queue, engine, writer and shared rate budget as a user's backfill, except that it only uses the
budget user backfills leave free. One repair job per exchange at a time: while one is unfinished, a
new run plans nothing and returns it. Runs of one exchange submit one after the other (a lock in
Redis), so two runs that start together — the beat's run at start-up beside an overdue one, or
several workers taking queued runs at once — never plan two jobs, and the run that will drain the
job joins it before the next run looks. The ranges it repairs are kept beside its id in Redis, so
the coverage API can show them as being repaired (`current_repair`, `repairing_ranges`: the web
reads the repair's state here, where it is written).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import LockError

from common.candle import Market
from common.coverage import PairKey, load_evidence
from common.db import connection, load_markets
from common.ranges import Range, merge
from common.redis_clients import async_client
from common.redis_keys import backfill_key, ws_health_key
from common.settings import Settings
from common.timeutil import MINUTE_MS, floor_minute_ms
from fetchers.exchanges import get_adapter
from fetchers.exchanges.base import FetchTask
from fetchers.rest.exchange_clock import ExchangeClockUnavailable, exchange_now_ms
from fetchers.rest.gaps import missing_minutes, plan_gaps, plan_repair_tasks
from fetchers.rest.job_store import JobInfo, JobState, JobStore, job_scope
from fetchers.rest.rate_limiter import LOW, SharedRateLimiter
from fetchers.rest.sources import AUTO, REST

log = logging.getLogger(__name__)

SUBMIT_LOCK_SECONDS = 120
"""How long one run may hold the exchange's submission lock (planning reads every market and asks
the exchange's clock: seconds); a run that died holding it blocks the others no longer than this."""


def repair_key(exchange: str, scope: str) -> str:
    """Hash of the exchange's current repair job: `job` (its id) and `ranges` (what it repairs)."""
    return backfill_key("repair", exchange, scope)


def submit_lock_key(exchange: str, scope: str) -> str:
    """Lock held while a run looks for the exchange's repair job and, finding none, plans one."""
    return backfill_key("repair-submit", exchange, scope)


async def feed_now_ms(exchange: str, client: aioredis.Redis) -> int | None:
    """The end of the minute of the newest bar the live feed has seen (None before its first): the
    exchange's present by the exchange's own clock, as late as the feed is."""
    seen = await client.hget(ws_health_key(exchange), "exchange_time_ms")
    return int(seen) + MINUTE_MS if seen else None


async def known_exchange_now_ms(exchange: str, client: aioredis.Redis) -> int:
    """The exchange's present as the platform knows it without asking: the live feed's clock
    (ahead of this machine when the exchange runs fast, e.g. an accelerated simulator) or this
    machine's clock, whichever is later. For the web, which shows a dead feed's minutes as missing;
    the repair asks the exchange."""
    return max(int(time.time() * 1000), await feed_now_ms(exchange, client) or 0)


async def repair_fallback_now_ms(exchange: str, client: aioredis.Redis) -> int:
    """What the repair plans up to when it cannot ask the exchange: the live feed's clock, and this
    machine's only before the feed saw a bar. Never this machine's clock when it is ahead of the
    exchange's (a wrong system clock): the repair would plan minutes the exchange has not had."""
    seen = await feed_now_ms(exchange, client)
    return seen if seen is not None else int(time.time() * 1000)


async def repair_now_ms(settings: Settings, exchange: str, client: aioredis.Redis) -> int:
    """The exchange's own clock (asked at low priority in the shared budget); what the live feed
    has seen when the exchange cannot tell — or when user backfills are using the budget: a
    low-priority request would wait for them, and the repair task would sit on its worker meanwhile
    (unable to hand it to a queued backfill before it has planned)."""
    limiter = SharedRateLimiter(
        client,
        exchange,
        get_adapter(exchange).rate_limit(settings),
        priority=LOW,
        yield_seconds=settings.repair_yield_seconds,
    )
    if await limiter.busy_seconds() > 0:
        return await repair_fallback_now_ms(exchange, client)
    try:
        return await exchange_now_ms(settings, exchange, limiter)
    except ExchangeClockUnavailable as error:
        log.warning("%s: %s; planning the repair with the live feed's clock", exchange, error)
        return await repair_fallback_now_ms(exchange, client)


def repair_source(settings: Settings) -> str:
    """`rest` when BACKFILL_SOURCE says so, else `auto`: a repair takes closed days from archive
    files where it can, and never leaves a gap because no file holds it (the current day)."""
    return REST if settings.backfill_source == REST else AUTO


@dataclass(frozen=True, slots=True)
class RepairPlan:
    exchange: str
    since_ms: int
    until_ms: int
    gaps: dict[PairKey, list[Range]]
    tasks: list[FetchTask]

    @property
    def missing_minutes(self) -> int:
        return missing_minutes(self.gaps)


def plan_repair(settings: Settings, exchange: str, now_ms: int, since_ms: int = 0) -> RepairPlan:
    """The gaps of every market of `exchange` in [since_ms, now less the settle time), and the
    requests (at most `repair_max_requests`) that fill them, newest first."""
    until_ms = floor_minute_ms(now_ms) - settings.repair_settle_minutes * MINUTE_MS
    with connection(settings) as conn:
        markets: dict[PairKey, Market] = {(m.base_id, m.quote_id): m for m in load_markets(conn, exchange)}
        evidence = load_evidence(conn, exchange, since_ms=since_ms)
    gaps = plan_gaps(evidence, since_ms, until_ms)
    tasks = plan_repair_tasks(
        get_adapter(exchange), markets, gaps, settings.repair_max_requests, now_ms, repair_source(settings)
    )
    return RepairPlan(exchange, since_ms, until_ms, gaps, tasks)


async def current_repair(client: aioredis.Redis, settings: Settings, exchange: str) -> JobInfo | None:
    """The exchange's repair job if it is still unfinished (not done, not cancelled)."""
    job_id = await client.hget(repair_key(exchange, job_scope(settings)), "job")
    if job_id is None:
        return None
    try:
        job = await JobStore(client, job_scope(settings)).info(job_id.decode())
    except KeyError:
        return None
    return job if job.resumable else None


async def repairing_ranges_by_market(
    client: aioredis.Redis, settings: Settings, exchange: str
) -> dict[PairKey, list[Range]]:
    """What the exchange's unfinished repair job is fetching, per market (empty when none is)."""
    if await current_repair(client, settings, exchange) is None:
        return {}
    raw = await client.hget(repair_key(exchange, job_scope(settings)), "ranges")
    ranges = json.loads(raw) if raw else {}
    return {tuple(name.split("/", 1)): merge(tuple(r) for r in spans) for name, spans in ranges.items()}


async def repairing_ranges(
    client: aioredis.Redis, settings: Settings, exchange: str, base_id: str, quote_id: str
) -> list[Range]:
    """What the exchange's unfinished repair job is fetching for one market."""
    return (await repairing_ranges_by_market(client, settings, exchange)).get((base_id, quote_id), [])


@dataclass(frozen=True, slots=True)
class RepairSubmission:
    job: JobInfo | None
    plan: RepairPlan | None
    new: bool
    """False when an unfinished repair job was found and returned instead of planning a new one."""
    joined: bool = False
    """The job is this run's to drain: `worker_id` joined it (a new job, or one no live worker drains)."""


async def submit_repair(
    settings: Settings, exchange: str, since_ms: int = 0, worker_id: str | None = None
) -> RepairSubmission:
    """Plan the exchange's gaps and store them as a low-priority job (None when nothing is missing).
    With `worker_id` (the engine's that will drain it), the run also joins the job it returns unless
    a live worker drains it already, under the same lock: a run that starts meanwhile sees the job
    running and leaves it, so one repair never takes two worker processes."""
    client = async_client(settings)
    lock = client.lock(submit_lock_key(exchange, job_scope(settings)), timeout=SUBMIT_LOCK_SECONDS, sleep=0.1)
    try:
        await lock.acquire()
        try:
            return await _submit(client, settings, exchange, since_ms, worker_id)
        finally:
            try:
                await lock.release()
            except LockError:  # held past its timeout: another run may have it by now
                log.warning("%s: the repair submission took over %d s", exchange, SUBMIT_LOCK_SECONDS)
    finally:
        await client.aclose()


async def _join(client: aioredis.Redis, settings: Settings, job: JobInfo, worker_id: str | None) -> bool:
    """Join `job` as `worker_id` (heartbeat and membership, as the engine does when it starts)."""
    if worker_id is None:
        return False
    store = JobStore(client, job_scope(settings))
    await store.heartbeat(worker_id)
    await store.join(job.id, worker_id)
    return True


async def _submit(
    client: aioredis.Redis, settings: Settings, exchange: str, since_ms: int, worker_id: str | None
) -> RepairSubmission:
    running = await current_repair(client, settings, exchange)
    if running is not None:
        joined = running.state != JobState.RUNNING and await _join(client, settings, running, worker_id)
        return RepairSubmission(running, None, False, joined)
    now_ms = await repair_now_ms(settings, exchange, client)
    plan = plan_repair(settings, exchange, now_ms, since_ms)
    if not plan.tasks:
        return RepairSubmission(None, plan, True)
    adapter = get_adapter(exchange)
    limit = adapter.rate_limit(settings)
    per_minute = limit.capacity * 60 / limit.window_seconds / max(adapter.candles_request_weight, 1)
    symbols = sorted({t.symbol for t in plan.tasks})
    job = await JobStore(client, job_scope(settings)).create(
        exchange,
        min(t.start_ms for t in plan.tasks),
        max(t.end_ms for t in plan.tasks),
        symbols,
        plan.tasks,
        limit_per_minute=per_minute,
        priority=LOW,
        source=repair_source(settings),
    )
    ranges: dict[str, list[Range]] = {}
    for task in plan.tasks:
        ranges.setdefault(f"{task.base_id}/{task.quote_id}", []).append((task.start_ms, task.end_ms))
    await client.hset(
        repair_key(exchange, job_scope(settings)),
        mapping={"job": job.id, "ranges": json.dumps({k: merge(v) for k, v in ranges.items()})},
    )
    return RepairSubmission(job, plan, True, await _join(client, settings, job, worker_id))
