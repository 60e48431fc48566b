"""Riding out short outages of Redis and PostgreSQL (a restart, a failover) during a backfill.

Both are retried with capped exponential backoff for at most `rest_outage_seconds`; past that the
error surfaces as before (one line, exit 1) and the job shows as interrupted. Retrying is safe:
every Redis step of a job is a single atomic script or an idempotent write, a claim whose reply was
lost is taken back by its own worker before it stops (`JobStore.requeue_orphans`), and a candle
batch is an idempotent upsert committed once.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import TypeVar

import psycopg2
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.driver_info import DriverInfo
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from common.db import DatabaseError, error_line
from common.settings import Settings

log = logging.getLogger(__name__)

BACKOFF_BASE_SECONDS = 0.05
BACKOFF_CAP_SECONDS = 1.0

T = TypeVar("T")


@functools.cache
def _driver_info() -> DriverInfo:
    """Looked up once: without it every new pooled connection reads the package metadata to name the
    library to Redis (about 2 ms of CPU each, a backfill opens one per concurrent request loop)."""
    return DriverInfo()


def retries_within(seconds: float, backoff: ExponentialBackoff) -> int:
    """How many retries it takes for `backoff`'s waits to add up to `seconds` (the first waits are
    shorter than the cap, so `seconds / cap` retries would give up early)."""
    retries, waited = 0, 0.0
    while waited < seconds:
        retries += 1
        waited += backoff.compute(retries)
    return retries


def redis_client(settings: Settings) -> aioredis.Redis:
    """A client whose commands reconnect and retry through an outage of up to `rest_outage_seconds`."""
    backoff = ExponentialBackoff(cap=BACKOFF_CAP_SECONDS, base=BACKOFF_BASE_SECONDS)
    return aioredis.from_url(
        settings.redis_url,
        retry=Retry(backoff, retries_within(settings.rest_outage_seconds, backoff)),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        driver_info=_driver_info(),
    )


DATABASE_OUTAGE_ERRORS = (psycopg2.OperationalError, psycopg2.InterfaceError, DatabaseError)


def with_database_retry(settings: Settings, attempt: Callable[[], T], on_failure: Callable[[], None]) -> T:
    """Run `attempt` (blocking); on a lost or refused connection call `on_failure` (drop the
    connection) and try again with backoff, for at most `rest_outage_seconds`."""
    deadline = None
    delay = BACKOFF_BASE_SECONDS
    while True:
        try:
            return attempt()
        except DATABASE_OUTAGE_ERRORS as error:
            on_failure()
            now = time.monotonic()
            if deadline is None:
                deadline = now + settings.rest_outage_seconds
                log.warning(
                    "PostgreSQL unavailable (%s); retrying for up to %.0fs",
                    error_line(error),
                    settings.rest_outage_seconds,
                )
            if now >= deadline:
                raise
            time.sleep(min(delay, max(deadline - now, 0)))
            delay = min(delay * 2, BACKOFF_CAP_SECONDS)
