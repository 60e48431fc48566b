"""Plumbing shared by the exchange servers: request accounting, injected HTTP faults, websockets.

`fault_gate` runs before an exchange's own handler and returns the reply a fault forces (a 429
storm, a 5xx, a hang), or None to let the request through. `FrameWriter` is the per-connection
outbound queue every websocket server uses, so the live feed never awaits a slow client: the feed
appends, the writer task drains. `WsConnection` is the base of every websocket connection class and
`serving_connection` the bookkeeping around serving one; `spawn` starts the fire-and-forget tasks
(closes from outside a socket's own task) and keeps them referenced until they finish.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from simulator.server import Simulator

log = logging.getLogger(__name__)

JSON = "application/json"


def json_response(text: str, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(text=text, status=status, content_type=JSON, headers=headers)


def client_ip(request: web.Request) -> str:
    return request.remote or "unknown"


async def fault_gate(
    sim: Simulator,
    exchange: str,
    storm_reply: Callable[[], web.Response],
    error_reply: Callable[[], web.Response],
) -> web.Response | None:
    """The reply an active fault imposes on this REST request, or None."""
    faults = sim.faults[exchange]
    stats = sim.stats[exchange]
    if faults.storming():
        stats.storm_429 += 1
        return storm_reply()
    if faults.http_hang():
        stats.fault_hangs += 1
        await asyncio.sleep(sim.config.http_hang_seconds)
        return web.Response(
            status=504,
            text="<html><body><h1>504 Gateway Time-out</h1></body></html>",
            content_type="text/html",
        )
    if faults.http_5xx():
        stats.fault_5xx += 1
        return error_reply()
    return None


_background: set[asyncio.Task[Any]] = set()


def spawn(coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    """Run `coro` as a task nobody awaits. The event loop keeps only a weak reference to its tasks,
    so an unreferenced one may be garbage-collected before it finishes; this set holds it until then."""
    task = asyncio.get_running_loop().create_task(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)
    return task


def count_reply(sim: Simulator, exchange: str, response: web.StreamResponse) -> None:
    stats = sim.stats[exchange]
    stats.rest_requests += 1
    stats.rest_status[response.status] += 1


class FrameWriter:
    """Outbound text frames of one websocket, sent in order by one task."""

    def __init__(self, ws: web.WebSocketResponse, sim: Simulator, exchange: str) -> None:
        self.ws = ws
        self.sim = sim
        self.exchange = exchange
        self.queue: collections.deque[str] = collections.deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.closed = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def send(self, text: str) -> None:
        if self.closed:
            return
        if len(self.queue) >= self.sim.config.ws_max_queued_frames:
            log.warning("%s client too slow (%d frames queued): closing", self.exchange, len(self.queue))
            self.closed = True
            self.queue.clear()
            spawn(self.ws.close(code=1008, message=b"too slow"))
            return
        self.queue.append(text)
        self._wake.set()

    async def _drain(self) -> None:
        stats = self.sim.stats[self.exchange]
        while self.queue and not self.ws.closed:
            await self.ws.send_str(self.queue.popleft())
            stats.ws_frames_sent += 1

    async def _run(self) -> None:
        try:
            while not self.closed:
                await self._wake.wait()
                self._wake.clear()
                await self._drain()
        except (ConnectionError, RuntimeError, asyncio.CancelledError):
            pass

    async def close(self, code: int, message: bytes) -> None:
        """Close the websocket deliberately, after sending what is already queued (the replies a
        client earned before breaking a rule must not be overtaken by the close frame)."""
        self.closed = True
        try:
            await self._drain()
        except (ConnectionError, RuntimeError):
            pass
        self.queue.clear()
        await self.ws.close(code=code, message=message)

    async def stop(self) -> None:
        self.closed = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass


class WsConnection:
    """What every websocket connection shares: its socket, the transport under it (which `abort()`
    cuts, for `drop_ws` and shutdown), its `FrameWriter` and its helper tasks (stopped by `cleanup`;
    subclasses release their subscriptions first, then call this one)."""

    def __init__(self, sim: Simulator, exchange: str, ws: web.WebSocketResponse, transport: Any) -> None:
        self.sim = sim
        self.ws = ws
        self.transport = transport
        self.writer = FrameWriter(ws, sim, exchange)
        self._tasks: list[asyncio.Task[Any]] = []

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    async def cleanup(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.writer.stop()


@contextlib.asynccontextmanager
async def serving_connection(sim: Simulator, exchange: str, conn: WsConnection) -> AsyncIterator[None]:
    """Serve `conn` inside the block: while it runs, fault actions reach it through
    `sim.faults.connections` (which is also what `ws_connections_open` counts); however the block
    ends, it is unregistered and cleaned up."""
    token = sim.faults.connections.add(exchange, conn)
    sim.stats[exchange].ws_connections_opened += 1
    try:
        yield
    finally:
        sim.faults.connections.remove(token)
        await conn.cleanup()
