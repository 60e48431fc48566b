"""An archive file that failed is replaced in its job by REST requests, in one step, on real Redis."""

from __future__ import annotations

import asyncio

import pytest

from common.redis_clients import async_client
from fetchers.exchanges import get_adapter
from fetchers.exchanges.base import FetchTask
from fetchers.rest.job_store import JobStore
from fetchers.rest.sources import rest_fallback

pytestmark = pytest.mark.integration

DAY = 86_400_000
JAN_1 = 1_735_689_600_000
FILE = FetchTask("binance", "BTCUSDT", "BTC", "USDT", JAN_1, JAN_1 + DAY, archive="2025-01-01")


def test_a_failed_file_is_replaced_by_rest_requests_and_a_cancelled_job_queues_none(settings):
    async def go():
        client = async_client(settings)
        try:
            store = JobStore(client)
            job = await store.create(
                "binance", JAN_1, JAN_1 + 2 * DAY, ["BTCUSDT"], [FILE, FILE], source="auto"
            )
            assert (job.total, job.archive, job.source) == (2, 2, "auto")
            claim = await store.claim(job.id, "w1")
            assert claim.task == FILE
            fallback = rest_fallback(get_adapter("binance"), claim.task)
            assert await store.replace(job.id, claim, fallback)
            assert not await store.replace(job.id, claim, fallback)  # no longer ours: nothing twice
            job = await store.info(job.id)
            assert (job.total, job.done, job.pending, job.in_flight, job.archive_fallbacks) == (4, 1, 3, 0, 1)
            assert [(await store.claim(job.id, "w1")).task.archive for _ in range(2)] == ["2025-01-01", ""]

            second = await store.create("binance", JAN_1, JAN_1 + DAY, ["BTCUSDT"], [FILE])
            claim = await store.claim(second.id, "w1")
            await store.cancel(second.id)
            assert await store.replace(second.id, claim, fallback)
            second = await store.info(second.id)
            assert (second.total, second.done, second.pending, second.finished) == (1, 1, 0, True)
        finally:
            await client.aclose()

    asyncio.run(go())
