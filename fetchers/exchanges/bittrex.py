"""Bittrex API v3: market list, 1-minute candles, errors and limits.

Wire facts this module relies on: `/v3/markets` names the base and quote of each `BASE-QUOTE`
symbol and its status (`ONLINE`/`OFFLINE`); minute candles come one UTC day per request from
`historical/{y}/{m}/{d}` (plain integers, exactly three parts), while the unfinished current day is
served only by `recent` (the last day); every minute has a candle (zero volume when quiet); numbers
are decimal strings; errors are `{"code": "..."}` and the limit is 60 calls per minute (HTTP 429).

Websocket: ASP.NET SignalR (classic) hub `c3`. `Subscribe` invocations carry arrays of stream
names (`candle_<SYMBOL>_MINUTE_1`, `heartbeat`); replies `{"R": [..], "I": ".."}`; pushes
`{"M": [{"H": "C3", "M": "candle"|"heartbeat", "A": [base64 raw-deflate JSON]}]}`; bare `{}` frames
are transport keep-alives (about every 10 s), `heartbeat` pushes come every 5 s. A placeholder bar
opens every minute, so a newer `startsAt` closes the previous bar.
"""

from __future__ import annotations

import base64
import json
import zlib
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from common.candle import Candle, CandleBlock, Market, check_ohlcv
from common.timeutil import MINUTE_MS, datetime_to_ms, ensure_utc, ms_to_datetime
from fetchers.exchanges.base import (
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
    chunk_range,
    classify_by_status,
    error_body,
    in_task_range,
    server_time_field,
    task_for,
    ws_batches,
    ws_json,
)
from fetchers.exchanges.evidence import WsEvidence

DAY_MS = 86_400_000
ONLINE_STATUS = "ONLINE"
CANDLES_PATH = "/v3/markets/{symbol}/candles/TRADE/MINUTE_1"
HUB = "c3"
WS_STREAMS_PER_CONNECTION = 200  # undocumented; 40 were observed to work, we stay modest
WS_STREAMS_PER_INVOCATION = 100
WS_CONNECTIONS_PER_MINUTE = 20  # undocumented; as gentle as Bitfinex
WS_SUBSCRIBE_FRAMES_PER_SECOND = 5.0
HEARTBEAT_STREAM = "heartbeat"


def candle_stream(symbol: str) -> str:
    return f"candle_{symbol}_MINUTE_1"


def decode_push_argument(text: str) -> Any:
    """One pushed `A` item: base64 of raw DEFLATE (no zlib header) of UTF-8 JSON."""
    return json.loads(zlib.decompress(base64.b64decode(text), -zlib.MAX_WBITS))


def iso_minute_ms(text: str) -> int:
    """`2021-06-14T01:55:00Z` -> epoch ms."""
    return datetime_to_ms(datetime.fromisoformat(text))


def day_start_ms(time_ms: int) -> int:
    return time_ms - time_ms % DAY_MS


