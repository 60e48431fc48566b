"""GET /api/symbol-exchange: the markets the platform knows."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from common.exchanges import ExchangeName
from web import reads
from web.api.deps import PoolDep

router = APIRouter(tags=["markets"])


class MarketOut(BaseModel):
    exchange: str
    base_id: str
    quote_id: str
    symbol: str
    is_trading: bool


@router.get("/symbol-exchange", response_model=list[MarketOut], summary="Markets")
async def get_symbol_exchange(
    pool: PoolDep,
    exchange: ExchangeName | None = None,
    base_id: Annotated[str | None, Query(max_length=40)] = None,
    quote_id: Annotated[str | None, Query(max_length=40)] = None,
    is_trading: bool | None = None,
) -> list[dict]:
    """Rows of `symbol_exchange` matching every filter given, sorted by exchange, base, quote."""
    return await pool.run(lambda conn: reads.list_markets(conn, exchange, base_id, quote_id, is_trading))
