"""Faults on demand, per exchange: what the servers consult before answering or pushing.

Settable faults are set by `--fault EXCHANGE:NAME=VALUE` at start-up or `POST /control/faults`, and
cleared by `POST /control/faults/reset`; actions happen once, when posted. `DESCRIPTIONS` explains
every name (it is what `python -m simulator --help` and the README list). REST faults apply to every
REST endpoint of the exchange (not to the Bittrex SignalR endpoints); at most one fault hits a
request, checked in the order of `SETTABLE`.

The open connections the actions reach are in `Stats.connections` (simulator/stats.py); each
action is performed by the server that lists it in its `actions` (simulator/state.py).

The `lose_ws_*` actions (`LOSSES`) lose frames as a lossy network path would: the exchange's
sequence numbers count them as sent, so a client that checks its sequence sees the gap. Given at
start-up they take the first frames sent; the other actions act on open sockets and are ignored
there, as there are none yet. `Withheld` records which
market-minutes a fault kept from some socket (served as `GET /control/dropped`), so tests can hold a
client's claimed coverage against what it was really sent.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field, fields
from typing import Any

from common.exchanges import EXCHANGES

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
    "lose_ws_frames": "action, N >= 1: the next N websocket candle-data frames of the exchange (any "
    "socket) are not sent; sequence numbers count them as sent",
    "lose_ws_closes": "action, Binance only, N >= 1: the next N closing kline updates (x: true) are not sent",
    "archive_missing_rate": "0..1, Binance archive: share of files that do not exist (404; the same files "
    "every time)",
    "archive_checksum_rate": "0..1, Binance archive: share of files served with other data than their "
    ".CHECKSUM names (the same files every time)",
    "archive_truncate_rate": "0..1, Binance archive: share of zip downloads cut in half",
    "archive_slow_rate": "0..1, Binance archive: share of zip downloads trickled out over http_hang_seconds",
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
    "archive_missing_rate",
    "archive_checksum_rate",
    "archive_truncate_rate",
    "archive_slow_rate",
)
LOSSES = ("lose_ws_frames", "lose_ws_closes")
ACTIONS = ("drop_ws", "ws_info", "server_shutdown", *LOSSES)
ACTION_ARGUMENTS = ("maintenance_seconds",)


def requested_actions(settings: dict[str, Any]) -> list[str]:
    """The actions `settings` asks for (`false` or `null` asks for none), in `ACTIONS` order."""
    return [name for name in ACTIONS if settings.get(name) not in (None, False)]


@dataclass
class ExchangeFaults:
    http_5xx_rate: float = 0.0
    http_hang_rate: float = 0.0
    http_reset_rate: float = 0.0
    http_truncate_rate: float = 0.0
    storm_until: float = 0.0
    ws_stall: bool = False
    ws_malformed_rate: float = 0.0
    frames_to_lose: int = 0
    closes_to_lose: int = 0
    archive_missing_rate: float = 0.0
    archive_checksum_rate: float = 0.0
    archive_truncate_rate: float = 0.0
    archive_slow_rate: float = 0.0
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

    def archive_truncate(self) -> bool:
        return self.archive_truncate_rate > 0 and self.rng.random() < self.archive_truncate_rate

    def archive_slow(self) -> bool:
        return self.archive_slow_rate > 0 and self.rng.random() < self.archive_slow_rate

    def malformed(self) -> bool:
        return self.ws_malformed_rate > 0 and self.rng.random() < self.ws_malformed_rate

    def lose_frame(self) -> bool:
        """Whether `lose_ws_frames` takes this candle-data frame (using up one of its N)."""
        if self.frames_to_lose <= 0:
            return False
        self.frames_to_lose -= 1
        return True

    def lose_close(self) -> bool:
        """Whether `lose_ws_closes` takes this closing update (using up one of its N)."""
        if self.closes_to_lose <= 0:
            return False
        self.closes_to_lose -= 1
        return True

    def as_dict(self) -> dict[str, Any]:
        return {
            "http_5xx_rate": self.http_5xx_rate,
            "http_hang_rate": self.http_hang_rate,
            "http_reset_rate": self.http_reset_rate,
            "http_truncate_rate": self.http_truncate_rate,
            "storm_seconds_left": round(max(0.0, self.storm_until - time.time()), 3),
            "ws_stall": self.ws_stall,
            "ws_malformed_rate": self.ws_malformed_rate,
            "lose_ws_frames_left": self.frames_to_lose,
            "lose_ws_closes_left": self.closes_to_lose,
            "archive_missing_rate": self.archive_missing_rate,
            "archive_checksum_rate": self.archive_checksum_rate,
            "archive_truncate_rate": self.archive_truncate_rate,
            "archive_slow_rate": self.archive_slow_rate,
        }


class FaultError(ValueError):
    """A fault request that cannot be applied (unknown field, bad value)."""


def loss_count(name: str, value: Any) -> int:
    """The N of a `lose_ws_*` action: a whole number >= 1 (JSON `true` is not a number)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise FaultError(f"{name} must be a whole number >= 1")
    return value


