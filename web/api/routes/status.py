"""GET /api/status/backfills: REST backfill jobs and their progress (for the status page)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from common.settings import EXCHANGES
from fetchers.rest.job_store import JobStore
from web.api.deps import RedisDep

router = APIRouter(prefix="/status", tags=["status"])


@router.get("/backfills", summary="Backfill jobs, newest first")
async def backfills(redis: RedisDep, limit: Annotated[int, Query(ge=1, le=200)] = 20) -> list[dict]:
    """The newest jobs of every exchange with their request counts (done, failed, pending, in flight)."""
    store = JobStore(redis)
    jobs = []
    for exchange in EXCHANGES:
        for job in await store.jobs(exchange):
            jobs.append({**job.as_dict(), "finished": job.finished, "complete": job.complete})
    jobs.sort(key=lambda job: job["created_ms"], reverse=True)
    return jobs[:limit]
