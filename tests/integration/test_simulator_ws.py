"""The simulator's Bitfinex `/ws/2` and Binance market-stream websockets over real sockets.

Checked against docs/exchanges.md (the Bitfinex websocket and Binance market streams): event and
frame shapes with their JSON types, snapshots, updates and closed flags, heartbeats and pings,
errors and limits, and info/maintenance actions driven through the control port. Fast timers
(fast-test defaults) keep every test to a few seconds.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from decimal import Decimal
from itertools import pairwise
from typing import Any, TypeVar

import aiohttp
import pytest

from tests.support.simulator import SimHandle, is_json_number, running_simulator

pytestmark = pytest.mark.integration

MINUTE = 60_000
FIXED8 = re.compile(r"^\d+\.\d{8}$")
SEQ_ALL_AND_TIMESTAMP = 65536 + 32768
STALL_SECONDS = 2.5
T = TypeVar("T")


def run(fn: Callable[[aiohttp.ClientSession], Awaitable[T]], timeout: float = 15) -> T:
    async def main() -> T:
        async with aiohttp.ClientSession() as session:
            return await asyncio.wait_for(fn(session), timeout)

    return asyncio.run(main())


async def off_loop(fn: Callable[[], T]) -> T:
    """Blocking control-port calls, without stalling the client's own event loop."""
    return await asyncio.get_running_loop().run_in_executor(None, fn)


async def recv_json(ws: aiohttp.ClientWebSocketResponse, timeout: float = 3.0) -> Any:
    msg = await ws.receive(timeout=timeout)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    return json.loads(msg.data, parse_float=Decimal)


async def recv_until(
    ws: aiohttp.ClientWebSocketResponse, predicate: Callable[[Any], bool], timeout: float = 5.0
) -> tuple[Any, list[Any]]:
    """The first frame matching `predicate`, and every frame seen before it."""
    deadline = time.monotonic() + timeout
    seen: list[Any] = []
    while True:
        frame = await recv_json(ws, max(0.01, deadline - time.monotonic()))
        if predicate(frame):
            return frame, seen
        seen.append(frame)


async def close_frame(ws: aiohttp.ClientWebSocketResponse, timeout: float = 3.0) -> tuple[int, list[Any]]:
    """Read to the server's close frame: its code, and the text frames that came before it.

    The code is read from the frame itself: `ws.close_code` can turn into 1006 when the server drops
    the TCP connection before the client's close reply is written, which says nothing about the server.
    """
    texts: list[Any] = []
    while True:
        msg = await ws.receive(timeout=timeout)
        if msg.type == aiohttp.WSMsgType.TEXT:
            texts.append(json.loads(msg.data))
            continue
        assert msg.type == aiohttp.WSMsgType.CLOSE, msg
        return msg.data, texts


@pytest.fixture
def sim() -> Iterator[SimHandle]:
    with running_simulator() as handle:
        yield handle


# ------------------------------------------------------------------------------------- bitfinex


def bfx_url(sim: SimHandle) -> str:
    return sim.urls["bitfinex"]["ws"]


def subscribe_msg(pair: str) -> dict[str, Any]:
    return {"event": "subscribe", "channel": "candles", "key": f"trade:1m:t{pair}"}


async def bfx_subscribe(ws: aiohttp.ClientWebSocketResponse, pair: str) -> tuple[int, list[Any]]:
    await ws.send_json(subscribe_msg(pair))
    reply, _ = await recv_until(
        ws, lambda f: isinstance(f, dict) and f.get("event") in ("subscribed", "error")
    )
    assert reply == {
        "event": "subscribed",
        "channel": "candles",
        "chanId": reply["chanId"],
        "key": f"trade:1m:t{pair}",
    }
    assert isinstance(reply["chanId"], int)
    # the channel's first frame is its snapshot; other channels of the socket may push meanwhile
    snapshot, _ = await recv_until(ws, lambda f: isinstance(f, list) and f[0] == reply["chanId"])
    assert isinstance(snapshot[1], list) and all(isinstance(c, list) for c in snapshot[1]), snapshot
    return reply["chanId"], snapshot[1]


def check_bitfinex_candle(candle: Any) -> None:
    assert isinstance(candle, list) and len(candle) == 6
    assert isinstance(candle[0], int) and candle[0] % MINUTE == 0
    assert all(is_json_number(v) for v in candle[1:]), candle
    _, open_, close, high, low, volume = candle
    assert high >= max(open_, close) and low <= min(open_, close) and volume > 0


