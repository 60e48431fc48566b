"""GET /api/health: is every part of the platform answering? 503 when something is degraded."""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from common.exchanges import EXCHANGES
from common.redis_keys import WS_UPDATER_HEALTH, ws_health_key
from web import reads
from web.api.deps import HubDep, PoolDep, RedisDep, SettingsDep
from web.database import DatabaseUnavailable

router = APIRouter(tags=["health"])


def _ints(raw: dict[bytes, bytes]) -> dict[str, int | float]:
    out: dict[str, int | float] = {}
    for key, value in raw.items():
        try:
            text = value.decode()
            out[key.decode()] = int(text) if text.lstrip("-").isdigit() else float(text)
        except (UnicodeDecodeError, ValueError):
            continue
    return out


def component_state(values: dict, clock_field: str, now_ms: int, stale_ms: float) -> dict:
    """`absent` (never reported), `ok`, or `stale` (silent longer than the threshold)."""
    if clock_field not in values:
        return {"state": "absent"}
    age_ms = max(0, now_ms - int(values[clock_field]))
    return {
        "state": "stale" if age_ms > stale_ms else "ok",
        f"{clock_field.removesuffix('_ms')}_age_s": age_ms / 1000,
    }


@router.get("/health", summary="Platform health (503 when degraded)")
async def health(
    request: Request, settings: SettingsDep, pool: PoolDep, redis: RedisDep, hub: HubDep
) -> JSONResponse:
    """Database and Redis reachability, each fetcher's last-message age, the updater's backlog.
    A fetcher or updater that never reported is `absent` (not an error: it may not be deployed);
    one silent for longer than WEB_HEALTH_STALE_SECONDS is `stale` and makes the answer 503."""
    report: dict = {}
    try:
        await asyncio.wait_for(pool.run(reads.ping), timeout=5)
        report["database"] = {"state": "ok"}
    except (DatabaseUnavailable, TimeoutError) as error:
        report["database"] = {"state": "down", "error": str(error) or "no answer within 5 s"}
    now_ms = int(time.time() * 1000)
    stale_ms = settings.web_health_stale_seconds * 1000
    try:
        async with redis.pipeline(transaction=False) as pipe:
            pipe.ping()
            for exchange in EXCHANGES:
                pipe.hgetall(ws_health_key(exchange))
            pipe.hgetall(WS_UPDATER_HEALTH)
            answers = await pipe.execute()
        report["redis"] = {"state": "ok"}
        fetchers = {}
        for exchange, raw in zip(EXCHANGES, answers[1:-1], strict=True):
            values = _ints(raw)
            fetchers[exchange] = {**component_state(values, "last_message_ms", now_ms, stale_ms), **values}
        report["fetchers"] = fetchers
        updater = _ints(answers[-1])
        report["updater"] = {**component_state(updater, "last_flush_ms", now_ms, stale_ms), **updater}
    except (RedisError, OSError) as error:
        report["redis"] = {"state": "down", "error": str(error)}
    report["web"] = {"websocket_subscriptions": hub.subscriber_count, "live_listener": hub.listening.is_set()}
    cache = request.app.state.history_cache
    if cache is not None:
        report["web"]["history_cache"] = {"bytes": cache.bytes, "blocks": cache.blocks, **asdict(cache.stats)}
    parts = [report["database"], report["redis"], *report.get("fetchers", {}).values()]
    parts.append(report.get("updater", {}))
    degraded = any(part.get("state") in ("down", "stale") for part in parts)
    report["status"] = "degraded" if degraded else "ok"
    return JSONResponse(report, status_code=503 if degraded else 200)
