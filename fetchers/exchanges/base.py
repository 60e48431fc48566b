"""What every exchange adapter provides, and the small records that cross its boundary.

An adapter is pure: it builds requests, parses bodies and classifies errors, but never does I/O, so
the engines (`fetchers/rest`, `fetchers/ws`) are exchange-agnostic and the protocol code is
tested with real payloads alone. Every adapter has these methods, in this order (the base class
holds the defaults most exchanges share; an adapter overrides one only where its exchange differs):

    markets_requests -> parse_markets            which markets exist
    server_time_request -> parse_server_time     the exchange's present (its clock, not ours)
    plan_fetch_tasks -> candles_request -> parse_candles     history over REST
    classify_error, used_weight, rate_limit      how to behave under the exchange's limits
    ws_url -> ws_limits -> plan_ws_connections -> subscribe_frames -> unsubscribe_frames
        -> parse_ws_frame                        live 1-minute bars over the websocket
    matches_symbol                               the names a user may give a market
"""

from __future__ import annotations

import email.utils
import enum
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal
from urllib.parse import quote, urlencode

from common.candle import Candle, CandleBlock, Market
from common.settings import Settings
from common.timeutil import MINUTE_MS

if TYPE_CHECKING:
    from fetchers.exchanges.evidence import WsEvidence


@dataclass(frozen=True, slots=True)
class RestRequest:
    """One GET: a path on the exchange's REST base URL, its query and its rate-limit weight."""

    path: str
    params: tuple[tuple[str, str], ...] = ()
    weight: int = 1

    def url(self, base_url: str) -> str:
        url = base_url.rstrip("/") + quote(self.path, safe="/:")
        return f"{url}?{urlencode(self.params)}" if self.params else url


@dataclass(frozen=True, slots=True)
class FetchTask:
    """One planned candles request: a market and the half-open range [start_ms, end_ms) it covers."""

    exchange: str
    symbol: str
    base_id: str
    quote_id: str
    start_ms: int
    end_ms: int
    archive: str = ""
    """The public archive's file period (`2024-12`, `2025-01-07`) that gives this range, or empty for
    a REST request (fetchers/rest/sources.py plans which)."""

    @property
    def key(self) -> str:
        return f"{self.exchange}:{self.symbol}:{self.start_ms}"

    @property
    def minutes(self) -> int:
        return (self.end_ms - self.start_ms) // MINUTE_MS

    def to_dict(self) -> dict[str, Any]:
        """The task as JSON-ready values; a REST request's has no `archive` (the queue entry stays
        as small as it was, and jobs queued before the archive existed read back the same)."""
        data = asdict(self)
        if not self.archive:
            del data["archive"]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FetchTask:
        return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})


class ErrorKind(enum.Enum):
    RETRY = "retry"  # transient (5xx, timeout, maintenance): back off and try again
    RATE_LIMITED = "rate_limited"  # we were too fast: pause the whole exchange, then try again
    BANNED = "banned"  # Binance 418: stop the whole exchange until the ban ends
    FATAL = "fatal"  # this request can never succeed (bad symbol, bad parameters)


@dataclass(frozen=True, slots=True)
class ExchangeError:
    """A failed response, classified. `wait_seconds` is the exchange's own wait (Retry-After), if any."""

    kind: ErrorKind
    wait_seconds: float | None
    code: str | None
    message: str
    status: int | None


SAFETY_FRACTION = 0.98
"""Share of an exchange's limit we plan to use: the rest absorbs network jitter between our send
and the exchange's count."""
JITTER_SECONDS = 0.25
"""How late a request may reach the exchange's count after its slot (a busy event loop, the
network) and still land in its own window. A share alone leaves a short window (3 s in the fast
test preset) only 60 ms of it: a request sent that late then counts in the next window, one too many."""


