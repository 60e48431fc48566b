"""The simulator's Bittrex socket, checked field by field against docs/exchanges.md
(Bittrex, the SignalR websocket).

Everything goes over real sockets with the SignalR client in fetchers/ws/signalr.py, so
these tests also prove that a client written from the wire description alone can use the simulator.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
import uuid
import zlib
from datetime import datetime
from decimal import Decimal
from itertools import pairwise
from typing import Any

import aiohttp
import pytest

from fetchers.ws.signalr import CONNECTION_DATA
from tests.support.signalr_client import Push, SignalRClient
from tests.support.simulator import SimHandle, running_simulator, simulator_process

pytestmark = pytest.mark.integration

MINUTE_MS = 60_000
NEGOTIATE_KEYS = {
    "Url",
    "ConnectionToken",
    "ConnectionId",
    "KeepAliveTimeout",
    "DisconnectTimeout",
    "ConnectionTimeout",
    "TryWebSockets",
    "ProtocolVersion",
    "TransportConnectTimeout",
    "LongPollDelay",
}
CANDLE_KEYS = {"sequence", "marketSymbol", "interval", "delta", "candleType"}
DELTA_KEYS = {"startsAt", "open", "high", "low", "close", "volume", "quoteVolume"}
DECIMAL_RE = re.compile(r"^(0|[0-9]+\.[0-9]{8})$")
STARTS_AT_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:00Z$")
INVOKE_ERROR = "There was an error invoking Hub method 'c3.Subscribe'."


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def busy_market(handle: SimHandle) -> str:
    """The listed, online market that trades most (so every minute has updates)."""
    markets = [m for m in handle.markets("bittrex") if m["status"] == "ONLINE"]
    return max(markets, key=lambda m: (m["trade_probability"], m["symbol"]))["symbol"]


def ws_url(handle: SimHandle) -> str:
    return handle.urls["bittrex"]["ws"]


def starts_at_ms(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


async def collect(client: SignalRClient, method: str | None, seconds: float) -> list[Push]:
    got: list[Push] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            got.append(await client.next_push(method, timeout=left))
        except TimeoutError:
            break
    return got


async def settle(client: SignalRClient) -> None:
    """Return once every frame the server had queued or batched before this call has arrived.

    A hub reply leaves after anything the server sent before reading the invocation, pending
    batched pushes included, so its arrival is the barrier (a fixed sleep would only guess).
    """
    assert (await client.invoke("IsAuthenticated"))["R"] is False


async def wait_until(condition: Any, seconds: float) -> bool:
    """Poll `condition()` until it holds or `seconds` pass; whether it held."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def http_get(url: str, params: dict[str, str] | None = None) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session:
        async with session.get(url, params=params) as response:
            return response.status, response.headers.get("Content-Type", ""), await response.text()


# ------------------------------------------------------------------------------------ handshake


def test_negotiate_answers_the_documented_json_with_the_documented_types() -> None:
    with running_simulator(bittrex_keepalive_seconds=10.0) as sim:
        params = {"clientProtocol": "1.5", "connectionData": CONNECTION_DATA, "_": "1698661840973"}
        status, content_type, text = run(http_get(f"{ws_url(sim)}/negotiate", params))
        assert status == 200 and content_type.startswith("application/json")
        body = json.loads(text)
        assert set(body) == NEGOTIATE_KEYS
        assert body["Url"] == "/signalr"
        token = body["ConnectionToken"]
        assert isinstance(token, str) and len(token) >= 100
        assert {"+", "/", "="} <= set(token), "the token must need URL-encoding, as Bittrex's did"
        assert str(uuid.UUID(body["ConnectionId"])) == body["ConnectionId"]
        numbers = [
            ("KeepAliveTimeout", 20.0),
            ("DisconnectTimeout", 30.0),
            ("ConnectionTimeout", 110.0),
            ("TransportConnectTimeout", 5.0),
            ("LongPollDelay", 0.0),
        ]
        for name, value in numbers:
            assert type(body[name]) is float and body[name] == value, name
        assert body["TryWebSockets"] is True
        assert body["ProtocolVersion"] == "1.5"
        assert '"KeepAliveTimeout":20.0' in text and '"TryWebSockets":true' in text

        for asked, resolved in [("1.4", "1.4"), ("2.1", "1.5"), ("1.0", "1.2"), ("", "1.2")]:
            _, _, other = run(http_get(f"{ws_url(sim)}/negotiate", {"clientProtocol": asked}))
            assert json.loads(other)["ProtocolVersion"] == resolved, asked
        second = json.loads(run(http_get(f"{ws_url(sim)}/negotiate", params))[2])
        assert second["ConnectionId"] != body["ConnectionId"] and second["ConnectionToken"] != token


