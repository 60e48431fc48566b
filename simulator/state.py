"""What an exchange server may use of the simulator, and how a server plugs into it.

`SimState` is the shared state every server is built with (the `Simulator` satisfies it; servers
never import the `Simulator` itself, which keeps the modules free of import cycles).
`ExchangeServer` is the one way a server plugs in: the simulator calls `add_routes` with the
application of the port named `port` (`bitfinex`, `binance`, `bittrex`, `control`; several servers
may share a port, as the Bittrex REST and SignalR servers do), and sends each fault action listed
in `actions` to `action` (simulator/faults.py names and explains them).
"""

from __future__ import annotations

from typing import Any, ParamSpec, Protocol, TypeVar

from aiohttp import web

from simulator.compute import Job
from simulator.config import SimConfig
from simulator.core import SimClock, SimMarket
from simulator.faults import Faults
from simulator.history import History
from simulator.live import LiveFeed
from simulator.stats import Stats

T = TypeVar("T")
P = ParamSpec("P")


class SimState(Protocol):
    config: SimConfig
    clock: SimClock
    markets: dict[str, list[SimMarket]]
    """The listed markets per exchange, in the exchange's own listing order."""
    history: History
    feed: LiveFeed
    faults: Faults
    stats: Stats
    """Counters, and `stats.connections`: the open websocket connections fault actions reach."""

    async def compute(self, job: Job[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`job(work, *args, **kwargs)` off the event loop so websockets keep flowing meanwhile: on
        a thread, or in a process of its own (simulator/compute.py), so `job` is a module-level
        function."""
        ...

    async def compute_prompt(self, job: Job[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`compute` for work a socket waits on (a snapshot), which never queues behind the rest."""
        ...


class ExchangeServer(Protocol):
    port: str
    actions: tuple[str, ...]

    def add_routes(self, app: web.Application) -> None: ...

    async def action(self, name: str, args: dict[str, Any]) -> None: ...


class ControlledState(SimState, Protocol):
    """What the control port needs beyond `SimState`: routing fault actions to the servers."""

    def supports_action(self, exchange: str, action: str) -> bool: ...

    async def fault_action(self, exchange: str, action: str, args: dict[str, Any]) -> None: ...