class Withheld:
    """Per exchange and market, the simulated minutes (open time, ms) whose candle updates a fault
    withheld or mangled on at least one socket (`ws_stall`, `ws_malformed_rate`, `lose_ws_frames`,
    `lose_ws_closes`): the minutes a client may claim as covered although it was not sent all of
    them. Heartbeats and keep-alives carry no minute and are not recorded. Frames lost with a socket
    that `drop_ws` aborted are not recorded either: the client knows it lost its socket. Of a
    withheld Bitfinex snapshot, only minutes from the channel's subscription on are: the history it
    repeats went to earlier sockets, and the new channel's client can claim none of it.

    Where the exchange marks a bar's last update (Binance `"x": true`, which carries the whole bar),
    the minutes whose closing update was withheld are also kept apart (`closes_of`): a client that
    received the close got the minute in full, whatever updates before it were lost.

    Only the fault paths call `add`, so serving without faults costs nothing. The record is kept
    for the simulator's lifetime (resetting faults does not clear it).
    """

    def __init__(self) -> None:
        self._minutes: dict[str, dict[str, set[int]]] = {name: {} for name in EXCHANGES}
        self._closes: dict[str, dict[str, set[int]]] = {name: {} for name in EXCHANGES}

    def add(self, exchange: str, symbol: str, minute_ms: int, closing: bool = False) -> None:
        self._minutes[exchange].setdefault(symbol, set()).add(minute_ms)
        if closing:
            self._closes[exchange].setdefault(symbol, set()).add(minute_ms)

    def of(self, exchange: str) -> dict[str, list[int]]:
        """`{symbol: [minute_ms, ...ascending]}` for `exchange`, symbols in order."""
        return _sorted(self._minutes[exchange])

    def closes_of(self, exchange: str) -> dict[str, list[int]]:
        """The same, for the minutes whose closing update was withheld."""
        return _sorted(self._closes[exchange])


def _sorted(minutes: dict[str, set[int]]) -> dict[str, list[int]]:
    return {symbol: sorted(times) for symbol, times in sorted(minutes.items())}


class Faults:
    def __init__(self, seed: int = 0) -> None:
        self.by_exchange = {name: ExchangeFaults(rng=random.Random(f"{seed}|{name}")) for name in EXCHANGES}
        self.withheld = Withheld()

    def __getitem__(self, exchange: str) -> ExchangeFaults:
        return self.by_exchange[exchange]

    def apply(self, exchange: str, settings: dict[str, Any]) -> None:
        """Set the settable fields of `settings`. Actions are performed by the servers; the value of
        a `lose_ws_*` action is checked here, so a bad one is refused before anything happens."""
        faults = self.by_exchange[exchange]
        for name, value in settings.items():
            if name in LOSSES:
                loss_count(name, value)
                continue
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

    def lose(self, exchange: str, name: str, value: Any) -> None:
        """Perform a `lose_ws_*` action: N more frames (or closing updates) of `exchange` to lose."""
        count = loss_count(name, value)
        faults = self.by_exchange[exchange]
        if name == "lose_ws_frames":
            faults.frames_to_lose += count
        elif name == "lose_ws_closes":
            faults.closes_to_lose += count
        else:
            raise FaultError(f"{name!r} is not a loss; known: {', '.join(LOSSES)}")

    def reset(self, exchange: str | None = None) -> None:
        for name, faults in self.by_exchange.items():
            if exchange in (None, name):
                for f in fields(ExchangeFaults):
                    if f.name != "rng":
                        setattr(faults, f.name, f.default)

    def as_dict(self) -> dict[str, Any]:
        return {name: faults.as_dict() for name, faults in self.by_exchange.items()}