def test_connect_sends_the_init_frame_first_and_start_answers_started() -> None:
    async def scenario(url: str) -> SignalRClient:
        client = await SignalRClient(url).open(start=True)
        await client.close()
        return client

    with running_simulator() as sim:
        client = run(scenario(ws_url(sim)))
        assert client.negotiation["KeepAliveTimeout"] == 2 * sim.simulator.config.bittrex_keepalive_seconds
    init_text = client.frames[0].text
    init = json.loads(init_text)
    assert set(init) == {"C", "S", "M"}
    assert isinstance(init["C"], str) and init["C"].startswith("d-")
    assert type(init["S"]) is int and init["S"] == 1 and init["M"] == []
    assert client.start_reply == {"Response": "started"}


def test_connect_refuses_what_signalr_refuses() -> None:
    async def scenario(url: str) -> dict[str, tuple[int, str]]:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{url}/negotiate", params={"clientProtocol": "1.5"}) as response:
                token = (await response.json())["ConnectionToken"]
            ws_base = url.replace("http://", "ws://")
            good = {
                "transport": "webSockets",
                "clientProtocol": "1.5",
                "connectionToken": token,
                "connectionData": CONNECTION_DATA,
            }
            cases = {
                "tampered token": {**good, "connectionToken": ("A" if token[0] != "A" else "B") + token[1:]},
                "missing token": {k: v for k, v in good.items() if k != "connectionToken"},
                "long polling": {**good, "transport": "longPolling"},
                "unknown hub": {**good, "connectionData": '[{"name":"corehub"}]'},
            }
            results: dict[str, tuple[int, str]] = {}
            for name, params in cases.items():
                try:
                    ws = await session.ws_connect(f"{ws_base}/connect", params=params)
                except aiohttp.WSServerHandshakeError as exc:
                    results[name] = (exc.status, "")
                else:
                    await ws.close()
                    results[name] = (101, "")
            # the token sent without URL-encoding: its '+' arrives as a space
            raw = f"{ws_base}/connect?transport=webSockets&clientProtocol=1.5&connectionToken={token}"
            try:
                ws = await session.ws_connect(aiohttp.client.URL(raw, encoded=True))
            except aiohttp.WSServerHandshakeError as exc:
                results["unencoded token"] = (exc.status, "")
            else:
                await ws.close()
                results["unencoded token"] = (101, "")
            async with session.get(f"{url}/connect", params=good) as response:
                results["plain GET"] = (response.status, await response.text())
            async with session.get(f"{url}/start", params={**good, "connectionToken": "bogus"}) as response:
                results["start with bad token"] = (response.status, await response.text())
            return results

    with running_simulator() as sim:
        results = run(scenario(ws_url(sim)))
    assert {name: status for name, (status, _) in results.items()} == {
        "tampered token": 400,
        "missing token": 400,
        "long polling": 400,
        "unknown hub": 500,
        "unencoded token": 400,
        "plain GET": 400,
        "start with bad token": 400,
    }


# ------------------------------------------------------------------------------------ invocations


