"""Bitfinex API v2 (public): market list, 1-minute candles, errors and limits.

Wire facts this module relies on: pairs are listed without the `t` prefix and split on `:` or 3+3;
candles are `[MTS, OPEN, CLOSE, HIGH, LOW, VOLUME]` (OCHL) as JSON numbers, newest first unless
`sort=1`; no candle exists for a minute without trades; errors are `["error", code, text]`, and a
rate limit is HTTP 429 with code 11010 followed by a ~60 s block.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from common.candle import Candle, Market, check_ohlcv, only_number_chars
from common.settings import Settings
from common.timeutil import MINUTE_MS
from fetchers.exchanges.base import (
    ErrorKind,
    ExchangeAdapter,
    ExchangeError,
    FetchTask,
    RateLimit,
    RestRequest,
    classify_by_status,
    error_body,
    retry_after_seconds,
)

PAIRS_CONF = "pub:list:pair:exchange"
RATE_LIMIT_CODE = 11010
RETRYABLE_CODES = {10000, 11000, 20060}  # unknown error, not ready, maintenance
PAPER_TRADING_PREFIX = "TEST"


def split_pair(pair: str) -> tuple[str, str]:
    """`BTCUSD` -> (BTC, USD); `AAVE:USD` -> (AAVE, USD): colon whenever a side is not 3 letters."""
    if ":" in pair:
        base, quote = pair.split(":", 1)
    elif len(pair) == 6:
        base, quote = pair[:3], pair[3:]
    else:
        raise ValueError(f"cannot split Bitfinex pair {pair!r}")
    if not base or not quote:
        raise ValueError(f"cannot split Bitfinex pair {pair!r}")
    return base, quote


NUMBERS_JSON_CHARS = b"[], "
"""Besides number characters, all a candles body of JSON numbers holds."""


def _decimal_json(body: str) -> Any:
    """Bitfinex sends prices as JSON numbers: keep each number's own text (exact, never a float)."""
    return json.loads(body, parse_float=str, parse_int=str)


class BitfinexAdapter(ExchangeAdapter):
    name = "bitfinex"
    max_candles_per_request = 10_000
    candles_request_weight = 1
    max_request_weight = 1

    # -- markets
    def markets_requests(self) -> list[RestRequest]:
        return [RestRequest(f"/v2/conf/{PAIRS_CONF}")]

    def parse_markets(self, bodies: Sequence[str]) -> list[Market]:
        """Every listed spot pair; `TEST…` paper-trading pairs are kept but marked not trading."""
        data = json.loads(bodies[0])
        if not (isinstance(data, list) and data and isinstance(data[0], list)):
            raise ValueError(f"unexpected {PAIRS_CONF} body: {bodies[0][:200]}")
        markets = []
        for pair in data[0]:
            base, quote = split_pair(str(pair))
            trading = not (base.startswith(PAPER_TRADING_PREFIX) or quote.startswith(PAPER_TRADING_PREFIX))
            markets.append(Market(self.name, base, quote, f"t{pair}", trading))
        return markets

    # -- history over REST
    def candles_request(self, task: FetchTask, now_ms: int) -> RestRequest:
        return RestRequest(
            f"/v2/candles/trade:1m:{task.symbol}/hist",
            (
                ("start", str(task.start_ms)),
                ("end", str(task.end_ms - 1)),
                ("limit", str(self.max_candles_per_request)),
                ("sort", "1"),
            ),
            self.candles_request_weight,
        )

    def parse_candles(self, task: FetchTask, body: str) -> list[Candle]:
        """Candles carrying Bitfinex's own number texts. Bitfinex sends no row for a minute
        without trades, so a quiet minute has no candle. A body of nothing but numbers is cleared
        in one pass (JSON numbers are decimal text); any other is checked value by value."""
        rows = _decimal_json(body)
        if not isinstance(rows, list):
            raise ValueError(f"expected a list of candles, got {body[:200]}")
        if rows and rows[0] == "error":
            raise ValueError(f"error body with HTTP 200: {body[:200]}")
        checked = only_number_chars(body, NUMBERS_JSON_CHARS)
        candles = []
        name, base, quote = self.name, task.base_id, task.quote_id
        start_ms, end_ms = task.start_ms, task.end_ms
        for row in rows:
            if row.__class__ is not list or len(row) < 6:
                raise ValueError(f"malformed candle row {row!r}")
            mts, open_, close, high, low, volume = row[:6]
            try:
                time_ms = int(mts)
                if not checked:
                    check_ohlcv(open_, high, low, close, volume)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"malformed candle row {row!r}: {exc}") from None
            if not (start_ms <= time_ms < end_ms) or time_ms % MINUTE_MS:
                continue
            candles.append(Candle(name, base, quote, time_ms, open_, high, low, close, volume))
        return candles

    # -- limits
    def classify_error(self, status: int, headers: Mapping[str, str], body: str) -> ExchangeError:
        data, message = error_body(status, body)
        code = None
        if isinstance(data, list) and len(data) >= 3 and data[0] == "error":
            code, message = data[1], str(data[2])
        elif isinstance(data, dict) and "error" in data:
            message = str(data["error"])
        code_text = None if code is None else str(code)
        wait = retry_after_seconds(headers)
        if code == RATE_LIMIT_CODE or message == "ERR_RATE_LIMIT":
            return ExchangeError(ErrorKind.RATE_LIMITED, wait, code_text, message, status)
        if code in RETRYABLE_CODES:
            return ExchangeError(ErrorKind.RETRY, wait, code_text, message, status)
        if code is not None and status != 429:
            return ExchangeError(ErrorKind.FATAL, None, code_text, message, status)  # e.g. 500 + 10020
        return classify_by_status(status, headers, code_text, message)

    def used_weight(self, headers: Mapping[str, str]) -> int | None:
        return None

    def rate_limit(self, settings: Settings) -> RateLimit:
        return RateLimit(
            settings.bitfinex_rest_requests_per_minute,
            settings.rest_rate_window_seconds,
            self.max_request_weight,
        )
