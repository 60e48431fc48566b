"""Celery tasks: thin wrappers that run the backfill engine and the markets refresh."""

from __future__ import annotations

import asyncio

from celery_app.celery_main import app
from common.logging_setup import setup_logging
from common.settings import get_settings
from fetchers.rest.engine import BackfillEngine
from fetchers.rest.markets import refresh_markets as refresh_markets_async


@app.task(name="celery_app.celery_tasks.drain_backfill_job")
def drain_backfill_job(job_id: str) -> dict:
    """Work on a backfill job until its queue is empty (several can share one job)."""
    setup_logging("celery_worker")
    job = asyncio.run(BackfillEngine(get_settings(), job_id).run())
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