def test_subscribe_replies_one_result_per_stream_with_a_string_id_after_groups_tokens() -> None:
    async def scenario(url: str, market: str) -> tuple[SignalRClient, list[dict[str, Any]]]:
        async with SignalRClient(url) as client:
            replies = [
                await client.invoke("Subscribe", [f"candle_{market}_MINUTE_1"]),
                await client.invoke(
                    "Subscribe",
                    [f"candle_{market}_MINUTE_1", "heartbeat", "candle_NOPE-USD_MINUTE_1", "bogus_stream"],
                ),
                await client.invoke("Unsubscribe", [f"candle_{market}_MINUTE_1"]),
            ]
            return client, replies

    with running_simulator() as sim:
        market = busy_market(sim)
        client, (first, second, third) = run(scenario(ws_url(sim), market))
        stats = sim.stats()["bittrex"]
    texts = [f.text for f in client.frames]
    assert '{"R":[{"Success":true,"ErrorCode":null}],"I":"1"}' in texts
    assert first == {"R": [{"Success": True, "ErrorCode": None}], "I": "1"}
    assert second["I"] == "2" and second["R"][:2] == [{"Success": True, "ErrorCode": None}] * 2
    failures = second["R"][2:]
    assert [r["Success"] for r in failures] == [False, False]
    assert all(isinstance(r["ErrorCode"], str) and r["ErrorCode"] for r in failures)
    assert failures[0]["ErrorCode"] == "MARKET_DOES_NOT_EXIST"
    assert third == {"R": [{"Success": True, "ErrorCode": None}], "I": "3"}
    reply_at = texts.index('{"R":[{"Success":true,"ErrorCode":null}],"I":"1"}')
    groups = json.loads(texts[reply_at - 1])
    assert set(groups) == {"C", "G", "M"} and isinstance(groups["G"], str) and groups["M"] == []
    assert stats["ws_subscribe_errors"] == 2


def test_malformed_and_unknown_invocations_get_the_signalr_error() -> None:
    async def scenario(url: str) -> list[dict[str, Any]]:
        async with SignalRClient(url) as client:
            return [
                await client.invoke("Subscribe", "candle_BTC-USD_MINUTE_1"),
                await client.invoke("Subscribe", "candle_BTC-USD_MINUTE_1", "heartbeat"),
                await client.invoke("SubscribeToExchangeDeltas", "BTC-USD"),
                await client.invoke("IsAuthenticated"),
            ]

    with running_simulator() as sim:
        bare, two_args, unknown, authenticated = run(scenario(ws_url(sim)))
    assert bare == {"I": "1", "E": INVOKE_ERROR}
    assert two_args == {"I": "2", "E": INVOKE_ERROR}
    assert unknown == {"I": "3", "E": INVOKE_ERROR.replace("Subscribe", "SubscribeToExchangeDeltas")}
    assert authenticated == {"R": False, "I": "4"}


# ------------------------------------------------------------------------------------ candle pushes


def test_candle_pushes_are_base64_raw_deflate_json_with_string_numbers() -> None:
    async def scenario(url: str, market: str) -> list[Push]:
        async with SignalRClient(url) as client:
            await client.invoke("Subscribe", [f"candle_{market}_MINUTE_1"])
            return await collect(client, "candle", 0.5)

    with running_simulator() as sim:
        market = busy_market(sim)
        pushes = run(scenario(ws_url(sim), market))
    assert len(pushes) >= 3
    for push in pushes:
        frame = push.frame
        assert set(frame) == {"C", "M"} and isinstance(frame["C"], str)
        entries = [e for e in frame["M"] if e["M"] == "candle"]
        for entry in entries:
            assert set(entry) == {"H", "M", "A"} and entry["H"] == "C3"
            assert len(entry["A"]) == 1 and isinstance(entry["A"][0], str)
        payload = push.args[0]
        assert set(payload) == CANDLE_KEYS
        assert type(payload["sequence"]) is int and payload["sequence"] > 0
        assert payload["marketSymbol"] == market and payload["interval"] == "MINUTE_1"
        assert payload["candleType"] == "TRADE"
        delta = payload["delta"]
        assert set(delta) == DELTA_KEYS
        assert all(isinstance(v, str) for v in delta.values())
        assert STARTS_AT_RE.match(delta["startsAt"])
        for name in ("open", "high", "low", "close", "volume", "quoteVolume"):
            assert DECIMAL_RE.match(delta[name]), (name, delta[name])
        assert Decimal(delta["low"]) <= min(Decimal(delta["open"]), Decimal(delta["close"]))
        assert Decimal(delta["high"]) >= max(Decimal(delta["open"]), Decimal(delta["close"]))
    # raw DEFLATE: no zlib header, so a plain zlib.decompress refuses it
    raw = base64.b64decode(next(e for e in pushes[0].frame["M"] if e["M"] == "candle")["A"][0])
    with pytest.raises(zlib.error):
        zlib.decompress(raw)