def test_bitfinex_info_subscribe_snapshot_then_updates_equal_to_truth(sim: SimHandle) -> None:
    async def scenario(session: aiohttp.ClientSession) -> tuple[int, list[Any], list[Any]]:
        async with session.ws_connect(bfx_url(sim)) as ws:
            info = await recv_json(ws)
            assert info["event"] == "info" and info["version"] == 2 and info["platform"] == {"status": 1}
            assert isinstance(info["serverId"], str) and len(info["serverId"]) == 36
            chan_id, snapshot = await bfx_subscribe(ws, "BTCUSD")
            updates = []
            while len(updates) < 8:
                frame = await recv_json(ws)
                assert isinstance(frame, list) and frame[0] == chan_id and len(frame) == 2
                updates.append(frame[1])
            return chan_id, snapshot, updates

    _, snapshot, updates = run(scenario)
    assert len(snapshot) == 30 and all(isinstance(c, list) for c in snapshot)
    for candle in snapshot + updates:
        check_bitfinex_candle(candle)
    times = [c[0] for c in snapshot]
    assert times == sorted(times, reverse=True) and len(set(times)) == 30, "snapshot newest first"
    update_times = [c[0] for c in updates]
    assert update_times == sorted(update_times) and update_times[-1] > times[0]
    truth = {
        t["time"]: t for t in sim.truth("bitfinex", "BTCUSD", update_times[0], update_times[-1] + MINUTE)
    }
    closed = [c for c in updates if c[0] < update_times[-1]]
    assert closed
    for candle in closed:
        t = truth[candle[0]]
        assert candle[1:] == [Decimal(t[k]) for k in ("open", "close", "high", "low", "volume")]
    for candle in snapshot[1:]:
        t = sim.truth("bitfinex", "BTCUSD", candle[0], candle[0] + MINUTE)[0]
        assert candle[1:] == [Decimal(t[k]) for k in ("open", "close", "high", "low", "volume")]


def test_bitfinex_heartbeats_on_idle_channels_and_seq_all() -> None:
    with running_simulator(speed=1.0) as sim:
        quiet = next(m["symbol"] for m in sim.markets("bitfinex") if m["trade_probability"] < 0.5)

        async def scenario(session: aiohttp.ClientSession) -> list[Any]:
            async with session.ws_connect(bfx_url(sim)) as ws:
                await recv_json(ws)
                await ws.send_json({"event": "conf", "flags": 65536})
                assert await recv_json(ws) == {"event": "conf", "status": "OK", "flags": 65536}
                await ws.send_json(subscribe_msg(quiet))
                await recv_json(ws)
                frames = [await recv_json(ws)]
                started = time.monotonic()
                while sum(1 for f in frames if f[1] == "hb") < 2:
                    frames.append(await recv_json(ws, 10.0))
                assert time.monotonic() - started < 10.0, "a 1 s heartbeat timer is not 5 s late"
                return frames

        frames = run(scenario)
    chan_id = frames[0][0]
    assert all(f[0] == chan_id for f in frames)
    assert [f[-1] for f in frames] == list(range(1, len(frames) + 1)), (
        "SEQ_ALL counts every frame, hb included"
    )
    assert ["hb"] in [f[1:-1] for f in frames] and [chan_id, "hb", frames[-1][-1]] == frames[-1]


def test_bitfinex_errors_keep_the_socket_open(sim: SimHandle) -> None:
    async def scenario(session: aiohttp.ClientSession) -> None:
        async with session.ws_connect(bfx_url(sim)) as ws:
            await recv_json(ws)
            await ws.send_json(subscribe_msg("NOPEUSD"))
            error, _ = await recv_until(ws, lambda f: isinstance(f, dict))
            assert error == {
                **subscribe_msg("NOPEUSD"),
                "event": "error",
                "msg": "symbol: invalid",
                "code": 10300,
            }
            chan_id, _ = await bfx_subscribe(ws, "ETHUSD")
            await ws.send_json(subscribe_msg("ETHUSD"))
            dup, _ = await recv_until(ws, lambda f: isinstance(f, dict))
            assert (dup["event"], dup["code"], dup["msg"], dup["chanId"]) == (
                "error",
                10301,
                "subscribe: dup",
                chan_id,
            )
            await ws.send_json({"event": "subscribe", "channel": "book", "symbol": "tBTCUSD"})
            unknown, _ = await recv_until(ws, lambda f: isinstance(f, dict))
            assert (unknown["event"], unknown["code"], unknown["channel"]) == ("error", 10300, "book")
            await ws.send_json({"event": "nope"})
            bad_event, _ = await recv_until(ws, lambda f: isinstance(f, dict))
            assert (bad_event["event"], bad_event["code"]) == ("error", 10000)
            await ws.send_json({"event": "unsubscribe", "chanId": chan_id})
            done, _ = await recv_until(ws, lambda f: isinstance(f, dict))
            assert done == {"event": "unsubscribed", "status": "OK", "chanId": chan_id}
            await ws.send_json({"event": "unsubscribe", "chanId": chan_id})
            again, _ = await recv_until(ws, lambda f: isinstance(f, dict))
            assert (again["event"], again["code"], again["msg"]) == ("error", 10400, "unsubscribe: invalid")
            await ws.send_json({"event": "ping", "cid": 1234})
            pong, _ = await recv_until(ws, lambda f: isinstance(f, dict))
            assert pong["event"] == "pong" and pong["cid"] == 1234 and isinstance(pong["ts"], int)
            assert not ws.closed

    run(scenario)
    assert sim.stats()["bitfinex"]["ws_subscribe_errors"] >= 3


