"""GET /api/status/backfills: REST backfill jobs and their progress (for the status page)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from common.exchanges import EXCHANGES
from fetchers.rest.job_store import JobStore, job_scope
from web.api.deps import RedisDep, SettingsDep

router = APIRouter(prefix="/status", tags=["status"])


@router.get("/backfills", summary="Backfill jobs, newest first")
async def backfills(
    redis: RedisDep, settings: SettingsDep, limit: Annotated[int, Query(ge=1, le=200)] = 20
) -> list[dict]:
    """The newest jobs of this database (every exchange) with their request counts (done, failed,
    pending, in flight) and state."""
    store = JobStore(redis, job_scope(settings))
    jobs = []
    for exchange in EXCHANGES:
        for job in await store.jobs(exchange):
            jobs.append(
                {**job.as_dict(), "finished": job.finished, "complete": job.complete, "state": job.state}
            )
    jobs.sort(key=lambda job: job["created_ms"], reverse=True)
    return jobs[:limit]
