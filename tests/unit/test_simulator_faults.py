"""Fault bookkeeping without sockets: the `lose_ws_*` actions, the record of withheld minutes, and
the Bitfinex SEQ_ALL counter, which keeps counting the frames a fault withholds."""

from __future__ import annotations

import json
from typing import Any

import pytest

from simulator.bitfinex import FLAG_SEQ_ALL, BitfinexConnection, BitfinexServer, Channel
from simulator.config import SimConfig
from simulator.core import MINUTE_MS
from simulator.faults import MALFORMED_FRAME, FaultError, Faults, Withheld, requested_actions
from simulator.server import Simulator

pytestmark = pytest.mark.unit

START = 1_700_000_040_000


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "2", None])
def test_a_loss_needs_a_whole_number_of_frames(value: Any) -> None:
    with pytest.raises(FaultError, match="lose_ws_frames must be a whole number >= 1"):
        Faults().apply("binance", {"lose_ws_frames": value})
    with pytest.raises(ValueError, match="lose_ws_closes must be a whole number >= 1"):
        SimConfig(faults={"binance": {"lose_ws_closes": value}})


def test_losses_add_up_are_used_one_frame_at_a_time_and_reset_clears_them() -> None:
    faults = Faults()
    faults.apply("bittrex", {"lose_ws_frames": 2})
    assert faults["bittrex"].frames_to_lose == 0, "apply only checks an action; the server performs it"
    faults.lose("bittrex", "lose_ws_frames", 2)
    faults.lose("bittrex", "lose_ws_frames", 1)
    assert faults.as_dict()["bittrex"]["lose_ws_frames_left"] == 3
    assert [faults["bittrex"].lose_frame() for _ in range(4)] == [True, True, True, False]
    assert not faults["binance"].lose_frame(), "per exchange"
    faults.lose("binance", "lose_ws_closes", 5)
    faults.reset("binance")
    assert not faults["binance"].lose_close()
    with pytest.raises(FaultError):
        faults.lose("binance", "ws_stall", 1)


def test_requested_actions_ignore_false_and_null() -> None:
    settings = {"drop_ws": False, "ws_info": None, "lose_ws_frames": 2, "ws_stall": True}
    assert requested_actions(settings) == ["lose_ws_frames"]


def test_withheld_minutes_are_per_exchange_and_market_sorted_and_unique() -> None:
    withheld = Withheld()
    for minute in (START + MINUTE_MS, START, START + MINUTE_MS):
        withheld.add("binance", "ETHBTC", minute)
    withheld.add("binance", "BTCUSDT", START)
    assert withheld.of("binance") == {"BTCUSDT": [START], "ETHBTC": [START, START + MINUTE_MS]}
    assert withheld.of("bittrex") == {}


def test_start_up_losses_are_armed_and_only_where_the_exchange_has_them() -> None:
    sim = Simulator(SimConfig(markets=3, faults={"binance": {"lose_ws_closes": 2, "lose_ws_frames": 1}}))
    assert (sim.faults["binance"].closes_to_lose, sim.faults["binance"].frames_to_lose) == (2, 1)
    with pytest.raises(ValueError, match="bitfinex has no action 'lose_ws_closes'"):
        Simulator(SimConfig(markets=3, faults={"bitfinex": {"lose_ws_closes": 1}}))


# ------------------------------------------------------------------- Bitfinex SEQ_ALL under faults


class _NoSocket:
    closed = False


def _bitfinex_channel(sim: Simulator) -> tuple[BitfinexConnection, Channel]:
    server = next(s for s in sim.servers if isinstance(s, BitfinexServer))
    conn = BitfinexConnection(server, _NoSocket(), None)  # type: ignore[arg-type]
    conn.flags = FLAG_SEQ_ALL
    market = sim.markets["bitfinex"][0]
    channel = Channel(17, f"trade:1m:t{market.symbol}", market, pending=None)
    conn.channels[channel.chan_id] = channel
    return conn, channel


def test_bitfinex_seq_all_counts_frames_a_fault_withholds_and_records_their_minutes() -> None:
    sim = Simulator(SimConfig(markets=3))
    conn, channel = _bitfinex_channel(sim)
    candles = [sim.model.final_candle(channel.market, START + i * MINUTE_MS) for i in range(5)]

    def data(i: int) -> None:
        conn.send_channel(channel, f"[{i}]", (candles[i].time_ms,))

    data(0)  # 1
    sim.faults.apply("bitfinex", {"ws_stall": True})
    data(1)  # 2, withheld
    conn.send_channel(channel, '"hb"')  # 3, withheld
    sim.faults.reset("bitfinex")
    sim.faults.lose("bitfinex", "lose_ws_frames", 1)
    conn.send_channel(channel, '"hb"')  # 4: a heartbeat is no candle data, it is not lost
    data(2)  # 5, lost
    sim.faults.apply("bitfinex", {"ws_malformed_rate": 1.0})
    data(3)  # 6, mangled
    sim.faults.reset("bitfinex")
    data(4)  # 7

    sent = list(conn.writer.queue)
    assert sent[2] == MALFORMED_FRAME
    assert [json.loads(text) for i, text in enumerate(sent) if i != 2] == [
        [17, [0], 1],
        [17, "hb", 4],
        [17, [4], 7],
    ]
    symbol = channel.market.symbol
    assert sim.faults.withheld.of("bitfinex") == {symbol: [candles[i].time_ms for i in (1, 2, 3)]}
    assert sim.stats["bitfinex"].ws_frames_withheld == 3, "two withheld by the stall, one lost"


def test_bitfinex_frames_withheld_by_a_stall_count_as_sent_for_the_heartbeat_timer() -> None:
    sim = Simulator(SimConfig(markets=3))
    conn, channel = _bitfinex_channel(sim)
    channel.last_sent = 0.0
    sim.faults.apply("bitfinex", {"ws_stall": True})
    conn.send_channel(channel, '"hb"')
    assert channel.last_sent > 0.0, "else the next timer tick finds the heartbeat due again"