def test_bitfinex_subscribed_and_error_events_echo_every_request_field(sim: SimHandle) -> None:
    async def scenario(session: aiohttp.ClientSession) -> list[Any]:
        async with session.ws_connect(bfx_url(sim)) as ws:
            await recv_json(ws)
            replies = []
            for request in (
                {**subscribe_msg("BTCUSD"), "subId": "my-candles-1", "extra": {"n": 1}},
                {**subscribe_msg("NOPEUSD"), "subId": "my-candles-2"},
                {"event": "nope", "cid": 77},
            ):
                await ws.send_json(request)
                reply, _ = await recv_until(ws, lambda f: isinstance(f, dict))
                replies.append(reply)
            return replies

    subscribed, refused, unknown = run(scenario)
    assert subscribed == {
        "event": "subscribed",
        "channel": "candles",
        "key": "trade:1m:tBTCUSD",
        "subId": "my-candles-1",
        "extra": {"n": 1},
        "chanId": subscribed["chanId"],
    }
    assert isinstance(subscribed["chanId"], int)
    assert refused == {
        "event": "error",
        "channel": "candles",
        "key": "trade:1m:tNOPEUSD",
        "subId": "my-candles-2",
        "msg": "symbol: invalid",
        "code": 10300,
    }
    assert unknown == {"event": "error", "cid": 77, "msg": "event: invalid (nope)", "code": 10000}


def test_bitfinex_too_many_channels_per_connection() -> None:
    with running_simulator(bitfinex_channels_per_connection=3) as sim:
        pairs = [m["symbol"] for m in sim.markets("bitfinex")][:5]

        async def scenario(session: aiohttp.ClientSession) -> None:
            async with session.ws_connect(bfx_url(sim)) as ws, session.ws_connect(bfx_url(sim)) as other:
                await recv_json(ws)
                for pair in pairs[:3]:
                    await bfx_subscribe(ws, pair)
                await ws.send_json(subscribe_msg(pairs[3]))
                error, _ = await recv_until(ws, lambda f: isinstance(f, dict))
                assert error == {
                    **subscribe_msg(pairs[3]),
                    "event": "error",
                    "msg": "subscribe: limit",
                    "code": 10305,
                }
                await recv_json(other)
                await bfx_subscribe(other, pairs[3])
                assert not ws.closed

        run(scenario)
        stats = sim.stats()["bitfinex"]
        assert (
            stats["over_limit"] == 1
            and stats["ws_connections_open"] == 0
            and stats["ws_connections_opened"] == 2
        )


def test_bitfinex_maintenance_and_restart_info_codes(sim: SimHandle) -> None:
    async def scenario(session: aiohttp.ClientSession) -> None:
        async with session.ws_connect(bfx_url(sim)) as ws:
            await recv_json(ws)
            chan_id, _ = await bfx_subscribe(ws, "BTCUSD")
            await off_loop(lambda: sim.set_faults("bitfinex", ws_info=20060, maintenance_seconds=1.0))
            entering, _ = await recv_until(ws, lambda f: isinstance(f, dict))
            assert (
                entering["event"] == "info" and entering["code"] == 20060 and isinstance(entering["msg"], str)
            )
            async with session.ws_connect(bfx_url(sim)) as late:
                assert (await recv_json(late))["platform"] == {"status": 0}
            async with session.get(sim.urls["bitfinex"]["rest"] + "/v2/platform/status") as reply:
                assert await reply.json() == [0]
            ended, during = await recv_until(ws, lambda f: isinstance(f, dict), timeout=3.0)
            assert ended["event"] == "info" and ended["code"] == 20061
            assert all(f[1] == "hb" for f in during), "no candle data during maintenance"
            update, _ = await recv_until(ws, lambda f: f[1] != "hb")
            assert update[0] == chan_id and isinstance(update[1], list), "data resumes after 20061"
            await off_loop(lambda: sim.set_faults("bitfinex", ws_info=20051))
            restart, _ = await recv_until(ws, lambda f: isinstance(f, dict))
            assert restart["event"] == "info" and restart["code"] == 20051
            code, after = await close_frame(ws)
            assert code == 1001 and not after, "20051: the server closes the socket, sending nothing more"

    run(scenario)


