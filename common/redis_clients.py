"""Every Redis client of the platform is made here, from the settings, with deliberate timeouts.

- Commands (`sync_client`, `async_client`): a connection is given `CONNECT_TIMEOUT_SECONDS` (a
  Redis that does not answer a connect that fast is down or unreachable, and callers either retry
  with backoff or report it), a reply `REPLY_TIMEOUT_SECONDS` (no command of the platform blocks:
  the longest, a burst of thousands of bars in one script, takes milliseconds).
- `ride_out_outages`: the backfill's commands reconnect and retry with capped exponential backoff
  for up to `rest_outage_seconds` (a Redis restart or failover), on top of the timeouts above.
- `pack_with_hiredis`: the fetcher's commands are packed by hiredis in C (below).
- `listener_client`: a pub/sub listener waits for messages as long as the channels are quiet, so it
  has no reply timeout; a health check every `LISTENER_HEALTH_CHECK_SECONDS` finds a dead socket.
"""

from __future__ import annotations

import functools

import hiredis
import redis
import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.driver_info import DriverInfo

from common.settings import Settings

CONNECT_TIMEOUT_SECONDS = 3.0
REPLY_TIMEOUT_SECONDS = 10.0
LISTENER_HEALTH_CHECK_SECONDS = 15.0
OUTAGE_BACKOFF_BASE_SECONDS = 0.05
OUTAGE_BACKOFF_CAP_SECONDS = 1.0


@functools.cache
def _driver_info() -> DriverInfo:
    """Looked up once: without it every new pooled connection reads the package metadata to name the
    library to Redis (about 2 ms of CPU each, a backfill opens one per concurrent request loop)."""
    return DriverInfo()


class HiredisPackConnection(aioredis.Connection):
    """Packs commands with hiredis (C) instead of redis-py's pure-Python packer: a burst of bars is
    one EVALSHA with thousands of arguments, and packing them was a tenth of a fetcher's CPU."""

    def pack_command(self, *args):
        if isinstance(args[0], str):
            args = (*args[0].encode().split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError as error:
            raise redis.exceptions.DataError(str(error)) from None


def retries_within(seconds: float, backoff: ExponentialBackoff) -> int:
    """How many retries it takes for `backoff`'s waits to add up to `seconds` (the first waits are
    shorter than the cap, so `seconds / cap` retries would give up early)."""
    retries, waited = 0, 0.0
    while waited < seconds:
        retries += 1
        waited += backoff.compute(retries)
    return retries


def sync_client(settings: Settings, reply_timeout: float | None = REPLY_TIMEOUT_SECONDS) -> redis.Redis:
    """A blocking client (the updater, the writers' version bumps, local server control)."""
    return redis.Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
        socket_timeout=reply_timeout,
        driver_info=_driver_info(),
    )


def async_client(
    settings: Settings, *, ride_out_outages: bool = False, pack_with_hiredis: bool = False
) -> aioredis.Redis:
    """An asyncio client for commands (the web, the backfill, the fetchers, Celery tasks)."""
    options: dict = dict(
        socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
        socket_timeout=REPLY_TIMEOUT_SECONDS,
        driver_info=_driver_info(),
    )
    if ride_out_outages:
        backoff = ExponentialBackoff(cap=OUTAGE_BACKOFF_CAP_SECONDS, base=OUTAGE_BACKOFF_BASE_SECONDS)
        options.update(
            retry=Retry(backoff, retries_within(settings.rest_outage_seconds, backoff)),
            retry_on_error=[redis.exceptions.ConnectionError, redis.exceptions.TimeoutError],
        )
    if pack_with_hiredis:
        options["connection_class"] = HiredisPackConnection
    return aioredis.from_url(settings.redis_url, **options)


def listener_client(settings: Settings) -> aioredis.Redis:
    """An asyncio client for one pub/sub listener (the web's live bars)."""
    return aioredis.from_url(
        settings.redis_url,
        socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
        health_check_interval=LISTENER_HEALTH_CHECK_SECONDS,
        driver_info=_driver_info(),
    )
