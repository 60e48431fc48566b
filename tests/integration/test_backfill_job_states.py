"""The states `status` shows for a backfill job, as the README lists them, against the simulator,
real PostgreSQL and real Redis: `queued` before any worker starts, `refreshing` while the summaries
are rebuilt after the last request, `interrupted` when the run stopped on a Redis or PostgreSQL
outage longer than `REST_OUTAGE_SECONDS` (and not before it)."""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time

import pytest
import redis
from pydantic import SecretStr

from common.redis_clients import async_client
from common.schema import init_database
from common.timeutil import ms_to_datetime
from fetchers.rest import engine as engine_module
from fetchers.rest.engine import BackfillEngine
from fetchers.rest.job_store import HEARTBEAT_TTL_SECONDS, JobState
from fetchers.rest.jobs import create_job
from scripts.fetchers.rest import list_jobs
from tests.support.backfill import day_aligned_range, local_fetch_of_four_markets
from tests.support.services import PostgresServer, RedisServer, free_port, wait_for

pytestmark = pytest.mark.integration

OUTAGE_SECONDS = 1


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


@pytest.mark.parametrize("service", ["PostgreSQL", "Redis"])
def test_an_outage_past_rest_outage_seconds_stops_the_run_with_exit_1_and_leaves_it_interrupted(
    platform_settings, simulator, tmp_path, service
):
    """README: a `--local` run rides out a Redis or PostgreSQL restart, reconnecting for up to
    `REST_OUTAGE_SECONDS`; past that it stops with one line and exit 1, and `status` shows the job
    interrupted (requests left, no worker on it)."""
    if service == "PostgreSQL":  # a server of its own, to stop for good
        server = PostgresServer().start()
        settings = platform_settings.model_copy(update={"postgres_port": server.port, "postgres_db": "gone"})
        init_database(settings)
    else:
        server = RedisServer(workdir=tmp_path, persistent=True).start()
        settings = platform_settings.model_copy(
            update={"redis_port": server.port, "redis_password": SecretStr(server.password)}
        )
    try:
        fetch = local_fetch_of_four_markets(settings, simulator, OUTAGE_SECONDS)
        proc = fetch.proc
        try:
            wait_for(lambda: _progress(settings)[0] > 0, 60, "the first requests done")
            halted = time.monotonic()  # the run may meet the outage before halt() returns
            server.halt()
            try:
                _, err = proc.communicate(timeout=OUTAGE_SECONDS + 30)
            except subprocess.TimeoutExpired:
                pytest.fail(f"still running {OUTAGE_SECONDS + 30} s into a {OUTAGE_SECONDS} s outage limit")
            stopped_after = time.monotonic() - halted
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 1, err
        assert "Traceback" not in err, err
        assert stopped_after >= OUTAGE_SECONDS, f"gave up after {stopped_after:.1f} s"
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert errors == [err.strip().splitlines()[-1]], err
        if service == "Redis":
            server.start()  # the job is kept (append-only file); the run's heartbeat expires
        wait_for(
            lambda: list(states(settings, "binance").values()) == [JobState.INTERRUPTED],
            HEARTBEAT_TTL_SECONDS + 5,
            "the job shown interrupted",
        )
        done, total = _progress(settings)
        assert 0 < done < total
    finally:
        server.stop()


def test_a_redis_command_reconnects_for_rest_outage_seconds_before_it_fails(settings):
    """The run's Redis client: a command reconnects for `REST_OUTAGE_SECONDS`, not less, then
    fails (its backoff starts below its cap: counting retries at the cap gave up early)."""
    gone = settings.model_copy(update={"redis_port": free_port(), "rest_outage_seconds": OUTAGE_SECONDS})

    async def failing_command() -> float:
        client = async_client(gone, ride_out_outages=True)
        began = time.monotonic()
        try:
            with pytest.raises(redis.exceptions.ConnectionError):
                await client.get("anything")
            return time.monotonic() - began
        finally:
            await client.aclose()

    took = asyncio.run(failing_command())
    assert OUTAGE_SECONDS <= took < OUTAGE_SECONDS + 2, f"gave up after {took:.2f} s"


def _progress(settings) -> tuple[int, int]:
    """(requests done, total) of the only job, (0, 0) before it exists."""
    jobs = asyncio.run(list_jobs(settings, ("binance",)))
    return (jobs[0].done, jobs[0].total) if jobs else (0, 0)