def seq_gaps(seqs: list[int]) -> list[tuple[int, int]]:
    """(before, after) wherever a sequence does not go up by exactly one."""
    return [(a, b) for a, b in pairwise(seqs) if b != a + 1]


async def bfx_numbered_channel(ws: aiohttp.ClientWebSocketResponse, pair: str, more: int = 0) -> list[Any]:
    """Set SEQ_ALL and TIMESTAMP (the sequence is then second to last), subscribe to `pair` and
    return the channel's snapshot frame and the `more` frames after it."""
    await recv_json(ws)
    await ws.send_json({"event": "conf", "flags": SEQ_ALL_AND_TIMESTAMP})
    assert (await recv_json(ws))["status"] == "OK"
    await ws.send_json(subscribe_msg(pair))
    await recv_until(ws, lambda f: isinstance(f, dict) and f.get("event") == "subscribed")
    frames = [await recv_json(ws)]
    while len(frames) <= more:
        frames.append(await recv_json(ws))
    return frames


def test_bitfinex_seq_all_jumps_by_every_frame_a_stall_withheld_heartbeats_once_per_period() -> None:
    with running_simulator(speed=1.0, updates_per_minute=1) as sim:
        period = sim.simulator.config.bitfinex_heartbeat_seconds

        async def scenario(session: aiohttp.ClientSession) -> list[Any]:
            async with session.ws_connect(bfx_url(sim)) as ws:
                frames = await bfx_numbered_channel(ws, "BTCUSD")
                await off_loop(lambda: sim.set_faults("bitfinex", ws_stall=True))
                await asyncio.sleep(STALL_SECONDS)
                await off_loop(lambda: sim.reset_faults("bitfinex"))
                while not seq_gaps([f[-2] for f in frames]):
                    frames.append(await recv_json(ws, 3.0))
                return frames

        frames = run(scenario)
        withheld = sim.stats()["bitfinex"]["ws_frames_withheld"]
    ((before, after),) = seq_gaps([f[-2] for f in frames])
    assert after - before - 1 == withheld, "the next frame's number counts every frame withheld"
    assert 2 <= withheld <= STALL_SECONDS / period + 2, (
        f"{withheld} withheld: one heartbeat per period (and at most one minute's data), "
        "not one per heartbeat-timer tick"
    )
    assert all(isinstance(f[-1], int) and f[-1] > 1e12 for f in frames), "the timestamp stays last"


def test_bitfinex_a_snapshot_a_stall_withheld_lists_only_the_minutes_from_the_subscription_on() -> None:
    """A snapshot repeats history that sockets before this one were sent; the new channel's client
    can claim no minute before its first frame, so only the minute in progress counts as withheld."""
    with running_simulator(speed=1.0) as sim:

        async def scenario(session: aiohttp.ClientSession) -> int:
            async with session.ws_connect(bfx_url(sim)) as ws:
                await recv_json(ws)
                await off_loop(lambda: sim.set_faults("bitfinex", ws_stall=True))
                subscribed_at = (await off_loop(sim.clock))["current_minute_ms"]
                await ws.send_json(subscribe_msg("BTCUSD"))
                await recv_until(ws, lambda f: isinstance(f, dict) and f.get("event") == "subscribed")
                await asyncio.sleep(0.5)  # the snapshot is sent meanwhile, and withheld
                await off_loop(lambda: sim.reset_faults("bitfinex"))
                return subscribed_at

        subscribed_at = run(scenario)
        assert sim.stats()["bitfinex"]["ws_frames_withheld"] >= 1, "the snapshot was withheld"
        dropped = sim.dropped("bitfinex")
    assert all(minute >= subscribed_at for minute in dropped.get("BTCUSD", [])), dropped


