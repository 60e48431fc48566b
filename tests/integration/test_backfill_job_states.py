"""The states `status` shows for a backfill job, as the README lists them, against the simulator,
real PostgreSQL and real Redis: `queued` before any worker starts, `refreshing` while the summaries
are rebuilt after the last request."""

from __future__ import annotations

import asyncio
import threading

import pytest

from common.timeutil import ms_to_datetime
from fetchers.rest import engine as engine_module
from fetchers.rest.engine import BackfillEngine
from fetchers.rest.job_store import JobState
from fetchers.rest.jobs import create_job
from scripts.fetchers.rest import list_jobs
from tests.support.backfill import day_aligned_range

pytestmark = pytest.mark.integration


def states(settings, exchange: str) -> dict[str, str]:
    """Job id -> state, as `status --exchange` lists them for the configured database."""
    return {job.id: job.state for job in asyncio.run(list_jobs(settings, (exchange,)))}


def test_a_job_is_queued_until_a_worker_starts_and_refreshing_until_its_summaries_are(
    platform_settings, simulator, monkeypatch
):
    """`queued`: no worker has started on it (not `interrupted`). `refreshing`: every request is
    done and the summary levels are being refreshed over its range; `done` only once they are."""
    start_ms, end_ms = day_aligned_range(simulator, days_back=2, days=0.25)
    job = asyncio.run(
        create_job(
            platform_settings, "binance", ms_to_datetime(start_ms), ms_to_datetime(end_ms), ["BTCUSDT"]
        )
    )
    assert states(platform_settings, "binance") == {job.id: JobState.QUEUED}

    refreshing, may_refresh = threading.Event(), threading.Event()
    refresh = engine_module.refresh_aggregates

    def held_refresh(*args, **kwargs):
        refreshing.set()
        assert may_refresh.wait(60), "the test never let the refresh go on"
        return refresh(*args, **kwargs)

    monkeypatch.setattr(engine_module, "refresh_aggregates", held_refresh)

    async def scenario():
        run = asyncio.create_task(BackfillEngine(platform_settings, job.id).run())
        while not refreshing.is_set():
            assert not run.done(), run.result()
            await asyncio.sleep(0.05)
        during = await list_jobs(platform_settings, ("binance",))
        may_refresh.set()
        return during, await run

    (during,), finished = asyncio.run(scenario())
    assert during.state == JobState.REFRESHING, during
    assert during.done == during.total and not during.refreshed
    assert finished.refreshed and states(platform_settings, "binance") == {job.id: JobState.DONE}
