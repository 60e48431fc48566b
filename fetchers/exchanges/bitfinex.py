"""Bitfinex API v2 (public): market list, 1-minute candles, errors and limits.

Wire facts this module relies on: pairs are listed without the `t` prefix and split on `:` or 3+3;
candles are `[MTS, OPEN, CLOSE, HIGH, LOW, VOLUME]` (OCHL) as JSON numbers, newest first unless
`sort=1`; no candle exists for a minute without trades; errors are `["error", code, text]`, and a
rate limit is HTTP 429 with code 11010 followed by a ~60 s block.

Websocket (`/ws/2`): objects are events (`info`, `subscribed`, `error`, ...), arrays are channel
data `[chanId, payload, SEQ, MTS]` (the conf flags SEQ_ALL and TIMESTAMP, sent first on every socket,
append the socket's message number and the server's clock); the channel id is only meaningful on
its own socket; a payload is a snapshot (list of candles), one candle, or `"hb"` (every 15 s on an
idle channel). Info 20051 = reconnect, 20060 = maintenance (silence),
20061 = maintenance over (resubscribe). At most 25 channels per connection, 20 connections a minute.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from common.candle import Candle, CandleBlock, Market, check_ohlcv, only_number_chars
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
    http_date_ms,
    retry_after_seconds,
    ws_json,
)
from fetchers.exchanges.evidence import WsEvidence

PAIRS_CONF = "pub:list:pair:exchange"
RATE_LIMIT_CODE = 11010
RETRYABLE_CODES = {10000, 11000, 20060}  # unknown error, not ready, maintenance
PAPER_TRADING_PREFIX = "TEST"
CANDLE_KEY_PREFIX = "trade:1m:"
PLATFORM_STATUS_PATH = "/v2/platform/status"
WS_CHANNELS_PER_CONNECTION = 25
WS_CONNECTIONS_PER_MINUTE = 20
WS_SUBSCRIBE_FRAMES_PER_SECOND = 25.0
INFO_ACTIONS = {20051: WsAction.RECONNECT, 20060: WsAction.PAUSE, 20061: WsAction.RESUBSCRIBE}
CONF_SEQ_ALL = 65_536
CONF_TIMESTAMP = 32_768
HEARTBEAT_ALLOWANCE = 1.5
"""A channel's frames may lie this many heartbeat intervals apart before it counts as silent
(the interval is 15 s give or take a few ms; the rest absorbs delays on the way)."""


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
    ws_max_subscriptions = WS_CHANNELS_PER_CONNECTION
    ws_connections_per_minute = WS_CONNECTIONS_PER_MINUTE
    ws_subscribe_frames_per_second = WS_SUBSCRIBE_FRAMES_PER_SECOND

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

    # -- the exchange's clock
    def server_time_request(self) -> RestRequest:
        """Bitfinex has no time endpoint; its platform status is the lightest reply, and every reply
        carries the server's clock in its `Date` header."""
        return RestRequest(PLATFORM_STATUS_PATH)

    def parse_server_time(self, headers: Mapping[str, str], body: str) -> int:
        """The reply's `Date` (whole seconds, so never later than the exchange's present). Unlike a
        newest candle it does not depend on any market having traded this minute."""
        return http_date_ms(headers)

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

    def parse_candle_block(self, task: FetchTask, body: str) -> CandleBlock:
        """`parse_candles` in bulk. The usual body (numbers only, ascending rows of six within the
        task's range) is cut into COPY lines by string operations, so each number keeps its own
        text; a C parser checks first that the body is valid JSON. Any other body takes the
        value-by-value path of `parse_candles`."""
        if only_number_chars(body, b"[],") and body.startswith("[[") and body.endswith("]]"):
            try:
                orjson.loads(body)
                rows = [row.split(",") for row in body[2:-2].split("],[")]
                times = [int(row[0]) for row in rows]
                lines = [f"{mts}\t{o}\t{h}\t{low}\t{c}\t{v}" for mts, o, c, h, low, v in rows]
                block = CandleBlock(self.name, task.base_id, task.quote_id, times, lines)
            except ValueError:  # orjson's decode error is one too
                pass
            else:
                if task.start_ms <= times[0] and times[-1] < task.end_ms:
                    return block
        return super().parse_candle_block(task, body)

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

    # -- live bars over the websocket
    def subscribe_frames(self, markets: Sequence[Market], session: WsSession) -> list[str]:
        """The conf flags first: every channel frame then carries the evidence `BitfinexEvidence`
        reads."""
        return [json.dumps({"event": "conf", "flags": CONF_SEQ_ALL | CONF_TIMESTAMP})] + [
            json.dumps({"event": "subscribe", "channel": "candles", "key": CANDLE_KEY_PREFIX + m.symbol})
            for m in markets
        ]

    def unsubscribe_frames(self, markets: Sequence[Market], session: WsSession) -> list[str]:
        symbols = {m.symbol for m in markets}
        return [
            json.dumps({"event": "unsubscribe", "chanId": chan_id})
            for chan_id, symbol in session.channels.items()
            if symbol in symbols
        ]

    def parse_ws_frame(self, text: str, session: WsSession) -> list[WsEvent]:
        data = ws_json(text, parse_float=NumberText)
        if isinstance(data, dict):
            return self._ws_event(data, session)
        if not isinstance(data, list) or len(data) < 2 or type(data[0]) is not int:
            raise ValueError(f"unexpected frame: {text[:200]}")
        payload = data[1]
        sequence, server_ms = (data[2], data[3]) if len(data) == 4 else (None, None)
        if type(sequence) is not int or type(server_ms) is not int:
            sequence = server_ms = None
        symbol = session.channels.get(data[0])
        if payload == "hb":
            return [WsHeartbeat(symbol, sequence, server_ms)]
        if symbol is None:  # its number still counts: the socket's sequence must not seem to jump
            return [
                WsError(None, f"data for unknown channel {data[0]}"),
                WsHeartbeat(None, sequence, server_ms),
            ]
        if not isinstance(payload, list):
            raise ValueError(f"unexpected channel payload: {text[:200]}")
        snapshot = bool(payload) and isinstance(payload[0], list)
        rows = payload if snapshot else [payload] if payload else []
        candles = [_ws_candle(symbol, row, snapshot) for row in rows]
        if not candles:
            return [WsHeartbeat(symbol, sequence, server_ms)]
        candles.sort(key=lambda c: c.time)
        candles[-1] = dataclasses.replace(candles[-1], sequence=sequence, server_ms=server_ms)
        return candles

    def _ws_event(self, data: dict[str, Any], session: WsSession) -> list[WsEvent]:
        event = data.get("event")
        key = data.get("key")
        symbol = (
            key[len(CANDLE_KEY_PREFIX) :]
            if isinstance(key, str) and key.startswith(CANDLE_KEY_PREFIX)
            else None
        )
        if event == "subscribed" and symbol is not None and type(data.get("chanId")) is int:
            session.channels[data["chanId"]] = symbol
            return [WsHeartbeat()]
        if event == "unsubscribed":
            session.channels.pop(data.get("chanId"), None)
            return [WsHeartbeat()]
        if event == "info":
            code = data.get("code")
            if code is None:  # the greeting: platform status 0 means maintenance
                status = (data.get("platform") or {}).get("status", 1)
                action = WsAction.PAUSE if status == 0 else WsAction.NONE
                return [WsInfo(action, None, f"server version {data.get('version')}")]
            return [WsInfo(INFO_ACTIONS.get(code, WsAction.NONE), code, str(data.get("msg", "")))]
        if event == "error":
            code = data.get("code")
            if code == 10301 and symbol is not None and type(data.get("chanId")) is int:
                session.channels[data["chanId"]] = symbol  # already subscribed: keep the channel
                return [WsHeartbeat()]
            return [WsError(None if code is None else str(code), str(data.get("msg", "")), symbol)]
        if event in ("pong", "conf"):
            return [WsHeartbeat()]
        return [WsInfo(WsAction.NONE, None, f"event {event!r}")]

    def ws_evidence(self, symbols: Sequence[str], limits: WsLimits) -> WsEvidence:
        return BitfinexEvidence(symbols, limits)

    def matches_symbol(self, market: Market, wanted: str) -> bool:
        """Bitfinex's own symbols carry a `t` prefix that users may leave out."""
        return super().matches_symbol(market, wanted) or market.symbol[1:].upper() == wanted


