"""Counters per exchange, served by `/control/stats` so tests can assert what a client caused.

`over_limit` counts only replies the client earned by exceeding a limit (429/418 from the limiters,
WS connection-rate refusals, channel/stream caps, Binance's incoming-message disconnects); replies
forced by an injected fault (429 storms, 5xx) are counted separately.

`ws_frames_withheld` counts websocket frames a fault kept back (`ws_stall`, `lose_ws_frames`,
`lose_ws_closes`), heartbeats and keep-alives included: what a socket would have sent. A Bittrex
candle message withheld by a stall counts once per socket it was due on (it would have been batched
into some frame there). Pings are not frames and are not counted.

`ws_connections_open` is not a counter: it is the number of the exchange's connections in
`Stats.connections`, the registry every websocket server adds its connections to (through
`simulator.http.serving_connection`: `token = connections.add(exchange, conn)` where `conn` has
`abort()`, `connections.remove(token)` when it closes) and fault actions such as `drop_ws` reach
them through, so the count cannot drift and is not reset with the counters.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

from common.exchanges import EXCHANGES


@dataclass
class ExchangeStats:
    rest_requests: int = 0
    rest_status: Counter = field(default_factory=Counter)
    over_limit: int = 0
    http_429: int = 0
    http_418: int = 0
    storm_429: int = 0
    fault_5xx: int = 0
    fault_hangs: int = 0
    fault_resets: int = 0
    fault_truncated: int = 0
    ws_connections_opened: int = 0
    ws_connections_refused: int = 0
    ws_frames_sent: int = 0
    ws_frames_withheld: int = 0
    ws_frames_received: int = 0
    ws_subscribe_errors: int = 0
    ws_dropped_by_fault: int = 0
    ws_closed_for_violation: int = 0
    archive_requests: int = 0

    def as_dict(self, open_connections: int) -> dict[str, Any]:
        """The counters as JSON fields, `ws_connections_open` placed right after `ws_connections_opened`."""
        data: dict[str, Any] = {}
        for name, value in self.__dict__.items():
            if name != "rest_status":
                data[name] = value
            if name == "ws_connections_opened":
                data["ws_connections_open"] = open_connections
        data["rest_status"] = {str(k): v for k, v in sorted(self.rest_status.items())}
        return data


class Connection(Protocol):
    def abort(self) -> None: ...


class ConnectionRegistry:
    """Open websocket connections per exchange, so that fault actions can reach them."""

    def __init__(self) -> None:
        self._next = 0
        self._conns: dict[int, tuple[str, Connection]] = {}

    def add(self, exchange: str, conn: Connection) -> int:
        self._next += 1
        self._conns[self._next] = (exchange, conn)
        return self._next

    def remove(self, token: int) -> None:
        self._conns.pop(token, None)

    def of(self, exchange: str) -> list[Connection]:
        return [conn for ex, conn in self._conns.values() if ex == exchange]

    def counts(self) -> Counter[str]:
        """Open connections per exchange (absent = none)."""
        return Counter(ex for ex, _ in self._conns.values())


@dataclass
class Served:
    """What was asked of the simulator, request by request, for tests that must show which source
    gave which minutes: every Binance archive file request (`{"path", "status", "fault"}`, fault one
    of the archive faults or null) and every Binance klines request (`{"symbol", "start", "end"}`,
    the query's startTime and endTime, null when absent)."""

    archive: list[dict[str, Any]] = field(default_factory=list)
    klines: list[dict[str, Any]] = field(default_factory=list)


class Stats:
    def __init__(self) -> None:
        self.by_exchange: dict[str, ExchangeStats] = {name: ExchangeStats() for name in EXCHANGES}
        self.connections = ConnectionRegistry()
        self.served = Served()

    def __getitem__(self, exchange: str) -> ExchangeStats:
        return self.by_exchange[exchange]

    def as_dict(self) -> dict[str, Any]:
        """Every exchange's counters, with its open connections as `ws_connections_open`."""
        open_connections = self.connections.counts()
        return {
            name: stats.as_dict(open_connections.get(name, 0)) for name, stats in self.by_exchange.items()
        }

    def reset(self) -> None:
        for stats in self.by_exchange.values():
            stats.__dict__.update(ExchangeStats().__dict__)
        self.served = Served()
