"""GET /api/ohlcvs: bars of one market at one interval, history plus the newest live minutes."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import BaseModel

from common import reads
from common.reads import INTERVALS
from common.settings import ExchangeName
from web.api.deps import HubDep, PoolDep, SettingsDep
from web.api.errors import BadRequest
from web.bars import encode_bars
from web.candles import MarketKey, read_ohlcvs

router = APIRouter(tags=["ohlcvs"])

IntervalName = Literal["1m", "5m", "15m", "30m", "1h", "3h", "6h", "12h", "1D", "7D", "14D", "1M"]
MAX_MS = 253_402_300_799_999
DEFAULT_LIMIT = 500


class BarOut(BaseModel):
    time: int | str
    open: str
    high: str
    low: str
    close: str
    volume: str


MarketId = Annotated[str, Query(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9._-]+$")]


@router.get(
    "/ohlcvs",
    response_class=Response,
    responses={200: {"model": list[BarOut], "description": "bars, oldest first"}},
    summary="Candles of one market",
)
async def get_ohlcvs(
    settings: SettingsDep,
    pool: PoolDep,
    hub: HubDep,
    exchange: ExchangeName,
    base_id: MarketId,
    quote_id: MarketId,
    interval: IntervalName = "1m",
    start: Annotated[
        int | None, Query(ge=0, le=MAX_MS, description="first bar open time, ms, inclusive")
    ] = None,
    end: Annotated[
        int | None, Query(ge=0, le=MAX_MS, description="last bar open time, ms, inclusive")
    ] = None,
    limit: Annotated[
        int, Query(description="bars at most (1 to WEB_OHLCVS_MAX_LIMIT, 5000 by default)")
    ] = DEFAULT_LIMIT,
    empty_ts: Annotated[
        bool, Query(description="fill minutes without trades with flat zero-volume bars")
    ] = False,
    results_mls: Annotated[bool, Query(description="time as ms (true) or ISO-8601 UTC text (false)")] = True,
) -> Response:
    """The newest `limit` bars whose open time lies in [start, end], oldest first. Prices and
    volumes are the stored decimal text. Minutes still in Redis are merged in."""
    if not 1 <= limit <= settings.web_ohlcvs_max_limit:
        raise BadRequest(f"limit: send a number from 1 to {settings.web_ohlcvs_max_limit} (got {limit})", 422)
    if start is not None and end is not None and start > end:
        raise BadRequest(f"start ({start}) is after end ({end}): send start <= end (both ms, inclusive)")
    market = MarketKey(exchange, base_id, quote_id)
    bars = await read_ohlcvs(
        pool,
        hub.recent_minutes,
        market,
        INTERVALS[interval],
        start,
        end,
        limit,
        empty_ts,
    )
    if not bars and not await pool.run(lambda conn: reads.market_exists(conn, exchange, base_id, quote_id)):
        raise BadRequest(
            f"unknown market {exchange} {base_id}/{quote_id}: "
            f"see GET /api/symbol-exchange?exchange={exchange} for the markets",
            404,
        )
    return Response(encode_bars(bars, results_mls), media_type="application/json")
