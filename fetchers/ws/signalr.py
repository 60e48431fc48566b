"""The ASP.NET SignalR classic (protocol 1.5) handshake Bittrex needs, written from the wire
description alone.

No maintained Python library speaks the classic (pre-Core) protocol, and the part we need is small:
negotiate -> connect (websocket) -> init frame -> [start] -> invoke Subscribe -> decode pushes
(base64, then raw DEFLATE). `open_socket` is that handshake alone; the stream engine uses it and
reads the socket itself, the Bittrex adapter builds the invocations and decodes the pushes. The
tests' full client (invocations with replies, raw frames with their arrival times) is
`tests/support/signalr_client.py`.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp

CONNECTION_DATA = json.dumps([{"name": "c3"}], separators=(",", ":"))
PROTOCOL = "1.5"


def transport_params(token: str, **extra: str) -> dict[str, str]:
    """The query every request after negotiate carries (`/connect`, `/start`, `/abort`, ...)."""
    return {
        "transport": "webSockets",
        "clientProtocol": PROTOCOL,
        "connectionToken": token,
        "connectionData": CONNECTION_DATA,
        **extra,
    }


async def negotiate(session: aiohttp.ClientSession, base_url: str) -> dict[str, Any]:
    params = {"clientProtocol": PROTOCOL, "connectionData": CONNECTION_DATA}
    async with session.get(f"{base_url.rstrip('/')}/negotiate", params=params) as response:
        response.raise_for_status()
        return await response.json()


def socket_url(base_url: str, path: str) -> str:
    url = base_url.rstrip("/").replace("http://", "ws://", 1).replace("https://", "wss://", 1)
    return f"{url}/{path}"


async def open_socket(
    session: aiohttp.ClientSession, base_url: str, **ws_options: Any
) -> aiohttp.ClientWebSocketResponse:
    """Negotiate and open the transport socket (the init frame is left for the caller to read)."""
    negotiation = await negotiate(session, base_url)
    params = transport_params(negotiation["ConnectionToken"], tid="10")
    return await session.ws_connect(socket_url(base_url, "connect"), params=params, **ws_options)