def test_the_last_push_of_each_minute_is_the_final_bar_and_each_minute_opens_with_a_placeholder() -> None:
    async def scenario(url: str, market: str) -> list[Push]:
        async with SignalRClient(url) as client:
            await client.invoke("Subscribe", [f"candle_{market}_MINUTE_1"])
            return await collect(client, "candle", 2.2)

    with running_simulator(speed=120, updates_per_minute=6) as sim:
        market = busy_market(sim)
        pushes = run(scenario(ws_url(sim), market))
        payloads = [p.args[0] for p in pushes]
        by_minute: dict[int, list[dict[str, str]]] = {}
        for payload in payloads:
            by_minute.setdefault(starts_at_ms(payload["delta"]["startsAt"]), []).append(payload["delta"])
        minutes = sorted(by_minute)
        complete = minutes[1:-1]
        assert len(complete) >= 2, minutes
        truth = {
            row["time"]: row
            for row in sim.truth("bittrex", market, complete[0] - MINUTE_MS, complete[-1] + MINUTE_MS)
        }
    sequences = [p["sequence"] for p in payloads]
    assert sequences == list(range(sequences[0], sequences[0] + len(sequences))), "+1 per message"
    assert minutes == sorted(set(starts_at_ms(p["delta"]["startsAt"]) for p in payloads))
    assert [starts_at_ms(p["delta"]["startsAt"]) for p in payloads] == sorted(
        starts_at_ms(p["delta"]["startsAt"]) for p in payloads
    ), "minutes arrive in order"
    assert any(len(by_minute[m]) > 2 for m in complete), "in-progress updates between placeholder and close"
    for minute in complete:
        last, expected = by_minute[minute][-1], truth[minute]
        for name, truth_name in [
            ("open", "open"),
            ("high", "high"),
            ("low", "low"),
            ("close", "close"),
            ("volume", "volume"),
            ("quoteVolume", "quote_volume"),
        ]:
            assert Decimal(last[name]) == Decimal(expected[truth_name]), (minute, name)
        placeholder, previous_close = by_minute[minute][0], Decimal(truth[minute - MINUTE_MS]["close"])
        assert placeholder["volume"] == "0" and placeholder["quoteVolume"] == "0"
        assert {Decimal(placeholder[k]) for k in ("open", "high", "low", "close")} == {previous_close}


