"""A SignalR classic (protocol 1.5) client for the tests: the platform's handshake
(`fetchers.ws.signalr`) plus invocations with replies, and every frame kept raw with its arrival
time, so tests can check the simulator's exact shapes and timing::

    async with SignalRClient(sim.urls["bittrex"]["ws"]) as client:   # http://host:port/signalr
        reply = await client.invoke("Subscribe", ["candle_BTC-USD_MINUTE_1", "heartbeat"])
        push = await client.next_push("candle")                       # Push(method, args, frame)
        payload = push.args[0]                                        # the decoded JSON

`open(start=False)` skips `/start` (Bittrex did not require it); `reconnect()` reopens the socket at
`/signalr/reconnect` with the last groups token.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from fetchers.exchanges.bittrex import decode_push_argument as decode_argument
from fetchers.ws.signalr import negotiate, socket_url, transport_params


@dataclass
class Push:
    method: str
    args: list[Any]
    frame: dict[str, Any]


@dataclass
class Frame:
    at: float
    text: str


class SignalRClient:
    def __init__(self, base_url: str, hub: str = "c3", timeout: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.hub = hub
        self.timeout = timeout
        self.session: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.negotiation: dict[str, Any] = {}
        self.init_frame: dict[str, Any] | None = None
        self.start_reply: dict[str, Any] | None = None
        self.groups_token: str | None = None
        self.frames: list[Frame] = []
        self.keepalives: list[float] = []
        self.malformed: list[str] = []
        self.closed = asyncio.Event()
        self._pushes: asyncio.Queue[Push | None] = asyncio.Queue()
        self._replies: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 0
        self._reader: asyncio.Task[None] | None = None

    # ---- connection

    def transport_params(self, **extra: str) -> dict[str, str]:
        return transport_params(self.negotiation["ConnectionToken"], **extra)

    async def negotiate(self) -> dict[str, Any]:
        assert self.session is not None
        self.negotiation = await negotiate(self.session, self.base_url)
        return self.negotiation

    async def open(self, start: bool = True) -> SignalRClient:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        await self.negotiate()
        await self._connect("connect", self.transport_params(tid="10"))
        first = await self._first_frame()
        self.init_frame = json.loads(first)
        if start:
            async with self.session.get(f"{self.base_url}/start", params=self.transport_params()) as response:
                response.raise_for_status()
                self.start_reply = await response.json()
        self._reader = asyncio.get_running_loop().create_task(self._read())
        return self

    async def reconnect(self) -> None:
        """Reopen at `/reconnect` (same token, last groups token); the server sends no init frame."""
        await self._stop_reader()
        self.closed = asyncio.Event()
        extra = {"groupsToken": self.groups_token} if self.groups_token else {}
        await self._connect("reconnect", self.transport_params(**extra))
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _connect(self, path: str, params: dict[str, str]) -> None:
        assert self.session is not None
        self.ws = await self.session.ws_connect(socket_url(self.base_url, path), params=params, autoping=True)

    async def _first_frame(self) -> str:
        assert self.ws is not None
        msg = await self.ws.receive(timeout=self.timeout)
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise ConnectionError(f"expected the init frame, got {msg.type!r}")
        self.frames.append(Frame(time.monotonic(), msg.data))
        return msg.data

    async def close(self) -> None:
        await self._stop_reader()
        if self.session is not None:
            await self.session.close()

    async def _stop_reader(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except asyncio.CancelledError:
                pass
            self._reader = None

    async def __aenter__(self) -> SignalRClient:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- invocations

    async def invoke(self, method: str, *args: Any) -> dict[str, Any]:
        """Send a hub invocation and return the whole reply message (`R` or `E`, with `I`)."""
        assert self.ws is not None
        self._next_id += 1
        ident = self._next_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[str(ident)] = future
        await self.ws.send_str(json.dumps({"H": self.hub, "M": method, "A": list(args), "I": ident}))
        return await asyncio.wait_for(future, self.timeout)

    def discard_pushes(self) -> int:
        """Forget pushes received but not yet taken with `next_push`; returns how many."""
        count = 0
        while not self._pushes.empty():
            if self._pushes.get_nowait() is None:
                self._pushes.put_nowait(None)
                break
            count += 1
        return count

    async def next_push(self, method: str | None = None, timeout: float | None = None) -> Push:
        """The next pushed hub message (of `method` if given); raises ConnectionError once closed."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            push = await asyncio.wait_for(self._pushes.get(), max(0.0, deadline - time.monotonic()))
            if push is None:
                self._pushes.put_nowait(None)
                raise ConnectionError("the socket closed")
            if method is None or push.method == method:
                return push

    # ---- reading

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for msg in self.ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                self.frames.append(Frame(time.monotonic(), msg.data))
                try:
                    frame = json.loads(msg.data)
                except ValueError:
                    self.malformed.append(msg.data)
                    continue
                self._dispatch(frame)
        finally:
            self.closed.set()
            self._pushes.put_nowait(None)
            for future in self._replies.values():
                if not future.done():
                    future.set_exception(ConnectionError("the socket closed"))

    def _dispatch(self, frame: dict[str, Any]) -> None:
        if frame == {}:
            self.keepalives.append(time.monotonic())
            return
        if "I" in frame and ("R" in frame or "E" in frame):
            future = self._replies.pop(str(frame["I"]), None)
            if future is not None and not future.done():
                future.set_result(frame)
            return
        if "G" in frame:
            self.groups_token = frame["G"]
        for entry in frame.get("M", []):
            args = [decode_argument(a) if isinstance(a, str) else a for a in entry.get("A", [])]
            self._pushes.put_nowait(Push(entry.get("M", ""), args, frame))
