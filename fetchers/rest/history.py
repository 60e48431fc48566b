"""Where an exchange's history of a market starts, so that a backfill that asked for minutes before it
can say so, naming the first minute the exchange has.

One request per market asked about: the adapter's own candles request from the epoch (the exchanges
answer it with their oldest candles), under the shared rate budget like every other request.
"""

from __future__ import annotations

import logging
import time

import aiohttp

from common.db import connect, load_markets
from common.redis_clients import async_client
from common.settings import Settings
from common.timeutil import floor_minute_ms
from fetchers.exchanges import get_adapter
from fetchers.exchanges.base import task_for
from fetchers.rest.rate_limiter import SharedRateLimiter

log = logging.getLogger(__name__)

PROBED_MARKETS = 3
"""At most this many markets of a job are asked about (one request each)."""


async def first_available_minutes(
    settings: Settings, exchange: str, symbols: list[str], limit: int = PROBED_MARKETS
) -> dict[str, int | None]:
    """For the first `limit` of `symbols`: the open time (epoch ms) of the oldest candle the exchange
    serves, or None when it answers with none or not at all (this is advice, never an error)."""
    adapter = get_adapter(exchange)
    conn = connect(settings)
    try:
        markets = {market.symbol: market for market in load_markets(conn, exchange)}
    finally:
        conn.close()
    client = async_client(settings, ride_out_outages=True)
    limiter = SharedRateLimiter(client, exchange, adapter.rate_limit(settings))
    found: dict[str, int | None] = {}
    timeout = aiohttp.ClientTimeout(total=settings.rest_timeout_seconds)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as http:
            for symbol in symbols[:limit]:
                market = markets.get(symbol)
                if market is None:
                    continue
                now_ms = int(time.time() * 1000)
                task = task_for(market, 0, floor_minute_ms(now_ms))
                request = adapter.candles_request(task, now_ms)
                found[symbol] = None
                try:
                    await limiter.acquire(request.weight)
                    async with http.get(request.url(settings.rest_url(exchange))) as response:
                        if response.status != 200:
                            continue
                        body = await response.text()
                    candles = adapter.parse_candles(task, body)
                except (TimeoutError, aiohttp.ClientError, ValueError) as error:
                    log.info("%s %s: could not ask where its history starts: %s", exchange, symbol, error)
                    continue
                if candles:
                    found[symbol] = min(candle.time for candle in candles)
    finally:
        await client.aclose()
    return found