def test_sequences_are_per_stream_and_agree_across_connections() -> None:
    async def scenario(url: str, rest: str, market: str) -> tuple[list[Push], list[Push], int]:
        async with SignalRClient(url) as one, SignalRClient(url) as two:
            await one.invoke("Subscribe", [f"candle_{market}_MINUTE_1"])
            await two.invoke("Subscribe", [f"candle_{market}_MINUTE_1"])
            recent = f"{rest}/v3/markets/{market}/candles/TRADE/MINUTE_1/recent"
            async with aiohttp.ClientSession() as session:
                async with session.head(recent) as response:
                    assert response.status == 200
                    rest_sequence = int(response.headers["Sequence"])
            return await collect(one, "candle", 0.8), await collect(two, "candle", 0.3), rest_sequence

    with running_simulator() as sim:
        market = busy_market(sim)
        first, second, rest_sequence = run(scenario(ws_url(sim), sim.urls["bittrex"]["rest"], market))
    seen = {json.dumps(p.args[0]["delta"], sort_keys=True): p.args[0]["sequence"] for p in first}
    shared = [p.args[0] for p in second if json.dumps(p.args[0]["delta"], sort_keys=True) in seen]
    assert len(shared) >= 2
    for payload in shared:
        assert payload["sequence"] == seen[json.dumps(payload["delta"], sort_keys=True)]
    assert all(p.args[0]["sequence"] > rest_sequence for p in first[-3:]), (
        "a message pushed after a REST snapshot is newer than its Sequence header"
    )


# ------------------------------------------------------------------------------------ timers


def test_keepalives_on_every_socket_and_heartbeats_only_when_subscribed() -> None:
    async def scenario(url: str) -> tuple[SignalRClient, SignalRClient, list[Push]]:
        async with SignalRClient(url) as subscribed, SignalRClient(url) as idle:
            await subscribed.invoke("Subscribe", ["heartbeat"])
            beats = await collect(subscribed, "heartbeat", 2.4)
            return subscribed, idle, beats

    with running_simulator() as sim:
        assert sim.simulator.config.bittrex_keepalive_seconds == 1.0
        subscribed, idle, beats = run(scenario(ws_url(sim)))
    assert len(subscribed.keepalives) >= 2 and len(idle.keepalives) >= 2
    assert "{}" in [f.text for f in idle.frames]
    gaps = [b - a for a, b in pairwise(idle.keepalives)]
    assert max(gaps) < 5.0, f"a 1 s keep-alive timer never leaves a socket silent for 5 s: {gaps}"
    assert sum(gaps) / len(gaps) > 0.5, f"keep-alives come about once per second, not more: {gaps}"
    assert len(beats) >= 2
    for beat in beats:
        assert beat.frame["M"] == [{"H": "C3", "M": "heartbeat", "A": []}]
        assert isinstance(beat.frame["C"], str)
    assert not [f for f in idle.frames if '"heartbeat"' in f.text]


def test_unsubscribe_stops_candles_but_not_heartbeats() -> None:
    async def scenario(url: str, market: str) -> tuple[list[Push], list[Push]]:
        async with SignalRClient(url) as client:
            await client.invoke("Subscribe", [f"candle_{market}_MINUTE_1", "heartbeat"])
            await client.next_push("candle")
            reply = await client.invoke("Unsubscribe", [f"candle_{market}_MINUTE_1"])
            assert reply == {"R": [{"Success": True, "ErrorCode": None}], "I": "2"}
            await settle(client)
            client.discard_pushes()
            later = await collect(client, None, 1.3)
            return [p for p in later if p.method == "candle"], [p for p in later if p.method == "heartbeat"]

    with running_simulator() as sim:
        candles, beats = run(scenario(ws_url(sim), busy_market(sim)))
        subscriptions = sim.stats()["feed"]["subscriptions"]
    assert candles == [] and beats
    assert subscriptions == 0


# ------------------------------------------------------------------------------------ faults and lifecycle


def test_a_drop_fault_closes_the_socket() -> None:
    async def scenario(handle: SimHandle) -> None:
        async with SignalRClient(ws_url(handle)) as client:
            await client.invoke("Subscribe", ["heartbeat"])
            await asyncio.to_thread(handle.set_faults, "bittrex", drop_ws=True)
            await asyncio.wait_for(client.closed.wait(), 10)
            with pytest.raises(ConnectionError):
                await client.next_push(timeout=1)

    with running_simulator() as sim:
        run(scenario(sim))
        stats = sim.stats()["bittrex"]
    assert stats["ws_dropped_by_fault"] == 1 and stats["ws_connections_open"] == 0


