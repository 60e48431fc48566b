"""Binance Spot API: market list, 1-minute klines, errors and limits.

Wire facts this module relies on: `exchangeInfo` (weight 20) lists symbols with `baseAsset` /
`quoteAsset` and a status; `klines` (weight 2, at most 1000 rows, ascending) gives OHLC as decimal
strings and a row for every minute, trades or not; limits are request weight per minute per IP,
reported back in `X-MBX-USED-WEIGHT-1M`; 429 and 418 carry `Retry-After`; errors are
`{"code": -1121, "msg": "Invalid symbol."}`.

Websocket: `/stream` (combined: every payload wrapped as `{"stream": .., "data": ..}`) with live
`SUBSCRIBE` requests of lower-case `<symbol>@kline_1m` names; kline fields are strings except times
and `x` (the bar is closed). At most 1024 streams per connection, 5 incoming messages per second
(pongs included), 300 connections per 5 minutes; the server pings every 20 s, cuts every connection
after 24 hours, and announces a restart with `serverShutdown`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import orjson

from common.candle import Candle, CandleBlock, Market, check_ohlcv, only_number_chars
from common.settings import Settings
from common.timeutil import MINUTE_MS, ceil_minute_ms
from fetchers.exchanges.base import (
    ErrorKind,
    ExchangeAdapter,
    ExchangeError,
    FetchTask,
    RestRequest,
    WsAction,
    WsCandle,
    WsError,
    WsEvent,
    WsHeartbeat,
    WsInfo,
    WsLimits,
    WsSession,
    classify_by_status,
    error_body,
    retry_after_seconds,
    server_time_field,
    ws_batches,
    ws_json,
)
from fetchers.exchanges.evidence import WsEvidence

EXCHANGE_INFO_WEIGHT = 20
TIME_WEIGHT = 1
KLINES_WEIGHT = 2
TRADING_STATUS = "TRADING"
USED_WEIGHT_HEADER = "x-mbx-used-weight-1m"
DEFAULT_BAN_SECONDS = 120.0
KLINES_JSON_CHARS = b'[]," '
"""Besides number characters, all a klines body holds; string values in it are then number text."""
WS_STREAMS_PER_CONNECTION = 1024
WS_STREAMS_PER_REQUEST = 300
WS_CONNECTIONS_PER_MINUTE = 60  # 300 per 5 minutes
WS_SUBSCRIBE_FRAMES_PER_SECOND = 2.0  # of the 5 messages a second allowed, keep room for pongs
KLINE_SUFFIX = "@kline_1m"


class BinanceAdapter(ExchangeAdapter):
    name = "binance"
    max_candles_per_request = 1000
    candles_request_weight = KLINES_WEIGHT
    max_request_weight = EXCHANGE_INFO_WEIGHT
    rest_budget_setting = "binance_rest_weight_per_minute"
    ws_max_subscriptions = WS_STREAMS_PER_CONNECTION
    ws_connections_per_minute = WS_CONNECTIONS_PER_MINUTE
    ws_subscribe_frames_per_second = WS_SUBSCRIBE_FRAMES_PER_SECOND

    # -- markets
    def markets_requests(self) -> list[RestRequest]:
        return [RestRequest("/api/v3/exchangeInfo", (), EXCHANGE_INFO_WEIGHT)]

    def parse_markets(self, bodies: Sequence[str]) -> list[Market]:
        data = json.loads(bodies[0])
        if not isinstance(data, dict) or not isinstance(data.get("symbols"), list):
            raise ValueError(f"unexpected exchangeInfo body: {bodies[0][:200]}")
        return [
            Market(
                self.name,
                item["baseAsset"],
                item["quoteAsset"],
                item["symbol"],
                item.get("status") == TRADING_STATUS,
            )
            for item in data["symbols"]
        ]

    # -- the exchange's clock
    def server_time_request(self) -> RestRequest:
        return RestRequest("/api/v3/time", (), TIME_WEIGHT)

    def parse_server_time(self, headers: Mapping[str, str], body: str) -> int:
        return server_time_field(body)

    # -- history over REST
    def candles_request(self, task: FetchTask, now_ms: int) -> RestRequest:
        return RestRequest(
            "/api/v3/klines",
            (
                ("symbol", task.symbol),
                ("interval", "1m"),
                ("startTime", str(task.start_ms)),
                ("endTime", str(task.end_ms - 1)),
                ("limit", str(self.max_candles_per_request)),
            ),
            self.candles_request_weight,
        )

    def parse_candles(self, task: FetchTask, body: str) -> list[Candle]:
        """Klines as Candles carrying Binance's own decimal strings (exact, no conversion). A body
        of nothing but numbers and number strings is cleared in one pass; any other is checked
        value by value."""
        rows = json.loads(body, parse_float=str)  # numbers, if ever sent, keep their text
        if not isinstance(rows, list):
            raise ValueError(f"expected a list of klines, got {body[:200]}")
        checked = only_number_chars(body, KLINES_JSON_CHARS) and '""' not in body
        candles = []
        name, base, quote = self.name, task.base_id, task.quote_id
        start_ms, end_ms = task.start_ms, task.end_ms
        row = None
        try:
            for row in rows:
                time_ms, open_, high, low, close, volume = row[:6]
                if time_ms.__class__ is not int:
                    raise TypeError("open time is not an integer")
                if not (start_ms <= time_ms < end_ms) or time_ms % MINUTE_MS:
                    continue
                if not (checked and open_.__class__ is str and high.__class__ is str and low.__class__ is str
                        and close.__class__ is str and volume.__class__ is str):  # fmt: skip
                    check_ohlcv(open_, high, low, close, volume)
                candles.append(Candle(name, base, quote, time_ms, open_, high, low, close, volume))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"malformed kline row {row!r}: {exc}") from None
        return candles

    def parse_candle_block(self, task: FetchTask, body: str) -> CandleBlock:
        """`parse_candles` in bulk. The usual body (number strings only, a row per minute of the
        task's range) becomes a block with no object per candle: a C parser, and one check over
        the whole block; `"\\t".join` refuses any value that is not a string. Any other body takes
        the value-by-value path of `parse_candles`."""
        if only_number_chars(body, KLINES_JSON_CHARS):
            try:
                rows = orjson.loads(body)
                times = [row[0] for row in rows]
                lines = [f"{row[0]:d}\t" + "\t".join(row[1:6]) for row in rows]
                block = CandleBlock(self.name, task.base_id, task.quote_id, times, lines)
            except (TypeError, ValueError, IndexError, KeyError):
                pass
            else:
                if not times or (task.start_ms <= times[0] and times[-1] < task.end_ms):
                    return block
        return super().parse_candle_block(task, body)

    # -- limits
    def classify_error(self, status: int, headers: Mapping[str, str], body: str) -> ExchangeError:
        data, message = error_body(status, body)
        code = None
        if isinstance(data, dict) and "code" in data:
            code, message = str(data["code"]), str(data.get("msg", ""))
        if status == 418:
            wait = retry_after_seconds(headers)
            return ExchangeError(ErrorKind.BANNED, wait or DEFAULT_BAN_SECONDS, code, message, status)
        return classify_by_status(status, headers, code, message)

    def used_weight(self, headers: Mapping[str, str]) -> int | None:
        for name, value in headers.items():
            if name.lower() == USED_WEIGHT_HEADER:
                try:
                    return int(value)
                except ValueError:
                    return None
        return None

    # -- live bars over the websocket
    def ws_url(self, settings: Settings) -> str:
        return settings.ws_url(self.name) + "/stream"

    def subscribe_frames(self, markets: Sequence[Market], session: WsSession) -> list[str]:
        return self._requests("SUBSCRIBE", markets, session)

    def unsubscribe_frames(self, markets: Sequence[Market], session: WsSession) -> list[str]:
        return self._requests("UNSUBSCRIBE", markets, session)

    def _requests(self, method: str, markets: Sequence[Market], session: WsSession) -> list[str]:
        streams = [m.symbol.lower() + KLINE_SUFFIX for m in markets]
        return ws_batches(
            lambda chunk: {"method": method, "params": chunk, "id": session.request_id()},
            streams,
            WS_STREAMS_PER_REQUEST,
        )

    def parse_ws_frame(self, text: str, session: WsSession) -> list[WsEvent]:
        """orjson reads the frame: Binance writes every price and volume as a JSON string, so the
        parser never touches the numbers' text, and it is a third of json's cost per frame."""
        data = ws_json(text, loads=orjson.loads)
        if not isinstance(data, dict):
            raise ValueError(f"unexpected frame: {text[:200]}")
        event = data.get("data", data) if "stream" in data else data
        if not isinstance(event, dict):
            raise ValueError(f"unexpected frame: {text[:200]}")
        kind = event.get("e")
        if kind == "kline":
            try:
                k = event["k"]
                candle = WsCandle(
                    k["s"],
                    k["t"],
                    k["o"],
                    k["h"],
                    k["l"],
                    k["c"],
                    k["v"],
                    k["x"] is True,
                    server_ms=event["E"],
                )
            except (KeyError, TypeError):
                raise ValueError(f"malformed kline: {text[:200]}") from None
            if (
                type(candle.time) is not int
                or type(candle.server_ms) is not int
                or not all(
                    type(v) is str
                    for v in (candle.open, candle.high, candle.low, candle.close, candle.volume)
                )
            ):
                raise ValueError(f"malformed kline: {text[:200]}")
            return [candle]
        if kind == "serverShutdown":
            return [WsInfo(WsAction.RECONNECT, None, "serverShutdown")]
        if "error" in event:
            error = event["error"] if isinstance(event["error"], dict) else {}
            return [WsError(str(error.get("code")), str(error.get("msg", event["error"])))]
        if "result" in event:
            return [WsHeartbeat()]
        return [WsInfo(WsAction.NONE, None, f"event {kind!r}")]

    def ws_evidence(self, symbols: Sequence[str], limits: WsLimits) -> WsEvidence:
        return BinanceEvidence(symbols, limits)


class BinanceEvidence(WsEvidence):
    """A minute is proven by its closing update (`"x": true`) on a connection whole since before
    the minute began: the market's run starts at the first minute after its first frame was sent
    (`E`). A close that arrives after a missing one ends the run at the missing minute."""

    def observe(self, event: WsEvent, received: float) -> None:
        if type(event) is not WsCandle or event.symbol not in self.markets:
            return
        proof = self.markets[event.symbol]
        if proof.since_ms is None:
            assert event.server_ms is not None
            self.start_run(event.symbol, ceil_minute_ms(event.server_ms))
            proof = self.markets[event.symbol]
        assert proof.since_ms is not None
        if not event.closed or event.time < proof.since_ms:
            return
        if event.time > proof.until_ms:
            self.end_run(event.symbol, self.why(f"closing update missing before {event.time}"))
            self.start_run(event.symbol, event.time)
        self.prove(event.symbol, event.time + MINUTE_MS)
