"""Celery tasks: thin wrappers that run the backfill engine and the markets refresh.

A worker that starts looks for interrupted jobs of the queues it consumes (every worker that took
part is gone) and drains them, so a job whose worker was killed carries on without `resume` and
without waiting for the broker to redeliver the lost task (an hour by default). The beat that
starts runs the repair of every exchange at once rather than one `REPAIR_INTERVAL_SECONDS` later.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid

from celery.signals import beat_init, worker_process_init, worker_process_shutdown, worker_ready

from celery_app.celery_config import REST_QUEUES
from celery_app.celery_main import app
from celery_app.queue_messages import QUEUE_PEEK, REPAIR_TASK, other_work_waiting
from common.logging_setup import setup_logging
from common.metrics import SnapshotPublisher
from common.redis_clients import async_client
from common.settings import get_settings
from fetchers.rest.engine import BackfillEngine, run
from fetchers.rest.job_store import HEARTBEAT_TTL_SECONDS, JobState, JobStore, job_scope
from fetchers.rest.markets import refresh_markets as refresh_markets_async
from fetchers.rest.metrics import REGISTRY as REST_METRICS
from fetchers.rest.rate_limiter import LOW
from fetchers.rest.repair import submit_repair

_metrics: SnapshotPublisher | None = None


@worker_process_init.connect
def _publish_metrics(**_) -> None:
    """Each pool process sends the requests of its tasks, so each publishes its own REST metrics
    (`common.metrics`); a thread started before the fork would not survive it."""
    global _metrics
    _metrics = SnapshotPublisher(get_settings(), "worker", REST_METRICS).start()


@worker_process_shutdown.connect
def _final_metrics(**_) -> None:
    if _metrics is not None:
        _metrics.stop()


@app.task(name="celery_app.celery_tasks.drain_backfill_job")
def drain_backfill_job(job_id: str) -> dict:
    """Work on a backfill job until its queue is empty (several can share one job)."""
    setup_logging("celery_worker")
    job = run(BackfillEngine(get_settings(), job_id).run())
    return job.as_dict()


@app.task(name="celery_app.celery_tasks.refresh_markets")
def refresh_markets(exchange: str) -> dict:
    """Upsert the exchange's market list into symbol_exchange."""
    setup_logging("celery_worker")
    result = asyncio.run(refresh_markets_async(get_settings(), exchange))
    return {
        "exchange": result.exchange,
        "listed": result.listed,
        "trading": result.trading,
        "changed": result.changed,
    }


log = logging.getLogger(__name__)


async def _repair(exchange: str) -> dict:
    settings = get_settings()
    worker_id = uuid.uuid4().hex[:8]
    submission = await submit_repair(settings, exchange, worker_id=worker_id)
    plan = submission.plan
    result = {
        "exchange": exchange,
        "missing_minutes": plan.missing_minutes if plan is not None else None,
        "job": submission.job.id if submission.job is not None else None,
        "new": submission.new,
        "until_ms": plan.until_ms if plan is not None else None,
        "oldest_gap_ms": min((r[0] for g in plan.gaps.values() for r in g), default=None) if plan else None,
    }
    log.info("repair run planned: %s", json.dumps(result))
    if submission.job is None:
        return result
    if not submission.joined:
        log.info("repair job %s: already being drained; this run leaves it to its worker", submission.job.id)
        return {**result, "busy": True}
    broker = async_client(settings)
    queue = REST_QUEUES[exchange]

    async def other_work_queued() -> bool:
        return other_work_waiting(await broker.lrange(queue, 0, QUEUE_PEEK - 1))

    try:
        engine = BackfillEngine(
            settings, submission.job.id, worker_id=worker_id, yield_when=other_work_queued
        )
        job = await engine.run()
    finally:
        await broker.aclose()
    if engine.yielded:
        log.info("repair job %s: gave the worker to a backfill waiting in %s; goes on later", job.id, queue)
    result = {**result, "done": job.done, "failed": job.failed, "left": job.left, "yielded": engine.yielded}
    log.info("repair run ended: %s", json.dumps(result))
    return result


@app.task(name=REPAIR_TASK)
def repair_gaps(exchange: str) -> dict:
    """Plan the exchange's missing minutes and drain its repair job at low priority (or carry on
    with the unfinished one; a run that finds it being drained leaves it to that worker, so a long
    repair never takes more than one worker process). The worker is handed back as soon as a
    message other than a repair run waits in the queue: user backfills never wait behind a repair,
    and the repair goes on at the next run."""
    setup_logging("celery_worker")
    return asyncio.run(_repair(exchange))


async def _interrupted_jobs(exchange: str) -> list[str]:
    settings = get_settings()
    client = async_client(settings)
    try:
        jobs = await JobStore(client, job_scope(settings)).jobs(exchange)
        # an interrupted repair (it gave its worker to a backfill) is carried on by the next beat run
        return [job.id for job in jobs if job.state == JobState.INTERRUPTED and job.priority != LOW]
    finally:
        await client.aclose()


@app.task(name="celery_app.celery_tasks.take_over_interrupted_jobs")
def take_over_interrupted_jobs(exchange: str) -> list[str]:
    """Drain every interrupted job of the exchange (oldest first); returns their ids."""
    setup_logging("celery_worker")
    taken = asyncio.run(_interrupted_jobs(exchange))
    for job_id in taken:
        log.info("job %s: interrupted (its workers are gone); taking it over", job_id)
        run(BackfillEngine(get_settings(), job_id).run())
    return taken


@worker_ready.connect
def _take_over_on_start(sender, **_) -> None:
    """Once a dead worker's heartbeat has expired, its jobs count as interrupted: look then."""
    consumed = set(sender.app.amqp.queues.consume_from or {})
    for exchange, queue in REST_QUEUES.items():
        if queue in consumed:
            take_over_interrupted_jobs.apply_async(
                args=(exchange,), queue=queue, countdown=HEARTBEAT_TTL_SECONDS + 1
            )


@beat_init.connect
def _repair_at_start(sender, **_) -> None:
    """The first repair runs when the platform starts: a fresh database, or one that was down for a
    while, shows its gaps as missing with no repair under way for a whole interval otherwise.

    The beat, not the workers: there is one beat per platform (Procfile, compose and `make up` run
    one), while workers come several at a time and each would send its own run. The beat's repair
    entries are made due, so its first tick sends them through the schedule itself (their queue and
    expiry), once per exchange even when the stored schedule had them overdue already; the next run
    follows one interval later."""
    for entry in sender.scheduler.schedule.values():
        if entry.task == repair_gaps.name:
            entry.last_run_at = entry.default_now() - entry.schedule.run_every