@dataclass(frozen=True, slots=True)
class RateLimit:
    """`capacity` weight units per `window_seconds`, as the exchange counts them for one IP;
    `max_weight` is the heaviest single request (the limiter keeps room for it)."""

    capacity: int
    window_seconds: float
    max_weight: int = 1

    def effective_capacity(self) -> float:
        """Capacity kept after the safety margin and the mixed-weight slack."""
        return max(self.capacity * SAFETY_FRACTION - (self.max_weight - 1), 1.0)

    def interval_us(self) -> float:
        """Spacing of one weight unit, in microseconds: a window's capacity spans at least the
        window and `JITTER_SECONDS` more."""
        by_share = self.window_seconds * 1_000_000 / self.effective_capacity()
        by_jitter = (
            (self.window_seconds + JITTER_SECONDS) * 1_000_000 / max(self.capacity - (self.max_weight - 1), 1)
        )
        return max(by_share, by_jitter)

    def refused_interval_us(self, used: int) -> float:
        """Spacing for when the exchange refused us at `used` weight (its own count): its real limit
        for this IP is about that (lower than configured, e.g. another program shares the IP)."""
        return self.window_seconds * 1_000_000 / max(used * SAFETY_FRACTION, 1.0)

    def near_limit(self, used: int) -> bool:
        """The exchange's own count is close enough to the limit to stop until its window resets."""
        return used >= self.capacity * SAFETY_FRACTION


@dataclass(frozen=True, slots=True)
class WsLimits:
    """How the stream engine must treat one exchange's websocket.

    `max_subscriptions` per connection; at most `connections_per_window` new connections per
    `connect_window_seconds`; subscribe frames at most `subscribe_frames_per_second` per connection;
    the exchange beats every `heartbeat_seconds` on an idle channel or socket; a connection with no
    frame at all for `silence_seconds` is dead (2x the heartbeat interval)."""

    transport: Literal["websocket", "signalr"]
    max_subscriptions: int
    connections_per_window: int
    connect_window_seconds: float
    subscribe_frames_per_second: float
    heartbeat_seconds: float
    silence_seconds: float


@dataclass(frozen=True, slots=True)
class WsCandle:
    """A live bar as the exchange sent it: open time in ms, prices and volume as exact decimal text.
    `closed` only when the exchange itself says the bar is final (Binance `x`); `snapshot` for
    history replayed on subscribe (Bitfinex), as opposed to an update pushed as it happened.
    `sequence` and `server_ms` are the exchange's own evidence of what was sent (see `WsEvidence`)."""

    symbol: str
    time: int
    open: str
    high: str
    low: str
    close: str
    volume: str
    closed: bool = False
    snapshot: bool = False
    sequence: int | None = None
    """The message's number: per stream for Bittrex, per socket for Bitfinex (SEQ_ALL; on the last
    bar of a frame only, as a frame has one number)."""
    server_ms: int | None = None
    """The exchange's clock when it sent the message (Binance `E`, Bitfinex TIMESTAMP)."""


@dataclass(frozen=True, slots=True)
class WsHeartbeat:
    """The connection is alive (a heartbeat, keep-alive, pong or acknowledgement). A Bitfinex
    channel heartbeat names its market and carries its frame's sequence number and server time."""

    symbol: str | None = None
    sequence: int | None = None
    server_ms: int | None = None


class WsAction(enum.Enum):
    NONE = "none"  # informational
    RECONNECT = "reconnect"  # the server restarts or closes: reconnect now
    PAUSE = "pause"  # maintenance began: expect silence, keep the socket
    RESUBSCRIBE = "resubscribe"  # maintenance ended: subscribe every channel again


@dataclass(frozen=True, slots=True)
class WsInfo:
    action: WsAction
    code: int | None
    message: str


@dataclass(frozen=True, slots=True)
class WsError:
    """The exchange refused something (a subscription, a request); the socket stays usable."""

    code: str | None
    message: str
    symbol: str | None = None


WsEvent = WsCandle | WsHeartbeat | WsInfo | WsError


@dataclass(slots=True)
class WsSession:
    """Per-connection protocol state the parser needs (e.g. Bitfinex channel ids -> symbols).

    One per connection, so channel state is keyed by (connection, channel id) by construction."""

    channels: dict[int, str] = field(default_factory=dict)
    next_request_id: int = 0

    def request_id(self) -> int:
        self.next_request_id += 1
        return self.next_request_id


