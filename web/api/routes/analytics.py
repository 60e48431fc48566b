"""GET /api/analytics/*: the analytics views (returns and quoted volume)."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Annotated

from fastapi import APIRouter, Query

from web import reads
from web.api.deps import PoolDep
from web.api.errors import BadRequest

router = APIRouter(prefix="/analytics", tags=["analytics"])

Limit = Annotated[int, Query(ge=-1, le=100_000, description="rows at most; -1 = all")]
Cutoff = Annotated[str | None, Query(max_length=40, description="decimal, e.g. -0.5")]


def _cutoff(name: str, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        number = Decimal(value)
    except InvalidOperation:
        number = None
    if number is None or not number.is_finite():
        raise BadRequest(f"{name}: send a decimal number such as 0.05 (got {value!r})", 422)
    return str(number)


def _limit(limit: int) -> int | None:
    if limit == 0:
        raise BadRequest("limit: send a positive number of rows, or -1 for all (got 0)", 422)
    return None if limit == -1 else limit


async def _returns(pool, view: str, lower: str | None, upper: str | None, limit: int) -> list[dict]:
    lo, hi, rows = _cutoff("lower_cutoff", lower), _cutoff("upper_cutoff", upper), _limit(limit)
    if lo is not None and hi is not None and Decimal(lo) > Decimal(hi):
        raise BadRequest(f"lower_cutoff ({lo}) is above upper_cutoff ({hi}): send lower <= upper")
    return await pool.run(lambda conn: reads.read_returns(conn, view, lo, hi, rows))


@router.get("/geodr", summary="Geometric mean daily return, last 30 days")
async def geodr(pool: PoolDep, lower_cutoff: Cutoff = None, upper_cutoff: Cutoff = None, limit: Limit = 50):
    """Markets by geometric mean daily return (decimal text, 0.01 = 1 %), best first; markets whose
    return lies outside [lower_cutoff, upper_cutoff] are left out."""
    return await _returns(pool, "geo_daily_return", lower_cutoff, upper_cutoff, limit)


@router.get("/wr", summary="Weekly return, last 7 days")
async def wr(pool: PoolDep, lower_cutoff: Cutoff = None, upper_cutoff: Cutoff = None, limit: Limit = 50):
    """Markets by return over the last 7 days (last close / first open - 1), best first."""
    return await _returns(pool, "weekly_return", lower_cutoff, upper_cutoff, limit)


@router.get("/top20qvlm", summary="Top 20 markets by quoted volume, last 24 hours")
async def top20qvlm(pool: PoolDep, limit: Annotated[int, Query(ge=-1, le=20)] = -1):
    """Quote-currency volume (volume x close, decimal text), largest first."""
    rows = _limit(limit)
    return await pool.run(lambda conn: reads.read_top_quoted_volume(conn, rows))