def test_bitfinex_lose_ws_frames_makes_seq_all_jump_by_n_and_lists_the_minutes(sim: SimHandle) -> None:
    lost = 3

    async def scenario(session: aiohttp.ClientSession) -> list[Any]:
        async with session.ws_connect(bfx_url(sim)) as ws:
            frames = await bfx_numbered_channel(ws, "BTCUSD", more=2)
            await off_loop(lambda: sim.lose_frames("bitfinex", lost))
            while not (gaps := seq_gaps([f[-2] for f in frames])) or frames[-1][-2] < gaps[0][1] + 2:
                frames.append(await recv_json(ws))
            return frames

    frames = run(scenario)
    dropped = sim.dropped("bitfinex")
    ((before, after),) = seq_gaps([f[-2] for f in frames])
    assert after - before == lost + 1, "the frames lost still took their numbers"
    minute_of = {f[-2]: f[1][0] for f in frames if isinstance(f[1], list) and isinstance(f[1][0], int)}
    received = set(minute_of.values())
    assert set(dropped) == {"BTCUSD"} and len(dropped["BTCUSD"]) == lost
    assert all(minute_of[before] < m < minute_of[after] for m in dropped["BTCUSD"])
    assert not dropped["BTCUSD"] & received


def test_bitfinex_minutes_a_frozen_feed_could_not_send_make_seq_all_jump_and_are_listed() -> None:
    """A machine too slow to send a minute's final in time must not look like a whole stream."""
    with running_simulator(speed=600.0, updates_per_minute=2) as sim:

        async def scenario(session: aiohttp.ClientSession) -> list[Any]:
            async with session.ws_connect(bfx_url(sim)) as ws:
                frames = await bfx_numbered_channel(ws, "BTCUSD", more=1)
                await off_loop(lambda: sim.freeze(1.5))  # 15 simulated minutes
                deadline = time.monotonic() + 4
                while time.monotonic() < deadline:
                    frames.append(await recv_json(ws))
                return frames

        frames = run(scenario)
        dropped = sim.dropped("bitfinex")
    gaps = seq_gaps([f[-2] for f in frames])
    assert gaps, "the finals never sent took their numbers"
    minute_of = {f[-2]: f[1][0] for f in frames if isinstance(f[1], list) and isinstance(f[1][0], int)}
    assert set(dropped) == {"BTCUSD"} and len(dropped["BTCUSD"]) >= 5
    received = set(minute_of.values())
    assert len(dropped["BTCUSD"] & received) <= 1, "only the minute open when the feed froze had updates"


def test_a_bitfinex_snapshot_never_runs_ahead_of_the_stream() -> None:
    """With the feed behind the clock, a channel subscribed then gets the history as the stream
    stands: no bar of a minute later than the stamps of the frames after it, or a client that lost
    the snapshot would start its proof inside a minute whose data it never got."""
    with running_simulator(speed=60.0, updates_per_minute=2) as sim:

        async def scenario(session: aiohttp.ClientSession) -> list[Any]:
            async with session.ws_connect(bfx_url(sim)) as ws:
                await bfx_numbered_channel(ws, "BTCUSD")
                await off_loop(sim.stop_feed)
                stopped = (await off_loop(sim.clock))["current_minute_ms"]
                while (await off_loop(sim.clock))["current_minute_ms"] < stopped + 3 * MINUTE:
                    await asyncio.sleep(0.1)  # three simulated minutes pass without the feed
                await ws.send_json(subscribe_msg("ETHUSD"))
                subscribed, _ = await recv_until(
                    ws, lambda f: isinstance(f, dict) and f.get("event") == "subscribed"
                )
                frames = []
                while len(frames) < 3:
                    frame = await recv_json(ws, 3.0)
                    if frame[0] == subscribed["chanId"]:
                        frames.append(frame)
                return frames

        snapshot, *after = run(scenario)
        clock_minute = sim.clock()["now_ms"] // MINUTE
    newest_bar = max(bar[0] for bar in snapshot[1])
    stamps = [frame[-1] for frame in after]
    assert all(newest_bar <= stamp - stamp % MINUTE for stamp in stamps), (newest_bar, stamps)
    assert newest_bar < (clock_minute - 2) * MINUTE, "the clock ran on: the snapshot stopped with the feed"


# -------------------------------------------------------------------------------------- binance


def bn_url(sim: SimHandle, path: str) -> str:
    return sim.urls["binance"]["ws"] + path


