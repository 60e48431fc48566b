"""The simulator process: one event loop, one port per exchange plus a control port.

Library use::

    sim = Simulator(SimConfig(markets=20, speed=600))      # or Simulator(markets=20, speed=600)
    await sim.start()                                       # binds config.ports (0 = a free port)
    sim.urls  # {"bitfinex": {"rest": "http://127.0.0.1:P1", "ws": "ws://127.0.0.1:P1/ws/2"},
              #  "binance":  {"rest": "http://127.0.0.1:P2", "ws": "ws://127.0.0.1:P2"},
              #  "bittrex":  {"rest": "http://127.0.0.1:P3", "ws": "http://127.0.0.1:P3/signalr"},
              #  "control":  "http://127.0.0.1:P4"}
    await sim.stop()

From synchronous code (pytest): `with SimulatorThread(config) as sim: ...` runs the same thing on a
background thread's loop. As a process: `python -m simulator --help`.

The `Simulator` is the shared state of simulator/state.py (`SimState`), and every server plugs in
the same way (`ExchangeServer`): it is built with that state, adds its routes to the application of
its port, and performs the fault actions it lists. `SERVERS` is the whole list.
"""

from __future__ import annotations

import asyncio
import email.utils
import errno
import threading
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from aiohttp import web

from common.exchanges import EXCHANGES, simulator_urls
from common.timeutil import floor_to
from simulator.binance import BinanceServer
from simulator.binance_archive import BinanceArchiveServer
from simulator.bitfinex import BitfinexServer
from simulator.bittrex_rest import BittrexRestServer
from simulator.bittrex_signalr import BittrexSignalRServer
from simulator.compute import CandleWork, Compute, Job
from simulator.config import PORT_NAMES, SimConfig, platform_env
from simulator.control import ControlServer
from simulator.core import CandleModel, SimClock, SimMarket
from simulator.faults import LOSSES, Faults, requested_actions
from simulator.history import DAY_MS, History
from simulator.live import LiveFeed
from simulator.state import ExchangeServer
from simulator.stats import Stats

T = TypeVar("T")
P = ParamSpec("P")
SHUTDOWN_SECONDS = 1.0

SERVERS: tuple[Callable[[Any], ExchangeServer], ...] = (
    BitfinexServer,
    BinanceServer,
    BinanceArchiveServer,
    BittrexRestServer,
    BittrexSignalRServer,
    ControlServer,
)
"""Every server, in the order their routes are added (REST before SignalR on the Bittrex port)."""


class PortInUseError(OSError):
    """A configured port is taken by another process."""


