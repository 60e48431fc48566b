"""The exchange's present, asked of the exchange itself.

Backfills cut their ranges at "now", and "now" is the exchange's: a simulator running faster than
real time (or a machine whose clock is off) is ahead of or behind this machine's clock, and a range
cut at the local clock would either stop short or ask for minutes that do not exist yet. The adapter
says how to ask (`server_time_request`) and how to read the answer (`parse_server_time`); this
module does the one GET.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp

from common.backoff import backoff_seconds
from common.settings import Settings
from fetchers.exchanges import get_adapter
from fetchers.exchanges.base import ErrorKind, ExchangeError
from fetchers.rest.rate_limiter import SharedRateLimiter

log = logging.getLogger(__name__)

RETRY_BASE_SECONDS = 0.5
CLOCK_REFRESH_SECONDS = 30.0
"""How long `ExchangeClock` extrapolates one answer before asking again."""


class ExchangeClockUnavailable(RuntimeError):
    """The exchange did not tell us its time (unreachable, or an unusable reply)."""


async def exchange_now_ms(
    settings: Settings,
    exchange: str,
    limiter: SharedRateLimiter | None = None,
    http: aiohttp.ClientSession | None = None,
) -> int:
    """The exchange's present in epoch ms (to the second where the exchange says it in a `Date`
    header). Paced by
    `limiter` when given; transient errors are retried (`rest_max_retries`) and rate-limit replies
    waited out as the backfill does; raises ExchangeClockUnavailable with a one-line reason."""
    adapter = get_adapter(exchange)
    request = adapter.server_time_request()
    url = request.url(settings.rest_url(exchange))
    own_session = http is None
    if own_session:
        http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=settings.rest_timeout_seconds))
    try:
        attempt = 0
        while True:
            if limiter is not None:
                await limiter.acquire(request.weight)
            try:
                async with http.get(url) as response:
                    status, headers, body = response.status, dict(response.headers), await response.text()
            except (TimeoutError, aiohttp.ClientError) as exc:
                reason = f"cannot ask {exchange} for its time at {url}: {exc or type(exc).__name__}"
                error = ExchangeError(ErrorKind.RETRY, None, None, reason, None)
            else:
                if status == 200:
                    try:
                        return adapter.parse_server_time(headers, body)
                    except ValueError as exc:  # a cut-off body is transient, as for candles
                        error = ExchangeError(ErrorKind.RETRY, None, None, str(exc), status)
                else:
                    error = adapter.classify_error(status, headers, body)
                reason = f"{exchange} time: HTTP {status} from {url}: {error.message}"
            if error.kind is ErrorKind.FATAL or attempt >= settings.rest_max_retries:
                hint = f" (is the exchange reachable? see {exchange.upper()}_REST_URL / SIMULATOR_HOST)"
                raise ExchangeClockUnavailable(reason + (hint if error.status is None else ""))
            attempt += 1
            wait = error.wait_seconds
            if error.kind in (ErrorKind.RATE_LIMITED, ErrorKind.BANNED):
                wait = wait if wait is not None else settings.rest_rate_window_seconds
                if limiter is not None:
                    await limiter.block_for(wait, f"HTTP {error.status} {error.message}")
                    continue
            if wait is None:
                wait = backoff_seconds(attempt, RETRY_BASE_SECONDS, settings.rest_rate_window_seconds)
            log.warning("%s; retry %d/%d in %.1fs", reason, attempt, settings.rest_max_retries, wait)
            await asyncio.sleep(wait)
    finally:
        if own_session:
            await http.close()


class ExchangeClock:
    """An exchange's present for a long run: the last answer plus the local time elapsed since, asked
    again after `refresh_seconds`. Exact at the real exchanges' pace; behind for a simulator running
    faster (by up to its speed - 1 times `refresh_seconds`). When the exchange does not answer, the
    estimate goes on from the last answer (the local clock before the first) and the next call asks
    again after `refresh_seconds`."""

    def __init__(
        self,
        settings: Settings,
        exchange: str,
        limiter: SharedRateLimiter | None = None,
        refresh_seconds: float = CLOCK_REFRESH_SECONDS,
    ):
        self.settings = settings
        self.exchange = exchange
        self.limiter = limiter
        self.refresh_seconds = refresh_seconds
        self._answer_ms = int(time.time() * 1000)
        self._answered_at = time.monotonic()
        self._asked_at: float | None = None
        self._lock = asyncio.Lock()

    async def now_ms(self, http: aiohttp.ClientSession | None = None) -> int:
        async with self._lock:
            if self._asked_at is None or time.monotonic() - self._asked_at >= self.refresh_seconds:
                self._asked_at = time.monotonic()
                try:
                    self._answer_ms = await exchange_now_ms(self.settings, self.exchange, self.limiter, http)
                    self._answered_at = time.monotonic()
                except ExchangeClockUnavailable as error:
                    log.warning("%s; going on with an estimate", error)
            return self._answer_ms + int((time.monotonic() - self._answered_at) * 1000)
