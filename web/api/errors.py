"""Error answers: every bad input is a 4xx whose `detail` says what to send instead; a store that
is down is a 503 naming it. Nothing a client sends may end in a 500."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from common.candle import MarketKey
from web.database import DatabaseUnavailable


class BadRequest(Exception):
    """A request that is well-formed but asks for something impossible (400/404)."""

    def __init__(self, detail: str, status_code: int = 400):
        super().__init__(detail)
        self.detail = detail
        self.status_code = status_code


def unknown_market(market: MarketKey) -> BadRequest:
    """The 404 of a market `symbol_exchange` does not list."""
    exchange, base_id, quote_id = market
    return BadRequest(
        f"unknown market {exchange} {base_id}/{quote_id}: "
        f"see GET /api/symbol-exchange?exchange={exchange} for the markets",
        404,
    )


def describe_validation(errors: list[dict]) -> str:
    """`start: Input should be a valid integer (got 'abc')` - one clause per problem."""
    clauses = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ()) if part not in ("query", "body", "path")]
        name = ".".join(loc) or "request"
        clause = f"{name}: {error.get('msg', 'invalid value')}"
        if error.get("type") == "missing":
            clause = f"{name}: required, send it as a query parameter"
        elif "input" in error and not isinstance(error["input"], (dict, list)):
            clause += f" (got {error['input']!r})"
        clauses.append(clause)
    return "; ".join(clauses)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": describe_validation(list(error.errors()))}, status_code=422)

    @app.exception_handler(BadRequest)
    async def _bad_request(_: Request, error: BadRequest) -> JSONResponse:
        return JSONResponse({"detail": error.detail}, status_code=error.status_code)

    @app.exception_handler(DatabaseUnavailable)
    async def _database(_: Request, error: DatabaseUnavailable) -> JSONResponse:
        return JSONResponse({"detail": f"database unavailable: {error}"}, status_code=503)

    @app.exception_handler(RedisError)
    async def _redis(_: Request, error: RedisError) -> JSONResponse:
        return JSONResponse({"detail": f"redis unavailable: {error}"}, status_code=503)
