"""Faults on demand, per exchange: what the servers consult before answering or pushing.

State (set by flags at start-up or `POST /control/faults`, cleared by `POST /control/faults/reset`):

- `http_5xx_rate` (0..1): answer a REST request with a 5xx instead of the real reply;
- `http_hang_rate` (0..1): hold a REST request for `http_hang_seconds`, then answer 504;
- `storm_seconds` (N): every REST request of the next N real seconds gets the exchange's own 429;
- `ws_stall` (bool): websockets stay open but send nothing (no data, no heartbeats, no pings);
- `ws_malformed_rate` (0..1): replace an outgoing data frame with a frame that is not valid JSON.

One-shot actions (same endpoint): `drop_ws` aborts every websocket connection of the exchange;
`ws_info` (Bitfinex 20051 / 20060 / 20061) sends that info event to every socket (20051 then closes
them; 20060 pauses data and sends 20061 after `maintenance_seconds`); `server_shutdown` (Binance)
sends the `serverShutdown` event and closes.

`ConnectionRegistry` is how every websocket server (including the Bittrex SignalR one) makes its
connections reachable by these actions: `token = registry.add(exchange, conn)` where `conn` has
`abort()`; `registry.remove(token)` when it closes (`simulator.http.serving_connection` does both).
It is also the count of open connections that `/control/stats` reports.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

from simulator.core import EXCHANGES

MALFORMED_FRAME = '{"event":"info","code":'
"""A truncated JSON frame: what a client sees when a frame is cut short."""

SETTABLE = ("http_5xx_rate", "http_hang_rate", "storm_seconds", "ws_stall", "ws_malformed_rate")
ACTIONS = ("drop_ws", "ws_info", "server_shutdown")


@dataclass
class ExchangeFaults:
    http_5xx_rate: float = 0.0
    http_hang_rate: float = 0.0
    storm_until: float = 0.0
    ws_stall: bool = False
    ws_malformed_rate: float = 0.0
    rng: random.Random = field(default_factory=lambda: random.Random(0), repr=False)

    def http_5xx(self) -> bool:
        return self.http_5xx_rate > 0 and self.rng.random() < self.http_5xx_rate

    def http_hang(self) -> bool:
        return self.http_hang_rate > 0 and self.rng.random() < self.http_hang_rate

    def storming(self) -> bool:
        return self.storm_until > time.time()

    def malformed(self) -> bool:
        return self.ws_malformed_rate > 0 and self.rng.random() < self.ws_malformed_rate

    def as_dict(self) -> dict[str, Any]:
        return {
            "http_5xx_rate": self.http_5xx_rate,
            "http_hang_rate": self.http_hang_rate,
            "storm_seconds_left": round(max(0.0, self.storm_until - time.time()), 3),
            "ws_stall": self.ws_stall,
            "ws_malformed_rate": self.ws_malformed_rate,
        }


class FaultError(ValueError):
    """A fault request that cannot be applied (unknown field, bad value)."""


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


class Faults:
    def __init__(self, seed: int = 0) -> None:
        self.by_exchange = {name: ExchangeFaults(rng=random.Random(f"{seed}|{name}")) for name in EXCHANGES}
        self.connections = ConnectionRegistry()

    def __getitem__(self, exchange: str) -> ExchangeFaults:
        return self.by_exchange[exchange]

    def apply(self, exchange: str, settings: dict[str, Any]) -> None:
        """Set the settable fields of `settings` (actions are handled by the servers)."""
        faults = self.by_exchange[exchange]
        for name, value in settings.items():
            if name in ACTIONS or name in ("exchange", "maintenance_seconds"):
                continue
            if name not in SETTABLE:
                raise FaultError(f"unknown fault {name!r}; known: {', '.join(SETTABLE + ACTIONS)}")
            if name == "ws_stall":
                if not isinstance(value, bool):
                    raise FaultError("ws_stall must be true or false")
                faults.ws_stall = value
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise FaultError(f"{name} must be a number")
            if name == "storm_seconds":
                if value < 0:
                    raise FaultError("storm_seconds must be >= 0")
                faults.storm_until = time.time() + float(value)
                continue
            if not 0.0 <= value <= 1.0:
                raise FaultError(f"{name} must be between 0 and 1")
            setattr(faults, name, float(value))

    def reset(self, exchange: str | None = None) -> None:
        for name, faults in self.by_exchange.items():
            if exchange in (None, name):
                for f in fields(ExchangeFaults):
                    if f.name != "rng":
                        setattr(faults, f.name, f.default)

    def as_dict(self) -> dict[str, Any]:
        return {name: faults.as_dict() for name, faults in self.by_exchange.items()}
