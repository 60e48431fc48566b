"""`fetch --local` rides out a PostgreSQL restart of a few seconds, as it does a Redis one: the
writer reconnects with backoff, keeps its requests in flight until their rows commit, and the job
ends exactly equal to the exchange's ground truth, exit code 0."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from common.schema import init_database
from fetchers.rest.job_store import JobStore
from tests.support.backfill import assert_matches_truth, local_fetch_of_four_markets
from tests.support.services import PostgresServer, wait_for

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def job_done(settings) -> tuple[int, int]:
    """(requests done, total) of the only job in Redis, (0, 0) before it exists."""

    async def read():
        client = aioredis.from_url(settings.redis_url)
        try:
            ids = await JobStore(client).job_ids("binance")
            if not ids:
                return 0, 0
            job = await JobStore(client).info(ids[-1])
            return job.done, job.total
        finally:
            await client.aclose()

    return asyncio.run(read())


def test_a_postgres_restart_mid_job_is_ridden_out(platform_settings, simulator):
    server = PostgresServer().start()  # its own temp dir, which the postgres account can reach
    try:
        settings = platform_settings.model_copy(
            update={"postgres_port": server.port, "postgres_db": "outage", "rest_outage_seconds": 60.0}
        )
        init_database(settings)
        fetch = local_fetch_of_four_markets(settings, simulator, 60)
        proc = fetch.proc
        try:
            wait_for(
                lambda: (lambda d: d[1] and d[0] >= d[1] // 4)(job_done(settings)), 120, "a quarter done"
            )
            server.halt()
            time.sleep(4)  # the outage
            server.start()
            out, err = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, err
        assert "Traceback" not in err, err
        assert "PostgreSQL unavailable" in err, "the outage happened while the job ran"
        done, total = job_done(settings)
        assert done == total
        assert_matches_truth(settings, simulator, "binance", fetch.symbols, fetch.start_ms, fetch.end_ms)
    finally:
        server.stop()