class NumberText(str):
    """A JSON number's own text (json's parse_float hook): exact, and distinct from a JSON string."""


def _ws_candle(symbol: str, row: Any, snapshot: bool) -> WsCandle:
    """`[MTS, OPEN, CLOSE, HIGH, LOW, VOLUME, ...]`, numbers only, each kept as its own text."""
    if not isinstance(row, list) or len(row) < 6 or type(row[0]) is not int:
        raise ValueError(f"malformed candle {row!r}")
    mts, open_, close, high, low, volume = row[:6]
    values = []
    for value in (open_, high, low, close, volume):
        if type(value) is int:
            values.append(str(value))
        elif type(value) is NumberText:
            values.append(str.__str__(value))
        else:
            raise ValueError(f"malformed candle {row!r}")
    return WsCandle(symbol, mts, *values, snapshot=snapshot)


class BitfinexEvidence(WsEvidence):
    """Every channel frame carries the socket's next number (SEQ_ALL) and the server's clock
    (TIMESTAMP), and an idle channel beats every heartbeat interval. While the numbers are
    contiguous and a channel's frames come at most `HEARTBEAT_ALLOWANCE` intervals apart, every
    frame the server sent for that channel arrived, so every minute between its first frame and
    the server time of its newest one is complete, trades or none. A number jump ends every run of
    the socket; a silent channel ends its own. Runs start at the minute after a channel's first
    frame (its snapshot, or the first after a break), and after the newest bar that frame carries.
    Without the numbers nothing is proven."""

    def __init__(self, symbols: Sequence[str], limits: WsLimits) -> None:
        super().__init__(symbols, limits)
        self.allowed_silence = HEARTBEAT_ALLOWANCE * limits.heartbeat_seconds
        self.sequence: int | None = None
        self.heard: dict[str, float] = {}
        """Per channel's market: when its newest frame was received (`time.perf_counter()`)."""

    def restart(self, reason: str) -> None:
        super().restart(reason)
        self.sequence = None
        self.heard.clear()

    def observe(self, event: WsEvent, received: float) -> None:
        if type(event) is WsCandle or type(event) is WsHeartbeat:
            number, server_ms, symbol = event.sequence, event.server_ms, event.symbol
        else:
            return
        if number is None or server_ms is None:
            return
        last, self.sequence = self.sequence, number
        if last is not None and number != last + 1:
            reason = self.why(f"sequence jumped from {last} to {number}")
            for market in self.markets:
                self.end_run(market, reason)
            self.heard.clear()
        if symbol is None or symbol not in self.markets:
            return
        heard = self.heard.get(symbol)
        self.heard[symbol] = received
        if heard is not None and received - heard <= self.allowed_silence:
            self.prove(symbol, server_ms - server_ms % MINUTE_MS)
            return
        if heard is not None:
            self.end_run(symbol, self.why(f"channel silent for {received - heard:.1f}s"))
        start = ceil_minute_ms(server_ms)
        if type(event) is WsCandle:  # a frame stamped before its own bar still vouches for no part of it
            start = max(start, event.time + MINUTE_MS)
        self.start_run(symbol, start)