class ExchangeAdapter:
    """The common shape; each exchange module subclasses it, fills in every method that raises
    NotImplementedError and overrides a default only where its exchange differs."""

    name: ClassVar[str]
    max_candles_per_request: ClassVar[int]
    candles_request_weight: ClassVar[int] = 1
    max_request_weight: ClassVar[int] = 1
    """The heaviest request this adapter sends (the rate limiter keeps room for it)."""

    # -- markets
    def markets_requests(self) -> list[RestRequest]:
        raise NotImplementedError

    def parse_markets(self, bodies: Sequence[str]) -> list[Market]:
        raise NotImplementedError

    # -- the exchange's clock
    candles_request_uses_clock: ClassVar[bool] = False
    """Whether `candles_request` depends on `now_ms` (then the engine asks the exchange's clock)."""

    def server_time_request(self) -> RestRequest:
        raise NotImplementedError

    def parse_server_time(self, headers: Mapping[str, str], body: str) -> int:
        """The exchange's present in epoch ms, from the reply's body or headers (never later than the
        exchange's present); ValueError if the reply says nothing usable."""
        raise NotImplementedError

    # -- history over REST
    def plan_fetch_tasks(self, market: Market, start_ms: int, end_ms: int) -> Iterator[FetchTask]:
        """Requests covering [start_ms, end_ms) of one market, oldest first, as few as allowed."""
        for chunk_start, chunk_end in chunk_range(start_ms, end_ms, self.max_candles_per_request * MINUTE_MS):
            yield task_for(market, chunk_start, chunk_end)

    def candles_request(self, task: FetchTask, now_ms: int) -> RestRequest:
        raise NotImplementedError

    def parse_candles(self, task: FetchTask, body: str) -> list[Candle]:
        """Final 1-minute candles of the task's range, exact decimals; ValueError if malformed."""
        raise NotImplementedError

    def parse_candle_block(self, task: FetchTask, body: str) -> CandleBlock:
        """`parse_candles` in bulk, for the backfill's hot path: the same candles as one block."""
        candles = self.parse_candles(task, body)
        return CandleBlock.from_candles(self.name, task.base_id, task.quote_id, candles)

    # -- limits
    def classify_error(self, status: int, headers: Mapping[str, str], body: str) -> ExchangeError:
        raise NotImplementedError

    def used_weight(self, headers: Mapping[str, str]) -> int | None:
        """The exchange's own count of weight used by this IP, when it reports one."""
        return None

    rest_budget_setting: ClassVar[str] = "{name}_rest_requests_per_minute"
    """The setting that holds the exchange's REST budget per `rest_rate_window_seconds`."""

    def rate_limit(self, settings: Settings) -> RateLimit:
        """The REST budget (`rest_budget_setting`), keeping room for the heaviest request."""
        capacity = int(getattr(settings, self.rest_budget_setting.format(name=self.name)))
        return RateLimit(capacity, settings.rest_rate_window_seconds, self.max_request_weight)

    # -- live bars over the websocket
    ws_transport: ClassVar[Literal["websocket", "signalr"]] = "websocket"
    ws_max_subscriptions: ClassVar[int]
    ws_connections_per_minute: ClassVar[int]
    ws_subscribe_frames_per_second: ClassVar[float]

    def ws_url(self, settings: Settings) -> str:
        """Where the websocket API answers: the setting `<exchange>_ws_url` (or the simulator's)."""
        return settings.ws_url(self.name)

    def ws_limits(self, settings: Settings) -> WsLimits:
        """The published limits; the heartbeat setting `<exchange>_ws_heartbeat_seconds` sets the
        silence allowed (twice the interval)."""
        heartbeat = float(getattr(settings, f"{self.name}_ws_heartbeat_seconds"))
        return WsLimits(
            transport=self.ws_transport,
            max_subscriptions=self.ws_max_subscriptions,
            connections_per_window=self.ws_connections_per_minute,
            connect_window_seconds=settings.ws_connect_window_seconds,
            subscribe_frames_per_second=self.ws_subscribe_frames_per_second,
            heartbeat_seconds=heartbeat,
            silence_seconds=2 * heartbeat,
        )

    def plan_ws_connections(self, markets: Sequence[Market], limits: WsLimits) -> list[tuple[Market, ...]]:
        """Markets spread over as few connections as the per-connection limit allows (stable order)."""
        ordered = sorted(markets, key=lambda m: m.symbol)
        size = limits.max_subscriptions
        return [tuple(ordered[i : i + size]) for i in range(0, len(ordered), size)]

    def subscribe_frames(self, markets: Sequence[Market], session: WsSession) -> list[str]:
        raise NotImplementedError

    def unsubscribe_frames(self, markets: Sequence[Market], session: WsSession) -> list[str]:
        raise NotImplementedError

    def parse_ws_frame(self, text: str, session: WsSession) -> list[WsEvent]:
        """Events in one text frame, in order; ValueError when the frame is malformed."""
        raise NotImplementedError

    def ws_evidence(self, symbols: Sequence[str], limits: WsLimits) -> WsEvidence:
        """The rule that proves live minutes complete, for one connection's markets."""
        raise NotImplementedError

    def matches_symbol(self, market: Market, wanted: str) -> bool:
        """Whether `wanted` (upper case) names `market`: BASE/QUOTE or the exchange's symbol."""
        return wanted in (market.pair.upper(), market.symbol.upper())


