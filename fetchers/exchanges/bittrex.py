"""Bittrex API v3: market list, 1-minute candles, errors and limits.

Wire facts this module relies on: `/v3/markets` names the base and quote of each `BASE-QUOTE`
symbol and its status (`ONLINE`/`OFFLINE`); minute candles come one UTC day per request from
`historical/{y}/{m}/{d}` (plain integers, exactly three parts), while the unfinished current day is
served only by `recent` (the last day); every minute has a candle (zero volume when quiet); numbers
are decimal strings; errors are `{"code": "..."}` and the limit is 60 calls per minute (HTTP 429).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime

from common.candle import Candle, Market, check_ohlcv
from common.settings import Settings
from common.timeutil import datetime_to_ms, ensure_utc, ms_to_datetime
from fetchers.exchanges.base import (
    ExchangeAdapter,
    ExchangeError,
    FetchTask,
    RateLimit,
    RestRequest,
    chunk_range,
    classify_by_status,
    error_body,
    in_task_range,
    task_for,
)

DAY_MS = 86_400_000
ONLINE_STATUS = "ONLINE"
CANDLES_PATH = "/v3/markets/{symbol}/candles/TRADE/MINUTE_1"


def day_start_ms(time_ms: int) -> int:
    return time_ms - time_ms % DAY_MS


class BittrexAdapter(ExchangeAdapter):
    name = "bittrex"
    max_candles_per_request = 1440
    candles_request_weight = 1
    max_request_weight = 1

    # -- markets
    def markets_requests(self) -> list[RestRequest]:
        return [RestRequest("/v3/markets")]

    def parse_markets(self, bodies: Sequence[str]) -> list[Market]:
        data = json.loads(bodies[0])
        if not isinstance(data, list):
            raise ValueError(f"unexpected /v3/markets body: {bodies[0][:200]}")
        return [
            Market(
                self.name,
                item["baseCurrencySymbol"],
                item["quoteCurrencySymbol"],
                item["symbol"],
                item.get("status") == ONLINE_STATUS,
            )
            for item in data
        ]

    # -- history over REST
    def plan_fetch_tasks(self, market: Market, start_ms: int, end_ms: int) -> Iterator[FetchTask]:
        """One request per UTC day the range touches: Bittrex serves minutes by calendar day."""
        first_day = day_start_ms(start_ms)
        for day, _ in chunk_range(first_day, end_ms, DAY_MS):
            yield task_for(market, max(day, start_ms), min(day + DAY_MS, end_ms))

    def candles_request(self, task: FetchTask, now_ms: int) -> RestRequest:
        """`historical` for a finished day; `recent` (the last 24 h) for today, which it does not serve."""
        day = day_start_ms(task.start_ms)
        base = CANDLES_PATH.format(symbol=task.symbol)
        if day + DAY_MS <= now_ms:
            date = ms_to_datetime(day)
            return RestRequest(
                f"{base}/historical/{date.year}/{date.month}/{date.day}", (), self.candles_request_weight
            )
        return RestRequest(f"{base}/recent", (), self.candles_request_weight)

    def parse_candles(self, task: FetchTask, body: str) -> list[Candle]:
        """Candles carrying Bittrex's own decimal strings (exact, no conversion)."""
        rows = json.loads(body)
        if not isinstance(rows, list):
            raise ValueError(f"expected a list of candles, got {body[:200]}")
        candles = []
        for row in rows:
            if not isinstance(row, dict):
                raise ValueError(f"malformed candle {row!r}")
            try:
                time_ms = datetime_to_ms(ensure_utc(datetime.fromisoformat(row["startsAt"])))
                if not in_task_range(task, time_ms):
                    continue
                values = (row["open"], row["high"], row["low"], row["close"], row.get("volume", "0"))
                check_ohlcv(*values)
                candles.append(Candle(self.name, task.base_id, task.quote_id, time_ms, *values))
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"malformed candle {row!r}: {exc!r}") from None
        return candles

    # -- limits
    def classify_error(self, status: int, headers: Mapping[str, str], body: str) -> ExchangeError:
        data, message = error_body(status, body)
        code = None
        if isinstance(data, dict) and "code" in data:
            code = str(data["code"])
            message = " ".join(str(part) for part in (code, data.get("detail"), data.get("data")) if part)
        return classify_by_status(status, headers, code, message)

    def used_weight(self, headers: Mapping[str, str]) -> int | None:
        return None

    def rate_limit(self, settings: Settings) -> RateLimit:
        return RateLimit(
            settings.bittrex_rest_requests_per_minute,
            settings.rest_rate_window_seconds,
            self.max_request_weight,
        )
