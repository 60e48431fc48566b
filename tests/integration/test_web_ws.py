"""WS /api/ohlcvs with a real websocket client against a real server, PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal

import pytest
from websockets.asyncio.client import connect

from common.candle import Market
from tests.support.web import (
    BASE_MS,
    BTC,
    ETH,
    HOUR_MS,
    expected_bar,
    http_get,
    imitate_live_pipeline_bar,
    imitate_waiting_minute,
    running_web,
    seed_known_data,
    wait_for,
)

pytestmark = pytest.mark.integration

MIN = 60_000
MINUTES = list(range(90))  # 00:00 - 01:29 on 2024-01-01


def subscribe(market: Market, interval: str = "1m", event: str = "subscribe") -> str:
    return json.dumps(
        {
            "event_type": event,
            "data_type": "ohlcv",
            "exchange": market.exchange,
            "base_id": market.base_id,
            "quote_id": market.quote_id,
            "interval": interval,
            "mls": True,
        }
    )


async def next_message(ws, skip_heartbeats: bool = True) -> dict:
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), timeout=20))
        if not (skip_heartbeats and message.get("event_type") == "heartbeat"):
            return message


def ident(market: Market, interval: str) -> dict:
    return {
        "exchange": market.exchange,
        "base_id": market.base_id,
        "quote_id": market.quote_id,
        "interval": interval,
    }


@pytest.fixture
def seeded(settings):
    return seed_known_data(settings, [BTC, ETH], MINUTES)


@pytest.fixture
def web(settings, seeded):
    with running_web(settings) as base:
        wait_for(lambda: http_get(f"{base}/api/health")[1]["web"]["live_listener"], 20, "listener up")
        yield base


def live_bar(minute: int, close: str) -> dict:
    return {
        "time": BASE_MS + minute * MIN,
        "open": "1.5",
        "high": "500.25",
        "low": "0.5",
        "close": close,
        "volume": "1.5",
    }


def test_two_markets_on_one_socket_then_unsubscribe_one(web, settings, seeded, redis_server):
    client = redis_server.client()
    waiting = {
        "time": BASE_MS + 90 * MIN,
        "open": "3",
        "high": "4",
        "low": "0.25",
        "close": "3.5",
        "volume": "0.5",
    }
    imitate_waiting_minute(client, settings, ETH, waiting)

    async def scenario():
        async with connect(web.replace("http", "ws") + "/api/ohlcvs") as ws:
            await ws.send(subscribe(BTC, "1m"))
            assert await next_message(ws) == {"event_type": "subscribed", **ident(BTC, "1m")}
            await ws.send(subscribe(ETH, "1h"))
            assert await next_message(ws) == {"event_type": "subscribed", **ident(ETH, "1h")}
            # at once: the current 01:00 bar, stored minutes 60-89 plus the one waiting in Redis
            stored = expected_bar(seeded[ETH][60:], BASE_MS + HOUR_MS)
            assert await next_message(ws) == {
                **ident(ETH, "1h"),
                "time": BASE_MS + HOUR_MS,
                "open": stored["open"],
                "high": stored["high"],
                "low": "0.25",
                "close": "3.5",
                "volume": str(Decimal(stored["volume"]) + Decimal("0.5")),
            }

            bar = live_bar(91, "2.5")
            imitate_live_pipeline_bar(client, settings, BTC, bar)
            assert await next_message(ws) == {**ident(BTC, "1m"), **bar}

            imitate_live_pipeline_bar(client, settings, ETH, live_bar(91, "7.75"))
            rolled = await next_message(ws)
            # the 01:00 hour: stored minutes 60-89, the waiting minute 90, the live minute 91
            assert rolled == {
                **ident(ETH, "1h"),
                "time": BASE_MS + HOUR_MS,
                "open": stored["open"],
                "high": "500.25",
                "low": "0.25",
                "close": "7.75",
                "volume": str(Decimal(stored["volume"]) + Decimal("0.5") + Decimal("1.5")),
            }

            await ws.send(subscribe(BTC, "1m", event="unsubscribe"))
            assert await next_message(ws) == {"event_type": "unsubscribed", **ident(BTC, "1m")}
            imitate_live_pipeline_bar(client, settings, BTC, live_bar(92, "9"))
            imitate_live_pipeline_bar(client, settings, ETH, live_bar(92, "8"))
            after = await next_message(ws)
            assert after["exchange"] == "bitfinex" and after["close"] == "8", (
                "nothing more from the BTC market"
            )

    asyncio.run(scenario())


def test_subscribe_sends_the_current_bar_at_once(web, settings, redis_server):
    bar = live_bar(95, "4.25")
    imitate_live_pipeline_bar(redis_server.client(), settings, BTC, bar)

    async def scenario():
        async with connect(web.replace("http", "ws") + "/api/ohlcvs") as ws:
            await ws.send(subscribe(BTC, "1m"))
            assert (await next_message(ws))["event_type"] == "subscribed"
            assert await next_message(ws) == {**ident(BTC, "1m"), **bar}

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "message, fragment",
    [
        ("hello", "not JSON"),
        ("[1, 2]", "send a JSON object"),
        ('{"event_type": "dance"}', "event_type: send 'subscribe' or 'unsubscribe'"),
        ('{"event_type": "subscribe", "data_type": "trades"}', "data_type: send 'ohlcv'"),
        (
            '{"event_type": "subscribe", "exchange": "kraken"}',
            "exchange: send one of bitfinex, binance, bittrex",
        ),
        (
            '{"event_type": "subscribe", "exchange": "binance", "base_id": 5}',
            "base_id: send the currency code",
        ),
        (subscribe(BTC).replace('"1m"', '"2m"'), "interval: send one of 1m 5m"),
        (subscribe(BTC).replace("true", '"yes"'), "mls: send true"),
        (subscribe(Market("binance", "NOPE", "USDT", "x")), "unknown market binance NOPE/USDT"),
        (subscribe(BTC, event="unsubscribe"), "not subscribed to"),
    ],
)
def test_bad_messages_get_a_detail_and_the_socket_stays_open(web, message, fragment):
    async def scenario():
        async with connect(web.replace("http", "ws") + "/api/ohlcvs") as ws:
            await ws.send(message)
            reply = await next_message(ws)
            assert fragment in reply["detail"], reply
            await ws.send(b"\x00binary")
            assert "send JSON text messages" in (await next_message(ws))["detail"]
            await ws.send(subscribe(BTC))
            assert (await next_message(ws))["event_type"] == "subscribed"

    asyncio.run(scenario())


def test_one_listener_serves_many_sockets_and_vanished_clients_are_cleaned_up(web, redis_server):
    client = redis_server.client()

    async def scenario():
        sockets = [await connect(web.replace("http", "ws") + "/api/ohlcvs") for _ in range(5)]
        for ws in sockets:
            await ws.send(subscribe(BTC))
            await ws.send(subscribe(ETH, "5m"))
            assert (await next_message(ws))["event_type"] == "subscribed"
            assert (await next_message(ws))["event_type"] == "subscribed"
        assert http_get(f"{web}/api/health")[1]["web"]["websocket_subscriptions"] == 10
        assert client.execute_command("PUBSUB", "NUMPAT") == 1, "one pattern subscription for the process"
        for ws in sockets[:3]:
            ws.transport.abort()  # vanish without a close frame
        await sockets[3].close()
        wait_for(
            lambda: http_get(f"{web}/api/health")[1]["web"]["websocket_subscriptions"] == 2, 30, "cleanup"
        )
        await sockets[4].close()

    asyncio.run(scenario())
    wait_for(lambda: http_get(f"{web}/api/health")[1]["web"]["websocket_subscriptions"] == 0, 30, "cleanup")


def test_idle_sockets_get_heartbeats(settings, seeded):
    with running_web(settings.model_copy(update={"web_ws_heartbeat_seconds": 0.2})) as base:

        async def scenario():
            async with connect(base.replace("http", "ws") + "/api/ohlcvs") as ws:
                message = await next_message(ws, skip_heartbeats=False)
                assert message["event_type"] == "heartbeat" and isinstance(message["time"], int)

        asyncio.run(scenario())