class BittrexAdapter(ExchangeAdapter):
    name = "bittrex"
    max_candles_per_request = 1440
    ws_transport = "signalr"
    ws_max_subscriptions = WS_STREAMS_PER_CONNECTION
    ws_connections_per_minute = WS_CONNECTIONS_PER_MINUTE
    ws_subscribe_frames_per_second = WS_SUBSCRIBE_FRAMES_PER_SECOND

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

    # -- the exchange's clock
    candles_request_uses_clock = True  # `historical` for a finished UTC day, `recent` for today

    def server_time_request(self) -> RestRequest:
        return RestRequest("/v3/ping")

    def parse_server_time(self, headers: Mapping[str, str], body: str) -> int:
        return server_time_field(body)

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

    def parse_candle_block(self, task: FetchTask, body: str) -> CandleBlock:
        """`parse_candles` as one block (a day at most per request: the value-by-value path)."""
        return super().parse_candle_block(task, body)

    # -- limits
    def classify_error(self, status: int, headers: Mapping[str, str], body: str) -> ExchangeError:
        data, message = error_body(status, body)
        code = None
        if isinstance(data, dict) and "code" in data:
            code = str(data["code"])
            message = " ".join(str(part) for part in (code, data.get("detail"), data.get("data")) if part)
        return classify_by_status(status, headers, code, message)

    # -- live bars over the websocket
    def subscribe_frames(self, markets: Sequence[Market], session: WsSession) -> list[str]:
        return self._invocations("Subscribe", [HEARTBEAT_STREAM], markets, session)

    def unsubscribe_frames(self, markets: Sequence[Market], session: WsSession) -> list[str]:
        return self._invocations("Unsubscribe", [], markets, session)

    def _invocations(
        self, method: str, first: list[str], markets: Sequence[Market], session: WsSession
    ) -> list[str]:
        streams = first + [candle_stream(m.symbol) for m in markets]
        return ws_batches(
            lambda chunk: {"H": HUB, "M": method, "A": [chunk], "I": session.request_id()},
            streams,
            WS_STREAMS_PER_INVOCATION,
        )

    def parse_ws_frame(self, text: str, session: WsSession) -> list[WsEvent]:
        data = ws_json(text)
        if not isinstance(data, dict):
            raise ValueError(f"unexpected frame: {text[:200]}")
        if "E" in data:
            return [WsError(None, str(data["E"]))]
        if "R" in data:
            replies = data["R"] if isinstance(data["R"], list) else []
            errors: list[WsEvent] = [
                WsError(r.get("ErrorCode"), f"invocation {data.get('I')} stream {i} refused")
                for i, r in enumerate(replies)
                if isinstance(r, dict) and r.get("Success") is False
            ]
            return errors or [WsHeartbeat()]
        entries = data.get("M")
        if not entries:
            return [WsHeartbeat()]  # `{}` keep-alive, init frame, groups token
        if not isinstance(entries, list):
            raise ValueError(f"unexpected frame: {text[:200]}")
        events: list[WsEvent] = []
        for entry in entries:
            method = entry.get("M") if isinstance(entry, dict) else None
            if method == "heartbeat":
                events.append(WsHeartbeat())
            elif method == "candle":
                for argument in entry.get("A") or []:
                    events.append(_ws_candle(argument))
            else:
                events.append(WsInfo(WsAction.NONE, None, f"push {method!r}"))
        return events

    def ws_evidence(self, symbols: Sequence[str], limits: WsLimits) -> WsEvidence:
        return BittrexEvidence(symbols, limits)


def _ws_candle(argument: Any) -> WsCandle:
    try:
        payload = decode_push_argument(argument)
        delta = payload["delta"]
        values = [delta["open"], delta["high"], delta["low"], delta["close"], delta.get("volume", "0")]
        if not all(type(v) is str for v in values):
            raise ValueError("prices must be decimal strings")
        sequence = payload["sequence"]
        if type(sequence) is not int:
            raise ValueError("sequence must be an integer")
        return WsCandle(payload["marketSymbol"], iso_minute_ms(delta["startsAt"]), *values, sequence=sequence)
    except (KeyError, TypeError, ValueError, zlib.error) as exc:
        raise ValueError(f"malformed candle push: {exc!r}") from None


class BittrexEvidence(WsEvidence):
    """Every message of a candle stream carries the next number of its `sequence`, and a minute
    always gets one (its start-of-interval placeholder). So with the numbers contiguous from a
    message of minute A to one of minute B, every update of the minutes after A and before B
    arrived. A jump ends the market's run; the next run starts after the minute of the message
    that showed it. The numbers start over on each socket."""

    def __init__(self, symbols: Sequence[str], limits: WsLimits) -> None:
        super().__init__(symbols, limits)
        self.sequences: dict[str, int] = {}

    def restart(self, reason: str) -> None:
        super().restart(reason)
        self.sequences.clear()

    def observe(self, event: WsEvent, received: float) -> None:
        if type(event) is not WsCandle or event.sequence is None or event.symbol not in self.markets:
            return
        symbol, number = event.symbol, event.sequence
        last = self.sequences.get(symbol)
        if last is not None and number <= last:
            return
        self.sequences[symbol] = number
        if last is not None and number == last + 1:
            self.prove(symbol, event.time)
            return
        if last is not None:
            self.end_run(symbol, self.why(f"sequence jumped from {last} to {number}"))
        self.start_run(symbol, event.time + MINUTE_MS)