class Simulator:
    def __init__(self, config: SimConfig | None = None, **overrides: Any) -> None:
        if config is None:
            config = SimConfig(**overrides)
        elif overrides:
            config = config.replace(**overrides)
        self.config = config
        self.clock = SimClock(config.speed, config.start_ms)
        first_ms = config.first_ms
        if first_ms is None:
            first_ms = floor_to(self.clock.start_ms - int(config.history_days * DAY_MS), DAY_MS)
        work = CandleWork.build(config, self.clock, first_ms)
        self.history: History = work.history
        self.model: CandleModel = work.history.model
        self.markets: dict[str, list[SimMarket]] = {
            exchange: list(listed.values()) for exchange, listed in work.markets.items()
        }
        self.feed = LiveFeed(
            self.clock,
            self.model,
            [m for ms in self.markets.values() for m in ms],
            config.effective_updates_per_minute,
        )
        self.computer = Compute(config, work)
        self.faults = Faults(config.seed)
        for exchange, settings in config.faults.items():
            self.faults.apply(exchange, settings)
        self.stats = Stats()
        self.servers: list[ExchangeServer] = [make(self) for make in SERVERS]
        self._lose_from_start()
        self.urls: dict[str, Any] = {}
        self.ports: dict[str, int] = {}
        self._runners: list[web.AppRunner] = []
        self._feed_task: asyncio.Task[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        """The event loop the servers and the feed run on, once started."""

    def _lose_from_start(self) -> None:
        """The `lose_ws_*` actions of `config.faults` (`--fault binance:lose_ws_closes=1`) take the
        first frames sent. The other actions act on open sockets, of which there are none yet."""
        for exchange, settings in self.config.faults.items():
            for action in requested_actions(settings):
                if action not in LOSSES:
                    continue
                if not self.supports_action(exchange, action):
                    raise ValueError(f"{exchange} has no action {action!r}")
                self.faults.lose(exchange, action, settings[action])

    # ------------------------------------------------------------------------ shared helpers

    async def compute(self, job: Job[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`job(work, *args, **kwargs)` off the event loop (simulator/compute.py), so websockets
        keep flowing."""
        return await self.computer.run(job, *args, **kwargs)

    async def compute_prompt(self, job: Job[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`compute` for work a socket waits on: it never queues behind the rest."""
        return await self.computer.run_prompt(job, *args, **kwargs)

    def _server_for(self, exchange: str, action: str) -> ExchangeServer | None:
        return next((s for s in self.servers if s.port == exchange and action in s.actions), None)

    def supports_action(self, exchange: str, action: str) -> bool:
        return self._server_for(exchange, action) is not None

    async def fault_action(self, exchange: str, action: str, args: dict[str, Any]) -> None:
        server = self._server_for(exchange, action)
        if server is None:
            raise ValueError(f"{exchange} has no action {action!r}")
        await server.action(action, args)

    async def _stamp_simulated_date(self, request: web.Request, response: web.StreamResponse) -> None:
        """Every reply's `Date` header is the simulated clock, as a real exchange's is its own clock
        (clients read the exchange's present from it)."""
        response.headers["Date"] = email.utils.formatdate(self.clock.now_ms() / 1000, usegmt=True)

    # ------------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Bind every port (raising `PortInUseError` naming the port if one is taken) and go live."""
        self.computer.start()
        apps = {name: web.Application() for name in PORT_NAMES}
        for app in apps.values():
            app.on_response_prepare.append(self._stamp_simulated_date)
        for server in self.servers:
            server.add_routes(apps[server.port])
        host = self.config.host
        try:
            for name in PORT_NAMES:
                runner = web.AppRunner(
                    apps[name], access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_SECONDS
                )
                await runner.setup()
                self._runners.append(runner)
                port = self.config.ports.get(name, 0)
                site = web.TCPSite(runner, host, port, reuse_address=True)
                try:
                    await site.start()
                except OSError as exc:
                    if exc.errno == errno.EADDRINUSE:
                        raise PortInUseError(
                            exc.errno, f"{name} port {host}:{port} is already in use (--ports changes it)"
                        ) from exc
                    raise
                server = site._server
                assert server is not None and server.sockets
                self.ports[name] = server.sockets[0].getsockname()[1]
        except BaseException:
            await self._cleanup_runners()
            raise
        self.urls = simulator_urls(host, self.ports)
        self.loop = asyncio.get_running_loop()
        self._feed_task = self.loop.create_task(self.feed.run(), name="sim-live-feed")

    async def _cleanup_runners(self) -> None:
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        self.computer.stop()

    async def stop(self) -> None:
        if self._feed_task is not None:
            self._feed_task.cancel()
            try:
                await self._feed_task
            except asyncio.CancelledError:
                pass
            self._feed_task = None
        for exchange in EXCHANGES:
            for conn in self.stats.connections.of(exchange):
                conn.abort()
        await self._cleanup_runners()

    def env_lines(self) -> list[str]:
        """The platform's .env lines that point it at this simulator."""
        return [f"{name}={value}" for name, value in platform_env(self.urls).items()]

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class SimulatorThread:
    """A `Simulator` on its own event loop in a daemon thread, for synchronous callers.

    `with SimulatorThread(config) as sim:` returns the started `Simulator`; `call(coro_fn)` runs a
    coroutine function on the simulator's loop (e.g. to touch its state safely).
    """

    def __init__(self, config: SimConfig | None = None, **overrides: Any) -> None:
        self.simulator = Simulator(config, **overrides)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="simulator", daemon=True)

    def start(self) -> Simulator:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.simulator.start(), self._loop).result(timeout=30)
        return self.simulator

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        try:
            asyncio.run_coroutine_threadsafe(self.simulator.stop(), self._loop).result(timeout=30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            if not self._thread.is_alive():
                self._loop.close()

    def call(self, fn: Callable[[], Any], timeout: float = 30) -> Any:
        async def runner() -> Any:
            result = fn()
            if asyncio.iscoroutine(result):
                result = await result
            return result

        return asyncio.run_coroutine_threadsafe(runner(), self._loop).result(timeout=timeout)

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