def test_a_stall_silences_everything_then_pushes_resume_with_a_sequence_gap() -> None:
    async def scenario(handle: SimHandle, market: str) -> tuple[int, int, int, int]:
        async with SignalRClient(ws_url(handle)) as client:
            await client.invoke("Subscribe", [f"candle_{market}_MINUTE_1", "heartbeat"])
            before = (await client.next_push("candle")).args[0]["sequence"]
            await asyncio.to_thread(handle.set_faults, "bittrex", ws_stall=True)
            await settle(client)
            frames_at = len(client.frames)
            await asyncio.sleep(1.5)
            during = len(client.frames) - frames_at
            await asyncio.to_thread(handle.reset_faults, "bittrex")
            client.discard_pushes()
            after = (await client.next_push("candle")).args[0]["sequence"]
            await client.next_push("heartbeat", timeout=2)
            keepalives = len(client.keepalives)
            await wait_until(lambda: len(client.keepalives) > keepalives, 1.2)
            return during, before, after, len(client.keepalives) - keepalives

    with running_simulator() as sim:
        market = busy_market(sim)
        during, before, after, keepalives_after = run(scenario(sim, market))
        dropped = sim.dropped("bittrex")
    assert during == 0
    assert after > before + 1, "messages lost to the stall still used sequence numbers"
    assert keepalives_after >= 1
    assert set(dropped) == {market} and dropped[market], "the minutes the stall withheld are listed"


def test_a_lost_frame_leaves_a_sequence_gap_and_its_minutes_are_listed() -> None:
    async def scenario(handle: SimHandle, market: str) -> list[dict[str, Any]]:
        async with SignalRClient(ws_url(handle)) as client:
            await client.invoke("Subscribe", [f"candle_{market}_MINUTE_1"])
            seen = [await client.next_push("candle"), await client.next_push("candle")]
            await asyncio.to_thread(handle.lose_frames, "bittrex", 1)
            seen += await collect(client, "candle", 0.8)
            return [push.args[0] for push in seen]

    with running_simulator() as sim:
        market = busy_market(sim)
        payloads = run(scenario(sim, market))
        dropped = sim.dropped("bittrex")
        withheld = sim.stats()["bittrex"]["ws_frames_withheld"]
    sequences = [p["sequence"] for p in payloads]
    gaps = [(a, b) for a, b in pairwise(sequences) if b != a + 1]
    assert len(gaps) == 1 and gaps[0][1] > gaps[0][0] + 1, sequences
    (before, after), lost_messages = gaps[0], gaps[0][1] - gaps[0][0] - 1
    minute_of = {p["sequence"]: starts_at_ms(p["delta"]["startsAt"]) for p in payloads}
    assert set(dropped) == {market} and 1 <= len(dropped[market]) <= lost_messages
    assert all(minute_of[before] <= m <= minute_of[after] for m in dropped[market])
    assert withheld == 1, "one frame lost, however many candle messages it carried"


def test_minutes_a_frozen_feed_could_not_send_leave_a_sequence_gap_and_are_listed() -> None:
    """A machine too slow to send a minute's final in time must not look like a whole stream."""

    async def scenario(handle: SimHandle, market: str) -> list[dict[str, Any]]:
        async with SignalRClient(ws_url(handle)) as client:
            await client.invoke("Subscribe", [f"candle_{market}_MINUTE_1"])
            seen = [await client.next_push("candle")]
            await asyncio.to_thread(handle.freeze, 1.5)  # 15 simulated minutes at 600x
            seen += await collect(client, "candle", 2.5)
            return [push.args[0] for push in seen]

    with running_simulator() as sim:
        market = busy_market(sim)
        payloads = run(scenario(sim, market))
        dropped = sim.dropped("bittrex")
    sequences = [p["sequence"] for p in payloads]
    gaps = [(a, b) for a, b in pairwise(sequences) if b != a + 1]
    assert gaps, "the finals never sent used sequence numbers"
    minute_of = {p["sequence"]: starts_at_ms(p["delta"]["startsAt"]) for p in payloads}
    assert set(dropped) == {market} and len(dropped[market]) >= 5
    assert all(any(minute_of[a] <= m <= minute_of[b] for a, b in gaps) for m in dropped[market])


