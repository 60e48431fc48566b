"""Typed dependencies: what route handlers need, read from the app state the lifespan filled.

They are `async` on purpose: FastAPI runs a plain `def` dependency on a worker thread, which cost
several thread hops per request for what is an attribute read."""

from __future__ import annotations

from typing import Annotated

import redis.asyncio as aioredis
from fastapi import Depends
from starlette.requests import HTTPConnection

from common.settings import Settings
from web.counting import CountingProcess
from web.database import AsyncPool, ConnectionPool
from web.live import LiveHub


async def app_settings(connection: HTTPConnection) -> Settings:
    return connection.app.state.settings


async def database_pool(connection: HTTPConnection) -> ConnectionPool:
    return connection.app.state.pool


async def async_pool(connection: HTTPConnection) -> AsyncPool:
    return connection.app.state.fast_pool


async def app_redis(connection: HTTPConnection) -> aioredis.Redis:
    return connection.app.state.redis


async def live_hub(connection: HTTPConnection) -> LiveHub:
    return connection.app.state.hub


async def counting_process(connection: HTTPConnection) -> CountingProcess:
    return connection.app.state.counting


SettingsDep = Annotated[Settings, Depends(app_settings)]
PoolDep = Annotated[ConnectionPool, Depends(database_pool)]
AsyncPoolDep = Annotated[AsyncPool, Depends(async_pool)]
RedisDep = Annotated[aioredis.Redis, Depends(app_redis)]
HubDep = Annotated[LiveHub, Depends(live_hub)]
CountingDep = Annotated[CountingProcess, Depends(counting_process)]