def ws_json(text: str, loads: Any = None, **options: Any) -> Any:
    """A websocket frame's JSON (through `loads(text)` if given, else `json.loads`); ValueError (the
    engine's "bad frame") when it is not JSON."""
    try:
        return loads(text) if loads is not None else json.loads(text, **options)
    except ValueError:
        raise ValueError(f"not JSON: {text[:200]}") from None


def ws_batches(build: Any, items: Sequence[Any], size: int) -> list[str]:
    """`build(chunk)` for consecutive chunks of at most `size` items, as compact JSON frames."""
    return [json.dumps(build(list(items[i : i + size]))) for i in range(0, len(items), size)]


def task_for(market: Market, start_ms: int, end_ms: int, archive: str = "") -> FetchTask:
    return FetchTask(
        market.exchange, market.symbol, market.base_id, market.quote_id, start_ms, end_ms, archive
    )


def chunk_range(start_ms: int, end_ms: int, step_ms: int) -> Iterator[tuple[int, int]]:
    """[start, end) cut into consecutive pieces of at most `step_ms`."""
    current = start_ms
    while current < end_ms:
        upper = min(current + step_ms, end_ms)
        yield current, upper
        current = upper


def error_body(status: int, body: str) -> tuple[Any, str]:
    """The error body as JSON (None if it is not JSON) and a readable fallback message."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    return data, body[:200].strip() or f"HTTP {status}"


def classify_by_status(
    status: int, headers: Mapping[str, str], code: str | None, message: str
) -> ExchangeError:
    """The HTTP-level rules all three exchanges share: 429 waits, 408/5xx retry, the rest is fatal."""
    wait = retry_after_seconds(headers)
    if status == 429:
        return ExchangeError(ErrorKind.RATE_LIMITED, wait, code, message, status)
    if status >= 500 or status == 408:
        return ExchangeError(ErrorKind.RETRY, wait, code, message, status)
    return ExchangeError(ErrorKind.FATAL, None, code, message, status)


def header_value(headers: Mapping[str, str], wanted: str) -> str | None:
    """A header's value whatever the case of its name (HTTP names are case-insensitive)."""
    wanted = wanted.lower()
    return next((value for name, value in headers.items() if name.lower() == wanted), None)


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """The Retry-After header in seconds (the numeric form the exchanges send), if present."""
    value = header_value(headers, "retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        return None


def http_date_ms(headers: Mapping[str, str]) -> int:
    """The HTTP `Date` header (RFC 9110: the server's clock when it made the reply, whole seconds) in
    epoch ms; ValueError if it is missing or unreadable."""
    value = header_value(headers, "date")
    if not value:
        raise ValueError("no Date header in the reply")
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        raise ValueError(f"unreadable Date header {value[:100]!r}") from None
    if when.tzinfo is None:
        raise ValueError(f"Date header without a zone {value[:100]!r}")
    return int(when.timestamp()) * 1000


def server_time_field(body: str) -> int:
    """`{"serverTime": <epoch ms>}`, the shape Binance's `/api/v3/time` and Bittrex's `/v3/ping` share."""
    data, _ = error_body(200, body)
    value = data.get("serverTime") if isinstance(data, dict) else None
    if type(value) is not int or value <= 0:
        raise ValueError(f"no serverTime in {body[:200]}")
    return value


def in_task_range(task: FetchTask, time_ms: int) -> bool:
    return task.start_ms <= time_ms < task.end_ms and time_ms % MINUTE_MS == 0


class UnknownSymbolError(ValueError):
    """The user named a market the exchange does not list; the message says so in one line."""


def resolve_symbol(markets: Sequence[Market], text: str) -> Market:
    """A market named by the user as BASE/QUOTE or as the exchange's own symbol (any case; each
    adapter's `matches_symbol` knows its exchange's extra spellings)."""
    from fetchers.exchanges import get_adapter

    wanted = text.strip().upper()
    if not wanted:
        raise UnknownSymbolError("empty symbol")
    for market in markets:
        if get_adapter(market.exchange).matches_symbol(market, wanted):
            return market
    exchange = markets[0].exchange if markets else "this exchange"
    raise UnknownSymbolError(
        f"unknown symbol {text!r} on {exchange} (use BASE/QUOTE, e.g. BTC/USD, or the exchange's symbol)"
    )
