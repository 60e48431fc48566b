"""Creating backfill jobs: validate the user's request, choose markets, plan, store durably.

Planning is pure (the adapter says how few requests cover a range); this module adds the checks
a user needs — one clear message per mistake — and hands the plan to the job store.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence
from datetime import datetime

from common.candle import Market
from common.db import connection, load_markets
from common.exchanges import EXCHANGES
from common.redis_clients import async_client
from common.settings import Settings
from common.timeutil import MINUTE_MS, datetime_to_ms, floor_minute_ms, ms_to_datetime
from fetchers.exchanges import get_adapter
from fetchers.exchanges.base import ExchangeAdapter, FetchTask, UnknownSymbolError, resolve_symbol
from fetchers.rest.exchange_clock import exchange_now_ms
from fetchers.rest.job_store import JobInfo, JobStore, job_scope
from fetchers.rest.markets import refresh_markets
from fetchers.rest.rate_limiter import SharedRateLimiter
from fetchers.rest.sources import REST, ArchiveUnavailable, plan_market


class BackfillRequestError(ValueError):
    """The user's backfill request is invalid; the message says why in one line."""


def plan_job(
    adapter: ExchangeAdapter,
    markets: Sequence[Market],
    start_ms: int,
    end_ms: int,
    now_ms: int | None = None,
    source: str = REST,
) -> Iterator[FetchTask]:
    """Every market's requests (and archive files, see fetchers/rest/sources.py: which closed days
    come from files depends on the exchange's `now_ms`), interleaved oldest-first so all markets
    progress together. Raises ArchiveUnavailable (from the first market) for `source` archive
    over minutes no file holds."""
    if source != REST and now_ms is None:
        raise ValueError("planning archive files needs the exchange's present (now_ms)")
    if markets and source != REST:
        next(plan_market(adapter, markets[0], start_ms, end_ms, now_ms or 0, source), None)
    per_market = (plan_market(adapter, m, start_ms, end_ms, now_ms or 0, source) for m in markets)
    return heapq.merge(*per_market, key=lambda t: (t.start_ms, t.symbol))


def validate_range(start: datetime, end: datetime, now: datetime | None) -> tuple[int, int]:
    """[start, end) in ms; both bounds must be on a whole minute (candles are per minute, so any
    other bound would silently widen or narrow the range). The end is clamped to the current minute
    of `now`, the exchange's present (a simulator running fast is ahead of this machine's clock);
    `now=None` checks only what needs no exchange, so bad input is told before any service is asked."""
    start_ms, end_ms = datetime_to_ms(start), datetime_to_ms(end)
    for name, value, ms in (("--start", start, start_ms), ("--end", end, end_ms)):
        if ms % MINUTE_MS or value.microsecond:
            raise BackfillRequestError(
                f"{name} ({value.isoformat()}) is not on a whole minute; candles are per minute, "
                f"use e.g. {ms_to_datetime(floor_minute_ms(ms)).isoformat()}"
            )
    if end_ms <= start_ms:
        raise BackfillRequestError(f"--end ({end.isoformat()}) must be after --start ({start.isoformat()})")
    if now is None:
        return start_ms, end_ms
    now_ms = floor_minute_ms(datetime_to_ms(now))
    if start_ms >= now_ms:
        raise BackfillRequestError(
            f"the range starts in the future ({start.isoformat()}; the exchange's clock says "
            f"{ms_to_datetime(now_ms).isoformat()}); nothing to fetch yet"
        )
    return start_ms, min(end_ms, now_ms)


def check_exchange(exchange: str) -> str:
    name = exchange.lower()
    if name not in EXCHANGES:
        raise BackfillRequestError(f"unknown exchange {exchange!r}; choose one of {', '.join(EXCHANGES)}")
    return name


def choose_markets(known: Sequence[Market], symbols: Sequence[str] | None) -> list[Market]:
    if not symbols:
        trading = [m for m in known if m.is_trading]
        if not trading:
            raise BackfillRequestError("no trading markets known for this exchange")
        return trading
    chosen: list[Market] = []
    for text in symbols:
        try:
            market = resolve_symbol(known, text)
        except UnknownSymbolError as error:
            raise BackfillRequestError(str(error)) from None
        if market not in chosen:
            chosen.append(market)
    return chosen


async def exchange_now(settings: Settings, exchange: str) -> datetime:
    """The exchange's present (its clock, not this machine's), paced by the exchange's shared budget."""
    client = async_client(settings)
    try:
        limiter = SharedRateLimiter(client, exchange, get_adapter(exchange).rate_limit(settings))
        return ms_to_datetime(await exchange_now_ms(settings, exchange, limiter))
    finally:
        await client.aclose()


async def create_job(
    settings: Settings,
    exchange: str,
    start: datetime,
    end: datetime,
    symbols: Sequence[str] | None = None,
    now: datetime | None = None,
    source: str | None = None,
) -> JobInfo:
    """Validate against `now` (default: the exchange's own clock, see `exchange_now`), pick markets
    (refreshing the list from the exchange if none are known), plan and store the job. Raises
    BackfillRequestError for the user's mistakes, ExchangeClockUnavailable if the exchange cannot
    tell its time. `source` (default: the BACKFILL_SOURCE setting): see fetchers/rest/sources.py."""
    exchange = check_exchange(exchange)
    source = source or settings.backfill_source
    now = now or await exchange_now(settings, exchange)
    start_ms, end_ms = validate_range(start, end, now)
    adapter = get_adapter(exchange)
    with connection(settings) as conn:
        known = load_markets(conn, exchange)
    if not known:
        await refresh_markets(settings, exchange)
        with connection(settings) as conn:
            known = load_markets(conn, exchange)
    markets = choose_markets(known, symbols)
    try:
        tasks = plan_job(adapter, markets, start_ms, end_ms, datetime_to_ms(now), source)
    except ArchiveUnavailable as error:
        raise BackfillRequestError(str(error)) from None
    limit = adapter.rate_limit(settings)
    per_minute = limit.capacity * 60 / limit.window_seconds / max(adapter.candles_request_weight, 1)
    client = async_client(settings)
    try:
        return await JobStore(client, job_scope(settings)).create(
            exchange,
            start_ms,
            end_ms,
            [m.symbol for m in markets],
            tasks,
            limit_per_minute=per_minute,
            source=source,
        )
    finally:
        await client.aclose()