def check_kline_event(event: dict[str, Any], symbol: str) -> None:
    assert set(event) == {"e", "E", "s", "k"} and event["e"] == "kline" and event["s"] == symbol
    assert isinstance(event["E"], int)
    k = event["k"]
    assert set(k) == {"t", "T", "s", "i", "f", "L", "o", "c", "h", "l", "v", "n", "x", "q", "V", "Q", "B"}
    for name in ("t", "T", "f", "L", "n"):
        assert isinstance(k[name], int) and not isinstance(k[name], bool), name
    assert k["T"] == k["t"] + MINUTE - 1 and k["t"] % MINUTE == 0
    assert k["s"] == symbol and k["i"] == "1m" and isinstance(k["x"], bool) and k["B"] == "0"
    for name in ("o", "c", "h", "l", "v", "q", "V", "Q"):
        assert isinstance(k[name], str) and FIXED8.match(k[name]), (name, k)
    if k["n"]:
        assert k["L"] - k["f"] + 1 == k["n"]
    assert Decimal(k["h"]) >= max(Decimal(k["o"]), Decimal(k["c"]))
    assert Decimal(k["l"]) <= min(Decimal(k["o"]), Decimal(k["c"]))


def test_binance_raw_stream_kline_fields_closed_flag_and_truth() -> None:
    with running_simulator(speed=60.0) as sim:

        async def scenario(session: aiohttp.ClientSession) -> list[Any]:
            async with session.ws_connect(bn_url(sim, "/ws/btcusdt@kline_1m")) as ws:
                events = []
                while sum(1 for e in events if e["k"]["x"]) < 2:
                    events.append(await recv_json(ws, 3.0))
                return events

        events = run(scenario)
        for event in events:
            check_kline_event(event, "BTCUSDT")
        assert any(not e["k"]["x"] for e in events), "in-progress updates carry x=false"
        finals = [e for e in events if e["k"]["x"]]
        for final in finals:
            k = final["k"]
            truth = sim.truth("binance", "BTCUSDT", k["t"], k["t"] + MINUTE)[0]
            assert [Decimal(k[n]) for n in ("o", "h", "l", "c", "v", "q")] == [
                Decimal(truth[n]) for n in ("open", "high", "low", "close", "volume", "quote_volume")
            ]
            assert k["n"] == truth["trades"] and final["E"] >= k["T"]
        open_updates = [e for e in events if not e["k"]["x"] and e["k"]["t"] == finals[-1]["k"]["t"]]
        for update in open_updates:
            assert update["k"]["o"] == finals[-1]["k"]["o"] and int(update["k"]["n"]) <= finals[-1]["k"]["n"]


def test_binance_combined_stream_wraps_payloads(sim: SimHandle) -> None:
    async def scenario(session: aiohttp.ClientSession) -> list[Any]:
        url = bn_url(sim, "/stream?streams=btcusdt@kline_1m/ethbtc@kline_1m/nopeusdt@kline_1m")
        async with session.ws_connect(url) as ws:
            frames = []
            while {f["stream"] for f in frames} != {"btcusdt@kline_1m", "ethbtc@kline_1m"} or len(frames) < 6:
                frames.append(await recv_json(ws))
            return frames

    frames = run(scenario)
    for frame in frames:
        assert set(frame) == {"stream", "data"}
        check_kline_event(frame["data"], frame["stream"].split("@")[0].upper())
    assert all(f["data"]["k"]["x"] for f in frames), "at 600x every push is a closed minute"


def test_binance_ws_path_that_is_no_stream_opens_a_socket_with_no_streams(sim: SimHandle) -> None:
    async def scenario(session: aiohttp.ClientSession) -> tuple[Any, Any, Any, Any]:
        async with session.ws_connect(bn_url(sim, "/ws/0")) as ws:
            await ws.send_json({"method": "LIST_SUBSCRIPTIONS", "id": 1})
            empty = await recv_json(ws)
            await ws.send_json({"method": "SUBSCRIBE", "params": ["btcusdt@kline_1m"], "id": 2})
            subscribed = await recv_json(ws)
            await ws.send_json({"method": "GET_PROPERTY", "params": ["combined"], "id": 3})
            combined = await recv_json(ws)
            kline, _ = await recv_until(ws, lambda f: f.get("e") == "kline")
            return empty, subscribed, combined, kline

    empty, subscribed, combined, kline = run(scenario)
    assert empty == {"result": [], "id": 1}, "nothing is streamed before SUBSCRIBE"
    assert subscribed == {"result": None, "id": 2}
    assert combined == {"result": False, "id": 3}, "a raw /ws/ socket"
    check_kline_event(kline, "BTCUSDT")


