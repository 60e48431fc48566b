"""Plumbing shared by the exchange servers: request accounting, injected HTTP faults, websockets.

`fault_gate` runs before an exchange's own handler and returns the reply a fault forces (a 429
storm, a 5xx, a hang), or None to let the request through; `damaged_reply` runs after it and may
cut the real reply short (a connection reset mid-body, or a body truncated to invalid JSON).
`FrameWriter` is the per-connection outbound queue every websocket server uses, so the live feed
never awaits a slow client: the feed appends, the writer task drains. `WsConnection` is the base of
every websocket connection class and `serving_connection` the bookkeeping around serving one;
`spawn` starts the fire-and-forget tasks (closes from outside a socket's own task) and keeps them
referenced until they finish.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
import struct
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from simulator.state import SimState

log = logging.getLogger(__name__)

JSON = "application/json"


def json_response(text: str, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(text=text, status=status, content_type=JSON, headers=headers)


def client_ip(request: web.Request) -> str:
    return request.remote or "unknown"


async def fault_gate(
    sim: SimState,
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


async def damaged_reply(
    sim: SimState, exchange: str, request: web.Request, response: web.StreamResponse
) -> web.StreamResponse:
    """`response` itself, or what the `http_reset_rate` / `http_truncate_rate` faults make of it."""
    if not isinstance(response, web.Response) or not isinstance(response.body, bytes):
        return response
    faults = sim.faults[exchange]
    stats = sim.stats[exchange]
    body = response.body
    if faults.http_reset():
        stats.fault_resets += 1
        return await _reset_midway(request, response, body)
    if faults.http_truncate():
        stats.fault_truncated += 1
        return web.Response(
            body=body[: len(body) // 2], status=response.status, headers=_headers_without_length(response)
        )
    return response


def _headers_without_length(response: web.StreamResponse) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.lower() != "content-length"}


async def _reset_midway(request: web.Request, response: web.Response, body: bytes) -> web.StreamResponse:
    """Announce the whole body, send its first half, then reset the TCP connection (SO_LINGER 0 makes
    the close an RST, as a dying load balancer does), so the client sees a reply break mid-body."""
    stream = web.StreamResponse(status=response.status, headers=_headers_without_length(response))
    stream.content_length = len(body)
    await stream.prepare(request)
    await stream.write(body[: len(body) // 2])
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    return stream


def drop_connections(sim: SimState, exchange: str) -> None:
    """The `drop_ws` action: abort every open websocket connection of `exchange`."""
    conns = sim.stats.connections.of(exchange)
    for conn in conns:
        conn.abort()
    sim.stats[exchange].ws_dropped_by_fault += len(conns)


_background: set[asyncio.Task[Any]] = set()


def spawn(coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    """Run `coro` as a task nobody awaits. The event loop keeps only a weak reference to its tasks,
    so an unreferenced one may be garbage-collected before it finishes; this set holds it until then."""
    task = asyncio.get_running_loop().create_task(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)
    return task


def count_reply(sim: SimState, exchange: str, response: web.StreamResponse) -> None:
    stats = sim.stats[exchange]
    stats.rest_requests += 1
    stats.rest_status[response.status] += 1


class FrameWriter:
    """Outbound text frames of one websocket, sent in order by one task."""

    def __init__(self, ws: web.WebSocketResponse, sim: SimState, exchange: str) -> None:
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

    def __init__(self, sim: SimState, exchange: str, ws: web.WebSocketResponse, transport: Any) -> None:
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
async def serving_connection(sim: SimState, exchange: str, conn: WsConnection) -> AsyncIterator[None]:
    """Serve `conn` inside the block: while it runs, fault actions reach it through
    `sim.stats.connections` (which is also what `ws_connections_open` counts); however the block
    ends, it is unregistered and cleaned up."""
    token = sim.stats.connections.add(exchange, conn)
    sim.stats[exchange].ws_connections_opened += 1
    try:
        yield
    finally:
        sim.stats.connections.remove(token)
        await conn.cleanup()
