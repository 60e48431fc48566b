"""GET /api/coverage: which minutes of a market are known complete, missing, or being repaired;
GET /api/coverage/summary: per exchange, the minutes before markets' first bars, missing, and being
repaired (for the status page)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

import redis.asyncio as aioredis
from fastapi import APIRouter, Query

from common.candle import MarketKey
from common.completeness import covered_ranges, missing_ranges
from common.coverage import load_evidence
from common.exchanges import EXCHANGES, ExchangeName
from common.ranges import clip, intersect
from common.settings import Settings
from common.timeutil import MINUTE_MS, floor_minute_ms
from fetchers.rest.job_store import JobInfo
from fetchers.rest.repair import (
    current_repair,
    known_exchange_now_ms,
    repairing_ranges,
    repairing_ranges_by_market,
)
from web import reads
from web.api.deps import CountingDep, PoolDep, RedisDep, SettingsDep
from web.api.errors import BadRequest, unknown_market
from web.api.routes.ohlcvs import MAX_MS, MarketId
from web.counting import CountingProcess
from web.coverage_summary import ExchangeCoverage, summarise
from web.database import ConnectionPool

router = APIRouter(prefix="/coverage", tags=["coverage"])


@router.get("", summary="Covered and missing minutes of one market")
async def coverage(
    settings: SettingsDep,
    pool: PoolDep,
    redis: RedisDep,
    exchange: ExchangeName,
    base_id: MarketId,
    quote_id: MarketId,
    start: Annotated[
        int | None, Query(ge=0, le=MAX_MS, description="ms, inclusive (default: first bar)")
    ] = None,
    end: Annotated[int | None, Query(ge=0, le=MAX_MS, description="ms, exclusive (default: now)")] = None,
) -> dict:
    """Ranges `[start, end)` in ms, merged and oldest first: `covered` (known complete: a REST fetch
    succeeded, a Binance archive file whose checksum matched held them, or the live feed delivered
    them without interruption; minutes without a bar inside them had no trades), `missing`
    (everything else since the market's first bar, with recorded outages and failed requests), and
    `repairing` (the part of `missing` a repair job is fetching).
    The newest REPAIR_SETTLE_MINUTES are left to the live feed and never reported missing."""
    if start is not None and end is not None and start >= end:
        raise BadRequest(f"start ({start}) must be before end ({end}): both ms, the range is [start, end)")
    market = MarketKey(exchange, base_id, quote_id)
    if not await pool.run(lambda conn: reads.market_exists(conn, market)):
        raise unknown_market(market)
    evidence = (await pool.run(lambda conn: load_evidence(conn, exchange, base_id, quote_id))).get(
        (base_id, quote_id)
    )
    until = floor_minute_ms(await known_exchange_now_ms(exchange, redis)) - (
        settings.repair_settle_minutes * MINUTE_MS
    )
    first = floor_minute_ms(start) if start is not None else 0
    last = min(floor_minute_ms(end), until) if end is not None else until
    covered, missing = [], []
    if evidence is not None and last > first:
        covered = clip(covered_ranges(evidence), first, last)
        missing = missing_ranges(evidence, first, last)
    repairing = intersect(missing, await repairing_ranges(redis, settings, exchange, base_id, quote_id))
    return {
        "exchange": exchange,
        "base_id": base_id,
        "quote_id": quote_id,
        "start": start
        if start is not None
        else (evidence.bounds[0] if evidence and evidence.bounds else None),
        "end": last,
        "covered": [list(r) for r in covered],
        "missing": [list(r) for r in missing],
        "repairing": [list(r) for r in repairing],
        "missing_minutes": sum(e - s for s, e in missing) // MINUTE_MS,
    }


@router.get("/summary", summary="Minutes before first bars, missing and being repaired, per exchange")
async def summary(settings: SettingsDep, pool: PoolDep, redis: RedisDep, counting: CountingDep) -> list[dict]:
    """Per exchange, up to its present less REPAIR_SETTLE_MINUTES, minutes and markets in three
    distinct counts: `before_first_bar_minutes` (before a market's first bar, from the exchange's
    oldest bar `history_start` on, that nothing vouches for: not backfilled, or not traded yet; the
    repair leaves them alone), `awaiting_repair_minutes` (missing, not in the repair job under way)
    and `repairing_minutes` (missing, in that job). `missing_minutes` is the last two together, as
    `GET /api/coverage` counts missing minutes; `repair_job`, `repair_left` the job under way."""
    return [
        {
            **asdict(counts),
            "repair_job": job.id if job is not None else None,
            "repair_left": job.left if job else 0,
        }
        for counts, job in await exchange_summaries(settings, pool, redis, counting)
    ]


async def exchange_summaries(
    settings: Settings, pool: ConnectionPool, redis: aioredis.Redis, counting: CountingProcess
) -> list[tuple[ExchangeCoverage, JobInfo | None]]:
    """Per exchange, its coverage counts and its unfinished repair job (the status page's and
    `GET /metrics`' one reading). The counting runs in the web's counting process: with every
    market it is hundreds of milliseconds of Python, which would hold up every other request."""
    result = []
    for exchange in EXCHANGES:
        evidence = await pool.run(lambda conn, ex=exchange: load_evidence(conn, ex))
        now = await known_exchange_now_ms(exchange, redis)
        end = floor_minute_ms(now) - settings.repair_settle_minutes * MINUTE_MS
        repairing = await repairing_ranges_by_market(redis, settings, exchange)
        job = await current_repair(redis, settings, exchange)
        counts = await counting.run(summarise, exchange, evidence, end, repairing)
        result.append((counts, job))
    return result