def test_binance_live_subscribe_unsubscribe_list_and_properties() -> None:
    # the incoming-message limit has its own test; here it would only make the client pace itself
    with running_simulator(binance_incoming_messages_per_second=1000) as sim:
        run(_subscribe_scenario(sim))


def _subscribe_scenario(sim: SimHandle) -> Callable[[aiohttp.ClientSession], Awaitable[None]]:
    async def scenario(session: aiohttp.ClientSession) -> None:
        async with session.ws_connect(bn_url(sim, "/ws")) as ws:
            unsubscribed = False
            after_unsubscribe: list[Any] = []

            async def call(message: dict[str, Any] | str) -> Any:
                if isinstance(message, str):
                    await ws.send_str(message)
                else:
                    await ws.send_json(message)
                reply, seen = await recv_until(ws, lambda f: "id" in f)
                if unsubscribed:
                    after_unsubscribe.extend(seen)
                return reply

            assert await call(
                {"method": "SUBSCRIBE", "params": ["ethbtc@kline_1m", "nopeusdt@kline_1m"], "id": 1}
            ) == {"result": None, "id": 1}
            assert await call({"method": "LIST_SUBSCRIPTIONS", "id": "list2"}) == {
                "result": ["ethbtc@kline_1m", "nopeusdt@kline_1m"],
                "id": "list2",
            }
            data, _ = await recv_until(ws, lambda f: f.get("e") == "kline")
            check_kline_event(data, "ETHBTC")
            assert await call({"method": "GET_PROPERTY", "params": ["combined"], "id": 3}) == {
                "result": False,
                "id": 3,
            }
            assert await call({"method": "SET_PROPERTY", "params": ["combined", True], "id": 4}) == {
                "result": None,
                "id": 4,
            }
            wrapped, _ = await recv_until(ws, lambda f: "stream" in f)
            assert wrapped["stream"] == "ethbtc@kline_1m" and wrapped["data"]["s"] == "ETHBTC"
            assert await call({"method": "UNSUBSCRIBE", "params": ["ethbtc@kline_1m"], "id": 5}) == {
                "result": None,
                "id": 5,
            }
            unsubscribed = True
            assert await call({"method": "LIST_SUBSCRIPTIONS", "id": 6}) == {
                "result": ["nopeusdt@kline_1m"],
                "id": 6,
            }
            bad_method = await call({"method": "SUBSCRIBEZ", "params": [], "id": 7})
            assert bad_method["id"] == 7 and bad_method["error"]["code"] == 2
            assert bad_method["error"]["msg"].startswith("Invalid request: unknown variant")
            bad_json = await call("{not json")
            assert bad_json["id"] is None and bad_json["error"]["code"] == 3
            bad_stream = await call({"method": "SUBSCRIBE", "params": ["BTC USDT"], "id": 8})
            assert bad_stream == {"error": {"code": 2, "msg": "Invalid request: invalid stream"}, "id": 8}
            bad_property = await call({"method": "SET_PROPERTY", "params": ["combined", "yes"], "id": 9})
            assert bad_property == {
                "error": {"code": 1, "msg": "Invalid value type: expected Boolean"},
                "id": 9,
            }
            assert not after_unsubscribe, "no data after unsubscribing"
            with pytest.raises(TimeoutError):
                await recv_json(ws, 0.7)

    return scenario


def test_binance_server_pings_and_pong_timeout() -> None:
    with running_simulator(binance_ping_seconds=0.5, binance_pong_timeout_seconds=1.2) as sim:

        async def scenario(session: aiohttp.ClientSession) -> None:
            async with session.ws_connect(bn_url(sim, "/ws/ethbtc@kline_1m"), autoping=False) as answering:
                pings = 0
                started = time.monotonic()
                while time.monotonic() - started < 2.5:
                    msg = await answering.receive(timeout=2)
                    if msg.type == aiohttp.WSMsgType.PING:
                        assert msg.data.isdigit(), "payload: the server's time"
                        await answering.pong(msg.data)
                        pings += 1
                    else:
                        assert msg.type == aiohttp.WSMsgType.TEXT
                assert pings >= 2 and not answering.closed
            async with session.ws_connect(bn_url(sim, "/ws/ethbtc@kline_1m"), autoping=False) as silent:
                started = time.monotonic()
                code = None
                while code is None:
                    msg = await silent.receive(timeout=10)
                    if msg.type == aiohttp.WSMsgType.CLOSE:
                        code = msg.data
                    else:
                        assert msg.type in (aiohttp.WSMsgType.PING, aiohttp.WSMsgType.TEXT), msg
                assert 1.2 <= time.monotonic() - started < 10 and code == 1008, "closed after 1.2 s"

        run(scenario)
        assert sim.stats()["binance"]["ws_closed_for_violation"] == 1


