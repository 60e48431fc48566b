"""Markets refresh: ask the exchange for its market list and upsert `symbol_exchange`.

Markets that are no longer listed are marked not trading, never deleted (their candles stay).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import aiohttp

from common.candle import Market
from common.db import connection, upsert_markets
from common.redis_clients import async_client
from common.settings import Settings
from fetchers.exchanges import get_adapter
from fetchers.exchanges.base import ExchangeAdapter
from fetchers.rest.rate_limiter import SharedRateLimiter

log = logging.getLogger(__name__)


class MarketsUnavailable(RuntimeError):
    """The exchange did not give us its market list (unreachable, or an error reply)."""


@dataclass(frozen=True, slots=True)
class MarketsRefresh:
    exchange: str
    listed: int
    trading: int
    changed: int


async def fetch_markets(
    settings: Settings, adapter: ExchangeAdapter, limiter: SharedRateLimiter | None = None
) -> list[Market]:
    """GET the exchange's market list request(s) and parse them (rate-limited when given a limiter)."""
    base = settings.rest_url(adapter.name)
    bodies: list[str] = []
    timeout = aiohttp.ClientTimeout(total=settings.rest_timeout_seconds)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        for request in adapter.markets_requests():
            if limiter is not None:
                await limiter.acquire(request.weight)
            url = request.url(base)
            try:
                async with http.get(url) as response:
                    body = await response.text()
                    if response.status != 200:
                        raise MarketsUnavailable(
                            f"{adapter.name} market list: HTTP {response.status} from {url}: {body[:200]}"
                        )
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise MarketsUnavailable(
                    f"{adapter.name} market list: cannot reach {url}: {exc or type(exc).__name__}"
                ) from None
            bodies.append(body)
    return adapter.parse_markets(bodies)


async def refresh_markets(settings: Settings, exchange: str) -> MarketsRefresh:
    adapter = get_adapter(exchange)
    client = async_client(settings)
    try:
        limiter = SharedRateLimiter(client, exchange, adapter.rate_limit(settings))
        markets = await fetch_markets(settings, adapter, limiter)
    finally:
        await client.aclose()
    with connection(settings) as conn:
        changed = upsert_markets(conn, markets, exchange=exchange)
    result = MarketsRefresh(exchange, len(markets), sum(m.is_trading for m in markets), changed)
    log.info(
        "%s: %d markets listed (%d trading), %d rows changed",
        exchange,
        result.listed,
        result.trading,
        result.changed,
    )
    return result
