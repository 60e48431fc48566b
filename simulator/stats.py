"""Counters per exchange, served by `/control/stats` so tests can assert what a client caused.

`over_limit` counts only replies the client earned by exceeding a limit (429/418 from the limiters,
WS connection-rate refusals, channel/stream caps, Binance's incoming-message disconnects); replies
forced by an injected fault (429 storms, 5xx) are counted separately.

`ws_connections_open` is not a counter kept here: it is the number of the exchange's connections in
the fault registry (`Faults.connections`), which `as_dict` is given, so it cannot drift or be reset.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from simulator.core import EXCHANGES


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
    ws_connections_opened: int = 0
    ws_connections_refused: int = 0
    ws_frames_sent: int = 0
    ws_frames_received: int = 0
    ws_subscribe_errors: int = 0
    ws_dropped_by_fault: int = 0
    ws_closed_for_violation: int = 0

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


class Stats:
    def __init__(self) -> None:
        self.by_exchange: dict[str, ExchangeStats] = {name: ExchangeStats() for name in EXCHANGES}

    def __getitem__(self, exchange: str) -> ExchangeStats:
        return self.by_exchange[exchange]

    def as_dict(self, open_connections: Mapping[str, int]) -> dict[str, Any]:
        """Every exchange's counters, with `open_connections[exchange]` as its `ws_connections_open`."""
        return {
            name: stats.as_dict(open_connections.get(name, 0)) for name, stats in self.by_exchange.items()
        }

    def reset(self) -> None:
        for stats in self.by_exchange.values():
            stats.__dict__.update(ExchangeStats().__dict__)
