"""The web app: REST and websocket API under /api, pages under /view.

`create_app(settings)` builds an app (with `GET /metrics`, see `web.metrics`); its lifespan opens
the database pool, the Redis client and the one live-bar listener and keeps them on `app.state`.
Nothing connects at import time or at start-up: the app starts with PostgreSQL or Redis down,
answers /api/health with 503, and recovers when they return. Run it with `uvicorn web.main:app`
(`python -m web` binds WEB_HOST:WEB_PORT).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from common.redis_clients import async_client, listener_client
from common.settings import Settings, get_settings
from web import metrics
from web.api.errors import install_error_handlers
from web.api.routes import analytics, coverage, health, ohlcvs, status, symbols, ws
from web.counting import CountingProcess
from web.database import AsyncPool, ConnectionPool
from web.history_cache import HistoryCache
from web.live import LiveHub
from web.metrics import RequestMetrics, StateGauges
from web.views import mount_pages


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = ConnectionPool(settings, settings.web_db_pool_size)
        fast_pool = AsyncPool(settings, settings.web_db_pool_size)
        await fast_pool.open()
        client = async_client(settings)
        hub = LiveHub(lambda: listener_client(settings), client, pool, settings.redis_key_delimiter)
        app.state.pool, app.state.fast_pool, app.state.redis, app.state.hub = pool, fast_pool, client, hub
        app.state.counting = counting = CountingProcess()
        app.state.history_cache = (
            HistoryCache(
                client,
                fast_pool,
                settings.redis_key_delimiter,
                settings.web_cache_mb * 1024 * 1024,
                settings.web_cache_ttl_seconds,
            )
            if settings.web_cache_mb > 0
            else None
        )
        tasks = [
            asyncio.create_task(hub.run(), name="live-bar-listener"),
            asyncio.create_task(hub.heartbeats(settings.web_ws_heartbeat_seconds), name="ws-heartbeats"),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await app.state.metrics_state.close()
            counting.close()
            await client.aclose()
            await fast_pool.close()
            pool.close()

    app = FastAPI(
        title="coin-for-rich",
        summary="1-minute OHLCV candles from Bitfinex, Binance and Bittrex: history and live bars",
        openapi_url="/api/openapi.json",
        docs_url=None,  # web.views serves /api/docs with Swagger UI from node_modules, not a CDN
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics_registry = CollectorRegistry(auto_describe=True)
    app.state.metrics_state = StateGauges(settings.metrics_state_seconds)
    app.add_middleware(RequestMetrics, registry=app.state.metrics_registry)
    install_error_handlers(app)
    for module in (ohlcvs, symbols, analytics, health, status, ws, coverage):
        app.include_router(module.router, prefix="/api")
    app.include_router(metrics.router)
    mount_pages(app)
    return app


app = create_app()