def test_malformed_rate_cuts_candle_frames_short() -> None:
    async def scenario(handle: SimHandle, market: str) -> SignalRClient:
        async with SignalRClient(ws_url(handle)) as client:
            await client.invoke("Subscribe", [f"candle_{market}_MINUTE_1"])
            await asyncio.to_thread(handle.set_faults, "bittrex", ws_malformed_rate=1.0)
            await wait_until(lambda: client.malformed and client.keepalives, 1.2)
            return client

    with running_simulator() as sim:
        client = run(scenario(sim, busy_market(sim)))
    assert client.malformed
    assert all(text.startswith('{"C":"d-') for text in client.malformed)
    assert client.keepalives, "keep-alives are not data and stay intact"


def test_abort_closes_the_socket_and_reconnect_restores_subscriptions() -> None:
    async def scenario(url: str, market: str) -> tuple[int, dict[str, Any], list[str]]:
        async with SignalRClient(url) as client:
            await client.invoke("Subscribe", [f"candle_{market}_MINUTE_1"])
            await client.next_push("candle")
            async with aiohttp.ClientSession() as session:
                async with session.post(f"{url}/abort", params=client.transport_params()) as response:
                    status = response.status
            await asyncio.wait_for(client.closed.wait(), 3)
            seen = len(client.frames)
            await client.reconnect()
            push = await client.next_push("candle", timeout=2)
            return status, push.args[0], [f.text for f in client.frames[seen:]]

    with running_simulator() as sim:
        market = busy_market(sim)
        status, payload, after_reconnect = run(scenario(ws_url(sim), market))
        stats = sim.stats()["bittrex"]
    assert status == 200
    assert payload["marketSymbol"] == market, "the groups token brought the subscription back"
    assert not [t for t in after_reconnect if '"S":1' in t], "no init frame on reconnect"
    assert stats["ws_connections_opened"] == 2


def test_counters_show_what_the_socket_did() -> None:
    async def scenario(url: str) -> None:
        async with SignalRClient(url) as client:
            await client.invoke("Subscribe", ["heartbeat", "candle_NOPE-BTC_MINUTE_1"])
            await client.next_push("heartbeat", timeout=2)

    with running_simulator() as sim:
        run(scenario(ws_url(sim)))
        deadline = time.monotonic() + 2
        while sim.stats()["bittrex"]["ws_connections_open"] and time.monotonic() < deadline:
            time.sleep(0.05)
        stats = sim.stats()["bittrex"]
    assert stats["ws_connections_opened"] == 1 and stats["ws_connections_open"] == 0
    assert stats["ws_frames_received"] == 1 and stats["ws_subscribe_errors"] == 1
    assert stats["ws_frames_sent"] >= 4  # init, groups token, reply, heartbeat
    assert stats["rest_requests"] == 0, "negotiate and start are not Bittrex REST calls"


def test_the_command_line_simulator_serves_the_socket() -> None:
    async def scenario(url: str, market: str) -> tuple[dict[str, Any], Push]:
        async with SignalRClient(url) as client:
            reply = await client.invoke("Subscribe", [f"candle_{market}_MINUTE_1"])
            return reply, await client.next_push("candle", timeout=3)

    with simulator_process("--markets", "5", "--speed", "600") as sim:
        market = busy_market(sim)
        reply, push = run(scenario(ws_url(sim), market))
    assert reply == {"R": [{"Success": True, "ErrorCode": None}], "I": "1"}
    assert push.args[0]["marketSymbol"] == market
