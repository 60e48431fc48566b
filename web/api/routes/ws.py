"""WS /api/ohlcvs: subscribe to live bars of any number of markets and intervals on one socket.

Client messages: `{"event_type": "subscribe"|"unsubscribe", "data_type": "ohlcv", "exchange",
"base_id", "quote_id", "interval", "mls"}`. Server messages: bars with exchange/base_id/quote_id/
interval, `{"event_type": "subscribed"|"unsubscribed", ...}` acknowledgements, `{"detail": ...}`
for a bad message (the socket stays open) and `{"event_type": "heartbeat", "time": ms}` when idle.
"""

from __future__ import annotations

import asyncio
import json
import logging

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from redis.exceptions import RedisError

from web.api.deps import HubDep, SettingsDep
from web.database import DatabaseUnavailable
from web.live import Client, LiveHub, Subscription
from web.ws_messages import BadMessage, parse_request

log = logging.getLogger(__name__)
router = APIRouter(tags=["websocket"])


def _detail(text: str) -> str:
    return json.dumps({"detail": text})


async def _send_loop(websocket: WebSocket, client: Client) -> None:
    """Drain the client's outbox (bars, acknowledgements, details, the hub's heartbeats)."""
    outbox = client.outbox
    while True:
        text = outbox.get_nowait() if not outbox.empty() else await outbox.get()
        await websocket.send_text(text)


async def _handle(text: str | None, client: Client, hub: LiveHub) -> None:
    try:
        event, subscription = parse_request(text)
    except BadMessage as error:
        client.push(_detail(str(error)))
        return
    if event == "unsubscribe":
        if hub.remove(client, subscription):
            client.push(json.dumps({"event_type": "unsubscribed", **subscription.describe()}))
        else:
            client.push(_detail(f"not subscribed to {json.dumps(subscription.describe())}"))
        return
    await _subscribe(client, hub, subscription)


async def _subscribe(client: Client, hub: LiveHub, subscription: Subscription) -> None:
    market = subscription.market
    try:
        known = await hub.market_known(market)
    except DatabaseUnavailable as error:
        client.push(_detail(f"cannot check the market now ({error}); try again"))
        return
    if not known:
        client.push(
            _detail(
                f"unknown market {market.exchange} {market.base_id}/{market.quote_id}: "
                f"see GET /api/symbol-exchange?exchange={market.exchange}"
            )
        )
        return
    hub.add(client, subscription)
    client.push(json.dumps({"event_type": "subscribed", **subscription.describe()}))
    try:
        bar = await hub.current_bar(subscription)
    except (RedisError, OSError, DatabaseUnavailable) as error:
        log.warning("no current bar for %s: %s", subscription.describe(), error)
        return
    if bar is not None:
        client.push(subscription.message(bar))


@router.websocket("/ohlcvs")
async def ohlcvs_socket(websocket: WebSocket, settings: SettingsDep, hub: HubDep) -> None:
    await websocket.accept()
    client = Client(settings.web_ws_queue_size)
    hub.connect(client)
    sender = asyncio.create_task(_send_loop(websocket, client))
    receiver = asyncio.current_task()
    # A failed send means the client is gone: stop waiting for its messages too.
    sender.add_done_callback(lambda task: None if task.cancelled() or receiver.done() else receiver.cancel())
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            await _handle(message.get("text"), client, hub)
    except (WebSocketDisconnect, asyncio.CancelledError, RuntimeError):
        pass
    finally:
        hub.disconnect(client)
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
