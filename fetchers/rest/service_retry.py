"""Riding out short outages of the services a backfill uses, Redis and PostgreSQL (a restart, a
failover); not the data outages of the live feed (`ohlcvs_outages`).

Both are retried with the same capped exponential backoff for at most `rest_outage_seconds` (Redis
by its client: `common.redis_clients.async_client(ride_out_outages=True)`, PostgreSQL here); past
that the error surfaces as before (one line, exit 1) and the job shows as interrupted. Retrying is
safe: every Redis step of a job is a single atomic script or an idempotent write, a claim whose
reply was lost is taken back by its own worker before it stops (`JobStore.requeue_orphans`), and a
candle batch is an idempotent upsert committed once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import psycopg2

from common.db import DatabaseError, error_line
from common.redis_clients import OUTAGE_BACKOFF_BASE_SECONDS, OUTAGE_BACKOFF_CAP_SECONDS
from common.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")


DATABASE_OUTAGE_ERRORS = (psycopg2.OperationalError, psycopg2.InterfaceError, DatabaseError)


def with_database_retry(settings: Settings, attempt: Callable[[], T], on_failure: Callable[[], None]) -> T:
    """Run `attempt` (blocking); on a lost or refused connection call `on_failure` (drop the
    connection) and try again with backoff, for at most `rest_outage_seconds`."""
    deadline = None
    delay = OUTAGE_BACKOFF_BASE_SECONDS
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
            delay = min(delay * 2, OUTAGE_BACKOFF_CAP_SECONDS)