def test_binance_too_many_incoming_messages_closes_the_connection(sim: SimHandle) -> None:
    async def scenario(session: aiohttp.ClientSession) -> None:
        async with session.ws_connect(bn_url(sim, "/ws")) as ws:
            for i in range(8):
                await ws.send_json({"method": "LIST_SUBSCRIPTIONS", "id": i})
            code, replies = await close_frame(ws)
            assert code == 1008
            assert replies == [{"result": [], "id": i} for i in range(5)], (
                "the first five are answered, in order"
            )

    run(scenario)
    stats = sim.stats()["binance"]
    assert stats["ws_closed_for_violation"] == 1 and stats["over_limit"] == 1


def test_binance_too_many_streams_and_server_shutdown() -> None:
    with running_simulator(binance_streams_per_connection=2) as sim:

        async def scenario(session: aiohttp.ClientSession) -> None:
            async with session.get(
                bn_url(sim, "/stream?streams=a@kline_1m/b@kline_1m/c@kline_1m")
            ) as refused:
                assert refused.status == 400 and (await refused.json())["code"] == -1130
            async with session.ws_connect(bn_url(sim, "/stream?streams=btcusdt@kline_1m")) as ws:
                await ws.send_json(
                    {"method": "SUBSCRIBE", "params": ["ethbtc@kline_1m", "bnbusdt@kline_1m"], "id": 1}
                )
                reply, _ = await recv_until(ws, lambda f: "id" in f)
                assert reply["id"] == 1 and reply["error"]["code"] == 2
                await off_loop(lambda: sim.set_faults("binance", server_shutdown=True))
                shutdown, _ = await recv_until(ws, lambda f: f.get("stream") == "!serverShutdown")
                assert shutdown["data"]["e"] == "serverShutdown" and isinstance(shutdown["data"]["E"], int)
                code, after = await close_frame(ws)
                assert code == 1001 and not after

        run(scenario)


def test_drop_ws_fault_aborts_every_connection(sim: SimHandle) -> None:
    async def scenario(session: aiohttp.ClientSession) -> None:
        async with (
            session.ws_connect(bfx_url(sim)) as bitfinex,
            session.ws_connect(bn_url(sim, "/ws/btcusdt@kline_1m")) as binance,
        ):
            await recv_json(bitfinex)
            await recv_json(binance)
            await off_loop(lambda: sim.set_faults("all", drop_ws=True))
            for ws in (bitfinex, binance):
                msg = await ws.receive(timeout=3)
                while msg.type == aiohttp.WSMsgType.TEXT:
                    msg = await ws.receive(timeout=3)
                assert msg.type in (
                    aiohttp.WSMsgType.CLOSE,
                    aiohttp.WSMsgType.CLOSED,
                    aiohttp.WSMsgType.ERROR,
                )

    run(scenario)
    stats = sim.stats()
    assert stats["bitfinex"]["ws_dropped_by_fault"] == 1 and stats["binance"]["ws_dropped_by_fault"] == 1


def test_binance_lose_ws_closes_withholds_a_minutes_closing_update_and_lists_it() -> None:
    with running_simulator(speed=120.0, updates_per_minute=4) as sim:

        async def scenario(session: aiohttp.ClientSession) -> list[Any]:
            async with session.ws_connect(bn_url(sim, "/ws/btcusdt@kline_1m")) as ws:
                events = [await recv_json(ws)]
                await off_loop(lambda: sim.lose_closes(1))
                while sum(1 for e in events if e["k"]["x"]) < 3:
                    events.append(await recv_json(ws))
                return events

        events = run(scenario)
        dropped = sim.dropped("binance")
        closes = sim.dropped("binance", closes=True)
        withheld = sim.stats()["binance"]["ws_frames_withheld"]
    assert set(dropped) == {"BTCUSDT"} and closes == dropped
    (minute,) = dropped["BTCUSDT"]
    closed = {e["k"]["t"] for e in events if e["k"]["x"]}
    in_progress = {e["k"]["t"] for e in events if not e["k"]["x"]}
    assert minute in in_progress, "the minute was streamed while it ran"
    assert minute not in closed, "its closing update never came"
    assert minute + MINUTE in closed, "the next minute's did"
    assert withheld == 1
