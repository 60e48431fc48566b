"""Faults on demand, per exchange: what the servers consult before answering or pushing.

Settable faults are set by `--fault EXCHANGE:NAME=VALUE` at start-up or `POST /control/faults`, and
cleared by `POST /control/faults/reset`; actions happen once, when posted. `DESCRIPTIONS` explains
every name (it is what `python -m simulator --help` and the README list). REST faults apply to every
REST endpoint of the exchange (not to the Bittrex SignalR endpoints); at most one fault hits a
request, checked in the order of `SETTABLE`.

The open connections the actions reach are in `Stats.connections` (simulator/stats.py); each
action is performed by the server that lists it in its `actions` (simulator/state.py).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field, fields
from typing import Any

from simulator.core import EXCHANGES

MALFORMED_FRAME = '{"event":"info","code":'
"""A truncated JSON frame: what a client sees when a frame is cut short."""

DESCRIPTIONS: dict[str, str] = {
    "storm_seconds": "N: every REST request of the next N real seconds gets the exchange's own 429",
    "http_hang_rate": "0..1: share of REST requests held for http_hang_seconds, then answered 504",
    "http_5xx_rate": "0..1: share of REST requests answered with the exchange's own 5xx error",
    "http_reset_rate": "0..1: share of REST replies cut mid-body by a connection reset (TCP RST)",
    "http_truncate_rate": "0..1: share of REST replies whose body is cut in half (a complete HTTP "
    "reply, real status, body not valid JSON)",
    "ws_stall": "true|false: websockets stay open but send nothing (no data, heartbeats or pings)",
    "ws_malformed_rate": "0..1: share of outgoing websocket data frames replaced by invalid JSON",
    "drop_ws": "action, true: abort every websocket connection of the exchange",
    "ws_info": "action, Bitfinex only, 20051|20060|20061: send that info event to every socket "
    "(20051 then closes them; 20060 pauses data and sends 20061 after maintenance_seconds)",
    "maintenance_seconds": "with ws_info 20060: how long the maintenance lasts (real seconds)",
    "server_shutdown": "action, Binance only, true: send the serverShutdown event to every socket",
}
"""Every fault and action name with its meaning."""

SETTABLE = (
    "storm_seconds",
    "http_hang_rate",
    "http_5xx_rate",
    "http_reset_rate",
    "http_truncate_rate",
    "ws_stall",
    "ws_malformed_rate",
)
ACTIONS = ("drop_ws", "ws_info", "server_shutdown")
ACTION_ARGUMENTS = ("maintenance_seconds",)


@dataclass
class ExchangeFaults:
    http_5xx_rate: float = 0.0
    http_hang_rate: float = 0.0
    http_reset_rate: float = 0.0
    http_truncate_rate: float = 0.0
    storm_until: float = 0.0
    ws_stall: bool = False
    ws_malformed_rate: float = 0.0
    rng: random.Random = field(default_factory=lambda: random.Random(0), repr=False)

    def http_5xx(self) -> bool:
        return self.http_5xx_rate > 0 and self.rng.random() < self.http_5xx_rate

    def http_hang(self) -> bool:
        return self.http_hang_rate > 0 and self.rng.random() < self.http_hang_rate

    def http_reset(self) -> bool:
        return self.http_reset_rate > 0 and self.rng.random() < self.http_reset_rate

    def http_truncate(self) -> bool:
        return self.http_truncate_rate > 0 and self.rng.random() < self.http_truncate_rate

    def storming(self) -> bool:
        return self.storm_until > time.time()

    def malformed(self) -> bool:
        return self.ws_malformed_rate > 0 and self.rng.random() < self.ws_malformed_rate

    def as_dict(self) -> dict[str, Any]:
        return {
            "http_5xx_rate": self.http_5xx_rate,
            "http_hang_rate": self.http_hang_rate,
            "http_reset_rate": self.http_reset_rate,
            "http_truncate_rate": self.http_truncate_rate,
            "storm_seconds_left": round(max(0.0, self.storm_until - time.time()), 3),
            "ws_stall": self.ws_stall,
            "ws_malformed_rate": self.ws_malformed_rate,
        }


class FaultError(ValueError):
    """A fault request that cannot be applied (unknown field, bad value)."""


class Faults:
    def __init__(self, seed: int = 0) -> None:
        self.by_exchange = {name: ExchangeFaults(rng=random.Random(f"{seed}|{name}")) for name in EXCHANGES}

    def __getitem__(self, exchange: str) -> ExchangeFaults:
        return self.by_exchange[exchange]

    def apply(self, exchange: str, settings: dict[str, Any]) -> None:
        """Set the settable fields of `settings` (actions are handled by the servers)."""
        faults = self.by_exchange[exchange]
        for name, value in settings.items():
            if name in ACTIONS or name in ACTION_ARGUMENTS or name == "exchange":
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
