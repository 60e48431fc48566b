"""The websocket halves of the adapters, with frames as the exchanges send them (docs/exchanges)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from common.candle import Market
from common.redis_records import (
    encode_bar,
    encode_waiting_bar,
    waiting_bar_values,
)
from fetchers.exchanges.base import WsAction, WsCandle, WsError, WsHeartbeat, WsInfo, WsSession
from fetchers.exchanges.binance import BinanceAdapter
from fetchers.exchanges.bitfinex import BitfinexAdapter
from fetchers.exchanges.bittrex import BittrexAdapter
from fetchers.ws.connection import Watchdog, plain_decimals
from fetchers.ws.stream import Shard, select_markets
from fetchers.ws.updater import Batch, check_batch, closed_times

pytestmark = pytest.mark.unit

BFX = BitfinexAdapter()
BN = BinanceAdapter()
BTX = BittrexAdapter()


def subscribed(session: WsSession, chan_id: int = 343351, symbol: str = "tBTCUSD") -> None:
    frame = {"event": "subscribed", "channel": "candles", "chanId": chan_id, "key": f"trade:1m:{symbol}"}
    assert BFX.parse_ws_frame(json.dumps(frame), session) == [WsHeartbeat()]


# ---- Bitfinex


def test_bitfinex_snapshot_then_update_keep_the_exact_number_text():
    session = WsSession()
    subscribed(session)
    snapshot = (
        "[343351,[[1574698320000,7379.785503,7383.8,7388.3,7379.785503,1.68829482],"
        "[1574698260000,7380,7381.1,7390.0,7378.5,1e-05]]]"
    )
    events = BFX.parse_ws_frame(snapshot, session)
    assert events == [
        WsCandle("tBTCUSD", 1574698260000, "7380", "7390.0", "7378.5", "7381.1", "1e-05", snapshot=True),
        WsCandle(
            "tBTCUSD",
            1574698320000,
            "7379.785503",
            "7388.3",
            "7379.785503",
            "7383.8",
            "1.68829482",
            snapshot=True,
        ),
    ]
    # SEQ_ALL and TIMESTAMP: the socket's message number, then the server's clock
    update = "[343351,[1574698320000,7379.785503,7384.1,7388.3,7379.785503,1.98829482],127,1574698331234]"
    assert BFX.parse_ws_frame(update, session) == [
        WsCandle(
            "tBTCUSD", 1574698320000, "7379.785503", "7388.3", "7379.785503", "7384.1", "1.98829482",
            sequence=127, server_ms=1574698331234,
        )
    ]  # fmt: skip
    assert BFX.parse_ws_frame('[343351,"hb",128,1574698346234]', session) == [
        WsHeartbeat("tBTCUSD", 128, 1574698346234)
    ]
    assert BFX.parse_ws_frame('[343351,"hb"]', session) == [WsHeartbeat("tBTCUSD")]
    snapshot_with_evidence = BFX.parse_ws_frame(snapshot[:-1] + ",1,1574698330000]", session)
    assert [(c.sequence, c.server_ms) for c in snapshot_with_evidence] == [(None, None), (1, 1574698330000)]


def test_bitfinex_channel_ids_belong_to_their_connection():
    first, second = WsSession(), WsSession()
    subscribed(first, 17, "tBTCUSD")
    subscribed(second, 17, "tETHUSD")
    frame = "[17,[1574698320000,1,2,3,0.5,4]]"
    assert BFX.parse_ws_frame(frame, first)[0].symbol == "tBTCUSD"
    assert BFX.parse_ws_frame(frame, second)[0].symbol == "tETHUSD"
    unknown, counted = BFX.parse_ws_frame("[99,[1574698320000,1,2,3,0.5,4],7,1574698330000]", first)
    assert isinstance(unknown, WsError) and counted == WsHeartbeat(None, 7, 1574698330000)


@pytest.mark.parametrize(
    "code, action",
    [
        (20051, WsAction.RECONNECT),
        (20060, WsAction.PAUSE),
        (20061, WsAction.RESUBSCRIBE),
        (20000, WsAction.NONE),
    ],
)
def test_bitfinex_info_codes_are_acted_on(code, action):
    frame = json.dumps({"event": "info", "code": code, "msg": "whatever the text says"})
    assert BFX.parse_ws_frame(frame, WsSession()) == [WsInfo(action, code, "whatever the text says")]


def test_bitfinex_greeting_in_maintenance_pauses():
    greeting = {"event": "info", "version": 2, "serverId": "083bd8d4", "platform": {"status": 0}}
    [info] = BFX.parse_ws_frame(json.dumps(greeting), WsSession())
    assert info.action is WsAction.PAUSE
    greeting["platform"]["status"] = 1
    assert BFX.parse_ws_frame(json.dumps(greeting), WsSession())[0].action is WsAction.NONE


def test_bitfinex_errors_name_the_market_and_dup_keeps_the_channel():
    session = WsSession()
    limit = {
        "event": "error",
        "msg": "subscribe: limit",
        "code": 10305,
        "channel": "candles",
        "key": "trade:1m:tXYZUSD",
    }
    assert BFX.parse_ws_frame(json.dumps(limit), session) == [WsError("10305", "subscribe: limit", "tXYZUSD")]
    dup = {**limit, "code": 10301, "msg": "subscribe: dup", "chanId": 722711}
    BFX.parse_ws_frame(json.dumps(dup), session)
    assert session.channels == {722711: "tXYZUSD"}


@pytest.mark.parametrize(
    "frame",
    [
        '{"event":"info","code":',
        "[343351,[1574698320000,1,2]]",
        '[343351,[1574698320000,"1",2,3,4,5]]',
        '"x"',
        "[1.5,1]",
    ],
)
def test_bitfinex_malformed_frames_raise_value_error(frame):
    session = WsSession()
    subscribed(session)
    with pytest.raises(ValueError):
        BFX.parse_ws_frame(frame, session)


def test_bitfinex_subscribe_and_unsubscribe_frames():
    market = Market("bitfinex", "AAVE", "USD", "tAAVE:USD")
    session = WsSession()
    assert [json.loads(f) for f in BFX.subscribe_frames([market], session)] == [
        {"event": "conf", "flags": 65536 + 32768},  # SEQ_ALL + TIMESTAMP: the evidence of every frame
        {"event": "subscribe", "channel": "candles", "key": "trade:1m:tAAVE:USD"},
    ]
    subscribed(session, 5, "tAAVE:USD")
    assert [json.loads(f) for f in BFX.unsubscribe_frames([market], session)] == [
        {"event": "unsubscribe", "chanId": 5}
    ]


# ---- Binance

KLINE = {
    "e": "kline",
    "E": 1700000102093,
    "s": "BTCUSDT",
    "k": {
        "t": 1700000040000,
        "T": 1700000099999,
        "s": "BTCUSDT",
        "i": "1m",
        "f": 3294830001,
        "L": 3294830512,
        "o": "37050.01000000",
        "c": "37062.50000000",
        "h": "37065.00000000",
        "l": "37049.00000000",
        "v": "12.34567000",
        "n": 512,
        "x": True,
        "q": "457321.12345678",
        "V": "6.12345000",
        "Q": "226789.12345678",
        "B": "0",
    },
}


def test_binance_combined_and_raw_klines():
    expected = WsCandle(
        "BTCUSDT", 1700000040000, "37050.01000000", "37065.00000000", "37049.00000000", "37062.50000000",
        "12.34567000", closed=True, server_ms=1700000102093,
    )  # fmt: skip
    combined = json.dumps({"stream": "btcusdt@kline_1m", "data": KLINE})
    assert BN.parse_ws_frame(combined, WsSession()) == [expected]
    open_bar = {**KLINE, "k": {**KLINE["k"], "x": False}}
    [raw] = BN.parse_ws_frame(json.dumps(open_bar), WsSession())
    assert raw.closed is False and raw.close == "37062.50000000"


def test_binance_control_frames():
    session = WsSession()
    assert BN.parse_ws_frame('{"result":null,"id":1}', session) == [WsHeartbeat()]
    error = '{"error":{"code":2,"msg":"Invalid request: invalid stream"},"id":2}'
    assert BN.parse_ws_frame(error, session) == [WsError("2", "Invalid request: invalid stream")]
    shutdown = '{"stream":"!serverShutdown","data":{"e":"serverShutdown","E":1770123456789}}'
    assert BN.parse_ws_frame(shutdown, session)[0].action is WsAction.RECONNECT


@pytest.mark.parametrize(
    "change",
    [{"o": 37050.01}, {"t": "1700000040000"}, {"c": None}],
)
def test_binance_malformed_klines_raise_value_error(change):
    bad = {**KLINE, "k": {**KLINE["k"], **change}}
    with pytest.raises(ValueError):
        BN.parse_ws_frame(json.dumps(bad), WsSession())
    with pytest.raises(ValueError):
        BN.parse_ws_frame('{"e":"kline","k":', WsSession())


def test_binance_subscribe_frames_use_lower_case_streams_in_chunks():
    markets = [Market("binance", f"C{i}", "USDT", f"C{i}USDT") for i in range(700)]
    frames = [json.loads(f) for f in BN.subscribe_frames(markets, WsSession())]
    assert [len(f["params"]) for f in frames] == [300, 300, 100]
    assert frames[0]["method"] == "SUBSCRIBE" and frames[0]["params"][0] == "c0usdt@kline_1m"
    assert [f["id"] for f in frames] == [1, 2, 3]


# ---- Bittrex

PUSH = (
    '{"C":"d-D56EFF76-B,0|nuz,0|nu0,29|","M":[{"H":"C3","M":"candle","A":["bcs9D4IwEIDh/3IzmPJp6IbK4KADFgc'
    "XU+EixEL5KBhC+O+2kwu33fPeLTBgN2KTI1DXi/zQgpr3H1S3uX5JARQO7GgnWQoWVI3CfuIGL+drxpKno7VAoTjQBQbFezXESmeXuI5NQtvx"
    'GXFoEFBCHvpUttjo6rk+2e+CKCJmtJfVu9xyIb9bnAs54FaYpBhrU8zSjVLh/S+rfuRNIZDNrRGWxqcE1h8="]}]}'
)


def test_bittrex_candle_push_is_decoded_exactly():
    assert BTX.parse_ws_frame(PUSH, WsSession()) == [
        WsCandle(
            "BTC-EUR",
            1623635700000,
            "32407.59900000",
            "32407.59900000",
            "32407.59900000",
            "32407.59900000",
            "0",
            sequence=23946,
        )
    ]


def test_bittrex_keepalives_heartbeats_and_replies():
    session = WsSession()
    assert BTX.parse_ws_frame("{}", session) == [WsHeartbeat()]
    assert BTX.parse_ws_frame('{"C":"d-D56EFF76-B,0|nuz,0|nu0,1","S":1,"M":[]}', session) == [WsHeartbeat()]
    heartbeat = '{"C":"x","M":[{"H":"C3","M":"heartbeat","A":[]}]}'
    assert BTX.parse_ws_frame(heartbeat, session) == [WsHeartbeat()]
    reply = json.dumps(
        {
            "R": [
                {"Success": True, "ErrorCode": None},
                {"Success": False, "ErrorCode": "MARKET_DOES_NOT_EXIST"},
            ],
            "I": "1",
        }
    )
    [error] = BTX.parse_ws_frame(reply, session)
    assert isinstance(error, WsError) and error.code == "MARKET_DOES_NOT_EXIST"
    failed = '{"I":"0","E":"There was an error invoking Hub method \'c3.Subscribe\'."}'
    assert isinstance(BTX.parse_ws_frame(failed, session)[0], WsError)


@pytest.mark.parametrize(
    "frame", [PUSH[: len(PUSH) // 2], '{"M":[{"H":"C3","M":"candle","A":["bm90IGRlZmxhdGU="]}]}']
)
def test_bittrex_malformed_pushes_raise_value_error(frame):
    with pytest.raises(ValueError):
        BTX.parse_ws_frame(frame, WsSession())


def test_bittrex_subscribe_invocations_include_the_heartbeat_stream():
    markets = [Market("bittrex", f"C{i}", "USD", f"C{i}-USD") for i in range(150)]
    frames = [json.loads(f) for f in BTX.subscribe_frames(markets, WsSession())]
    assert [f["I"] for f in frames] == [1, 2]
    assert frames[0]["H"] == "c3" and frames[0]["M"] == "Subscribe"
    streams = frames[0]["A"][0] + frames[1]["A"][0]
    assert streams[0] == "heartbeat" and streams[1] == "candle_C0-USD_MINUTE_1" and len(streams) == 151


# ---- planning, selection, closure


@pytest.mark.parametrize(
    "adapter, count, per_connection", [(BFX, 293, 25), (BN, 1695, 1024), (BTX, 909, 200)]
)
def test_plans_respect_the_per_connection_limits(adapter, count, per_connection):
    from common.settings import Settings

    markets = [Market(adapter.name, f"B{i}", "Q", f"S{i:04d}") for i in range(count)]
    limits = adapter.ws_limits(Settings(_env_file=None))
    plan = adapter.plan_ws_connections(markets, limits)
    assert len(plan) == -(-count // per_connection)
    assert all(len(group) <= per_connection for group in plan)
    assert sorted(m.symbol for group in plan for m in group) == sorted(m.symbol for m in markets)


def test_shards_split_the_trading_markets_without_overlap():
    markets = [Market("binance", f"B{i}", "Q", f"B{i}Q", i % 7 != 0) for i in range(100)]
    shares = [select_markets(markets, None, Shard(i, 3)) for i in range(3)]
    symbols = [m.symbol for share in shares for m in share]
    assert sorted(symbols) == sorted(m.symbol for m in markets if m.is_trading)
    assert select_markets(markets, ["b1/q"], Shard(0, 1)) == [markets[1]]
    with pytest.raises(ValueError):
        Shard.parse("2/2")


def test_closure_follows_the_exchange_clock_never_the_local_one():
    bars = {60_000: "{}", 120_000: "{}", 180_000: "{}"}
    assert closed_times(bars, 180_000) == [60_000, 120_000]  # older bars are closed by the newer one
    assert closed_times(bars, 299_999) == [60_000, 120_000]
    assert closed_times(bars, 300_000) == [60_000, 120_000, 180_000]  # the clock is two intervals past
    assert closed_times({180_000: '{"time":180000,"closed":true}'}, 0) == [180_000]  # the exchange says so
    assert closed_times({}, 10**13) == []
    assert closed_times({180_000: b'{"time":180000,"closed":true}'}, 0) == [180_000]  # as read from Redis


# ---- the updater's reading of stored bars, the fetcher's checks and watchdog


def test_stored_bars_are_read_exactly_in_the_sinks_shape_and_any_other_json():
    bar = (180_000, "37050.01000000", "37065.0", "1e-8", "37060.5", "0")
    public = encode_bar(bar)
    assert waiting_bar_values(180_000, public.encode()) == b"37050.01000000\t37065.0\t1e-8\t37060.5\t0"
    waiting = encode_waiting_bar(bar, closed=True)
    assert waiting_bar_values(180_000, waiting.encode()) == waiting_bar_values(180_000, public.encode())
    spaced = json.dumps(
        {"volume": "2", "time": 180_000, "open": "1", "high": "3", "low": "0.5", "close": "2"}
    )
    assert waiting_bar_values(180_000, spaced.encode()) == b"1\t3\t0.5\t2\t2"  # written by another client
    with pytest.raises(ValueError):
        waiting_bar_values(240_000, public.encode())  # a bar must belong to its field's minute
    with pytest.raises(ValueError):
        waiting_bar_values(180_000, public.replace('"37065.0"', "37065.0").encode())  # numbers, not text


@pytest.mark.parametrize("value", [b"1\t2\t3\t4", b"1\t2\t3\t4\t", b"1\t2\t3\t4\tNaN", b"1\t2\t\t4\t5"])
def test_a_batch_with_a_value_that_is_not_number_text_is_refused(value):
    batch = Batch(values=[b"1\t2\t0.5\t1.5\t9", value])
    with pytest.raises(ValueError, match="decimal number text"):
        check_batch(batch)
    check_batch(Batch(values=[b"1\t2\t0.5\t1.5\t9", b"1e-8\t2\t0.5\t1.5\t0"]))


def test_plain_decimals_takes_exchange_text_only():
    good = WsCandle("X", 0, "1.50", "2", "0.1", "1e-8", "0")
    assert plain_decimals(good)
    for bad in ("NaN", "1,5", "", "1\t2", "Infinity", ' 1"'):
        assert not plain_decimals(WsCandle("X", 0, "1", "2", bad, "1", "1"))


def test_the_watchdog_ends_a_silent_read_and_leaves_a_fed_one_and_outside_cancels_alone():
    async def silent() -> None:
        async with Watchdog(0.05):
            await asyncio.Event().wait()

    async def fed() -> str:
        async with Watchdog(0.05) as watchdog:
            watchdog.feed(time.perf_counter() + 3600)  # as if a frame had just arrived, for an hour
            await asyncio.sleep(0.2)
        return "done"

    async def cancelled_from_outside() -> None:
        task = asyncio.create_task(fed())
        await asyncio.sleep(0.01)
        task.cancel()
        await task

    with pytest.raises(TimeoutError):
        asyncio.run(silent())
    assert asyncio.run(fed()) == "done"
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(cancelled_from_outside())
