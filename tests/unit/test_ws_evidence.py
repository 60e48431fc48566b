"""Which live minutes each exchange's own evidence proves complete (pure: real frames, parsed by the
adapters, fed to each exchange's rule), and the records the coverage task makes of them."""

from __future__ import annotations

import base64
import json
import zlib
from dataclasses import dataclass, field

import pytest

from common.redis_records import encode_record
from common.settings import Settings
from fetchers.exchanges import get_adapter
from fetchers.exchanges.base import WsSession
from fetchers.exchanges.evidence import MinuteSpan, WsEvidence
from fetchers.ws.coverage import take_records
from fetchers.ws.sink import MarketKeys
from fetchers.ws.updater import split_coverage

pytestmark = pytest.mark.unit

M = 60_000
T0 = 1_700_000_040_000  # a minute boundary
HEARTBEAT_SECONDS = 15.0


def minute(n: float) -> int:
    return int(T0 + n * M)


def spans(found: list[MinuteSpan]) -> set[tuple]:
    """(symbol, first minute, end minute[, reason words]) relative to T0."""
    return {
        (s.symbol, (s.start_ms - T0) // M, (s.end_ms - T0) // M) + ((s.reason,) if s.reason else ())
        for s in found
    }


@dataclass
class Feed:
    """One connection of one exchange: frames in, evidence out."""

    exchange: str
    symbols: list[str]
    session: WsSession = field(default_factory=WsSession)
    now: float = 1000.0

    def __post_init__(self) -> None:
        self.adapter = get_adapter(self.exchange)
        limits = self.adapter.ws_limits(
            Settings(**{f"{self.exchange}_ws_heartbeat_seconds": HEARTBEAT_SECONDS})
        )
        self.evidence: WsEvidence = self.adapter.ws_evidence(self.symbols, limits)

    def frame(self, text: str, after_seconds: float = 1.0) -> None:
        self.now += after_seconds
        for event in self.adapter.parse_ws_frame(text, self.session):
            self.evidence.observe(event, self.now)

    def take(self, until: float = 10_000) -> tuple[set, set]:
        proven, outages = self.evidence.take(minute(until))
        return spans(proven), {o[:3] for o in spans(outages)}


# ---- Binance: the closing update


def kline(symbol: str, start: float, sent: float, closed: bool, close: str = "1.5") -> str:
    k = {
        "t": minute(start),
        "T": minute(start + 1) - 1,
        "s": symbol,
        "i": "1m",
        "o": "1.0",
        "c": close,
        "h": "2.0",
        "l": "0.5",
        "v": "12.5",
        "n": 3,
        "x": closed,
        "q": "1",
        "V": "0",
        "Q": "0",
        "B": "0",
    }
    data = {"e": "kline", "E": minute(sent), "s": symbol, "k": k}
    return json.dumps({"stream": f"{symbol.lower()}@kline_1m", "data": data})


def test_binance_proves_a_minute_by_its_close_from_the_first_minute_after_the_first_frame():
    feed = Feed("binance", ["BTCUSDT"])
    feed.frame(kline("BTCUSDT", 0, 0.5, False))  # mid-minute 0: minute 0 began before the socket was whole
    feed.frame(kline("BTCUSDT", 0, 1, True))
    feed.frame(kline("BTCUSDT", 1, 1.5, False))
    assert feed.take() == (set(), set())
    for m in (1, 2, 3):
        feed.frame(kline("BTCUSDT", m, m + 1, True))
    assert feed.take() == ({("BTCUSDT", 1, 4)}, set())


def test_binance_a_missing_close_is_an_outage_of_that_minute_only():
    feed = Feed("binance", ["BTCUSDT", "ETHUSDT"])
    for symbol in ("BTCUSDT", "ETHUSDT"):
        feed.frame(kline(symbol, 0, 0.5, False))
    for m in (1, 2, 3, 4):
        feed.frame(kline("ETHUSDT", m, m + 1, True))
        if m != 2:  # BTC's close of minute 2 never arrives; later minutes still update it
            feed.frame(kline("BTCUSDT", m, m + 1, True))
    proven, outages = feed.take()
    assert proven == {("BTCUSDT", 1, 2), ("BTCUSDT", 3, 5), ("ETHUSDT", 1, 5)}
    assert outages == {("BTCUSDT", 2, 3)}
    assert feed.evidence.open_outages() == 0


def test_binance_coverage_waits_for_the_updater_to_close_its_bars():
    feed = Feed("binance", ["BTCUSDT"])
    feed.frame(kline("BTCUSDT", 0, 0.2, False))
    for m in range(1, 6):
        feed.frame(kline("BTCUSDT", m, m + 1, True))
    assert feed.take(until=3) == ({("BTCUSDT", 1, 3)}, set())
    assert feed.take(until=3) == (set(), set())
    assert feed.take(until=9) == ({("BTCUSDT", 3, 6)}, set())


def test_a_reconnect_ends_every_run_and_the_minutes_until_proof_restarts_are_an_outage():
    feed = Feed("binance", ["BTCUSDT", "ETHUSDT"])
    for symbol in ("BTCUSDT", "ETHUSDT"):
        feed.frame(kline(symbol, 0, 0.5, False))
        feed.frame(kline(symbol, 1, 2, True))
    feed.evidence.restart("connection lost: test")
    assert feed.evidence.open_outages() == 2
    feed.frame(kline("BTCUSDT", 4, 4.5, False))  # the new socket's first frame, mid-minute 4
    feed.frame(kline("BTCUSDT", 4, 5, True))  # minute 4 began before: not proven
    feed.frame(kline("BTCUSDT", 5, 6, True))
    proven, outages = feed.take()
    assert proven == {("BTCUSDT", 1, 2), ("BTCUSDT", 5, 6), ("ETHUSDT", 1, 2)}
    assert outages == {("BTCUSDT", 2, 5)}
    assert feed.evidence.open_outages() == 1  # ETH has not been heard again


def test_the_previous_run_of_the_fetcher_opens_an_outage_that_the_first_proof_closes():
    feed = Feed("binance", ["BTCUSDT"])
    feed.evidence.outage_since(minute(-3), "fetcher stopped")
    feed.frame(kline("BTCUSDT", 0, 0.5, False))
    _, outages = feed.evidence.take(minute(100))
    assert spans(outages) == {("BTCUSDT", -3, 1, "fetcher stopped")}


def test_a_bar_that_could_not_be_kept_ends_its_market_run():
    feed = Feed("binance", ["BTCUSDT"])
    feed.frame(kline("BTCUSDT", 0, 0.5, False))
    feed.frame(kline("BTCUSDT", 1, 2, True))
    feed.evidence.market_lost("BTCUSDT", "not a plain decimal")
    feed.frame(kline("BTCUSDT", 2, 3, True))
    feed.frame(kline("BTCUSDT", 3, 4, True))
    proven, outages = feed.take()
    assert proven == {("BTCUSDT", 1, 2), ("BTCUSDT", 3, 4)}
    assert outages == {("BTCUSDT", 2, 3)}


# ---- Bittrex: the stream's sequence


def bittrex_push(*entries: tuple[str, int, float, str]) -> str:
    """One SignalR frame of candle entries (symbol, sequence, minute, close)."""

    def encode(symbol: str, sequence: int, start: float, close: str) -> str:
        starts = f"2023-11-14T22:{int(start) + 14:02d}:00Z"  # T0 is 2023-11-14T22:14:00Z
        payload = {
            "sequence": sequence,
            "marketSymbol": symbol,
            "interval": "MINUTE_1",
            "delta": {
                "startsAt": starts,
                "open": "1.0",
                "high": "2.0",
                "low": "0.5",
                "close": close,
                "volume": "3.1",
                "quoteVolume": "3.0",
            },
            "candleType": "TRADE",
        }
        raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        packed = raw.compress(json.dumps(payload).encode()) + raw.flush()
        return base64.b64encode(packed).decode()

    pushes = [{"H": "C3", "M": "candle", "A": [encode(*entry)]} for entry in entries]
    return json.dumps({"C": "d-5C1A-B,0|Ab,0|Ac,1", "M": pushes})


def test_bittrex_contiguous_numbers_prove_the_minutes_between_their_messages():
    feed = Feed("bittrex", ["BTC-USD", "ETH-USD"])
    feed.frame(bittrex_push(("BTC-USD", 100, 0, "1.1"), ("ETH-USD", 7, 0, "9")))
    feed.frame(bittrex_push(("BTC-USD", 101, 0, "1.2")))
    feed.frame(bittrex_push(("BTC-USD", 102, 1, "1.2"), ("ETH-USD", 8, 1, "9")))
    feed.frame(bittrex_push(("BTC-USD", 103, 2, "1.3"), ("ETH-USD", 9, 2, "9")))
    feed.frame(bittrex_push(("BTC-USD", 104, 3, "1.3"), ("ETH-USD", 10, 3, "9")))
    assert feed.take() == ({("BTC-USD", 1, 3), ("ETH-USD", 1, 3)}, set())


def test_bittrex_a_jump_is_an_outage_of_that_market_from_its_proof_to_the_message_after():
    feed = Feed("bittrex", ["BTC-USD", "ETH-USD"])
    feed.frame(bittrex_push(("BTC-USD", 100, 0, "1"), ("ETH-USD", 7, 0, "9")))
    for m in (1, 2, 3):
        feed.frame(bittrex_push(("BTC-USD", 100 + m, m, "1"), ("ETH-USD", 7 + m, m, "9")))
    # BTC's 104 and 105 (minute 3's last update, minute 4's placeholder) were lost
    feed.frame(bittrex_push(("BTC-USD", 106, 4, "1.4"), ("ETH-USD", 11, 4, "9")))
    for m in (5, 6, 7):
        feed.frame(bittrex_push(("BTC-USD", 102 + m, m, "1"), ("ETH-USD", 7 + m, m, "9")))
    proven, outages = feed.take()
    assert proven == {("BTC-USD", 1, 3), ("BTC-USD", 5, 7), ("ETH-USD", 1, 7)}
    assert outages == {("BTC-USD", 3, 5)}


def test_bittrex_numbers_start_over_on_a_new_socket():
    feed = Feed("bittrex", ["BTC-USD"])
    for m in range(4):
        feed.frame(bittrex_push(("BTC-USD", 100 + m, m, "1")))
    feed.evidence.restart("connection lost: test")
    for m in range(6, 9):
        feed.frame(bittrex_push(("BTC-USD", 500 + m, m, "1")))
    proven, outages = feed.take()
    assert proven == {("BTC-USD", 1, 3), ("BTC-USD", 7, 8)}
    assert outages == {("BTC-USD", 3, 7)}


# ---- Bitfinex: the socket's sequence and the channel's heartbeats


def bitfinex_subscribed(feed: Feed, chan_id: int, symbol: str) -> None:
    frame = {"event": "subscribed", "channel": "candles", "chanId": chan_id, "key": f"trade:1m:{symbol}"}
    feed.frame(json.dumps(frame), 0.01)


@dataclass
class BitfinexSocket:
    feed: Feed
    seq: int = 0

    def send(self, chan_id: int, payload: str, at_minute: float, after_seconds: float = 1.0) -> None:
        self.seq += 1
        self.feed.frame(f"[{chan_id},{payload},{self.seq},{minute(at_minute)}]", after_seconds)

    def candle(self, chan_id: int, start: float, at_minute: float, after_seconds: float = 1.0) -> None:
        self.send(chan_id, f"[{minute(start)},1.0,1.5,2.0,0.5,3.25]", at_minute, after_seconds)

    def lose(self, frames: int = 1) -> None:
        self.seq += frames


def bitfinex(symbols: dict[int, str]) -> BitfinexSocket:
    feed = Feed("bitfinex", list(symbols.values()))
    for chan_id, symbol in symbols.items():
        bitfinex_subscribed(feed, chan_id, symbol)
    return BitfinexSocket(feed)


def test_bitfinex_subscribes_with_sequence_numbers_and_server_times():
    frames = get_adapter("bitfinex").subscribe_frames([], WsSession())
    assert json.loads(frames[0]) == {"event": "conf", "flags": 65536 + 32768}


def test_bitfinex_quiet_minutes_are_proven_by_contiguous_numbers_and_heartbeats():
    socket = bitfinex({1: "tBTCUSD", 2: "tQUIETUSD"})
    socket.send(1, "[]", 0.1)  # empty snapshot
    socket.send(2, "[]", 0.1)
    for m in range(1, 6):  # BTC trades every minute; the quiet market only beats, every 15 s
        socket.candle(1, m, m + 0.5, after_seconds=5)
        if m % 2 == 0:
            socket.send(2, '"hb"', m + 0.6, after_seconds=5)
    proven, outages = socket.feed.take()
    assert proven == {("tBTCUSD", 1, 5), ("tQUIETUSD", 1, 4)}
    assert outages == set()


def test_bitfinex_a_number_jump_ends_every_run_of_the_socket():
    socket = bitfinex({1: "tBTCUSD", 2: "tETHUSD"})
    for m in range(0, 4):
        socket.candle(1, m, m + 0.5)
        socket.candle(2, m, m + 0.5)
    socket.lose()
    for m in range(4, 8):
        socket.candle(1, m, m + 0.5)
        socket.candle(2, m, m + 0.5)
    proven, outages = socket.feed.take()
    assert proven == {("tBTCUSD", 1, 3), ("tETHUSD", 1, 3), ("tBTCUSD", 5, 7), ("tETHUSD", 5, 7)}
    assert outages == {("tBTCUSD", 3, 5), ("tETHUSD", 3, 5)}


def test_bitfinex_a_run_never_starts_at_a_minute_whose_bar_its_first_frame_carries():
    """A server catching up sends the finals of several minutes at once; should it stamp them with
    an earlier time than their bars, the first frame after a jump still vouches for none of its own
    bar: an earlier update of that minute may be the frame that was lost."""
    socket = bitfinex({1: "tBTCUSD", 2: "tETHUSD"})
    for m in range(0, 3):
        socket.candle(1, m, m + 0.5)
        socket.candle(2, m, m + 0.5)
    socket.candle(1, 3, 3.9)
    socket.lose()  # ETH's bar of minute 4, sent with a stamp of minute 3
    socket.candle(1, 4, 3.99)
    socket.candle(2, 5, 3.99)  # ETH's bar of minute 5, stamped inside minute 3
    for m in range(6, 9):
        socket.candle(1, m, m + 0.5)
        socket.candle(2, m, m + 0.5)
    proven, outages = socket.feed.take()
    assert ("tETHUSD", 2, 6) in outages, "ETH's minutes 4 and 5 are not vouched for"
    assert proven == {("tBTCUSD", 1, 3), ("tETHUSD", 1, 2), ("tBTCUSD", 5, 8), ("tETHUSD", 6, 8)}


def test_bitfinex_a_channel_silent_past_its_heartbeat_ends_its_own_run():
    socket = bitfinex({1: "tBTCUSD", 2: "tETHUSD"})
    for m in range(0, 3):
        socket.candle(1, m, m + 0.5, after_seconds=10)
        socket.candle(2, m, m + 0.5, after_seconds=1)
    for m in range(3, 6):  # ETH says nothing for 30 s while BTC trades: the server lost track of it
        socket.candle(1, m, m + 0.5, after_seconds=10)
    for m in range(6, 9):
        socket.candle(1, m, m + 0.5, after_seconds=10)
        socket.candle(2, m, m + 0.5, after_seconds=1)
    proven, outages = socket.feed.take()
    assert proven == {("tBTCUSD", 1, 8), ("tETHUSD", 1, 2), ("tETHUSD", 7, 8)}
    assert outages == {("tETHUSD", 2, 7)}


def test_bitfinex_a_frame_of_a_channel_no_longer_followed_still_counts_in_the_sequence():
    socket = bitfinex({1: "tBTCUSD"})
    for m in range(0, 3):
        socket.candle(1, m, m + 0.5)
    socket.candle(99, 3, 3.5)  # e.g. a channel unsubscribed a moment ago
    for m in range(3, 6):
        socket.candle(1, m, m + 0.5)
    assert socket.feed.take() == ({("tBTCUSD", 1, 5)}, set())


def test_bitfinex_beats_during_a_maintenance_pause_prove_nothing():
    """20060 pauses data until 20061 while the channels keep beating with contiguous numbers: the
    trades of those minutes were never sent, so proof starts again only after the resubscription."""
    socket = bitfinex({1: "tBTCUSD"})
    for m in range(0, 3):
        socket.candle(1, m, m + 0.5)
    socket.feed.evidence.pause("maintenance (20060)")
    for m in range(3, 7):
        socket.send(1, '"hb"', m + 0.5)
    socket.feed.evidence.restart("resubscribed after maintenance (20061)")
    for m in range(7, 10):
        socket.candle(1, m, m + 0.5)
    proven, outages = socket.feed.take()
    assert proven == {("tBTCUSD", 1, 2), ("tBTCUSD", 8, 9)}
    assert outages == {("tBTCUSD", 2, 8)}


def test_bitfinex_without_sequence_numbers_nothing_is_proven():
    feed = Feed("bitfinex", ["tBTCUSD"])
    bitfinex_subscribed(feed, 1, "tBTCUSD")
    for m in range(5):
        feed.frame(f"[1,[{minute(m)},1,1,1,1,1]]")
    assert feed.take() == (set(), set())


# ---- the records the updater stores


def test_the_coverage_task_keeps_proof_behind_the_clock_and_the_updater_tells_the_records_apart():
    @dataclass(eq=False)
    class Conn:
        name: str
        evidence: WsEvidence
        markets: dict

    feed = Feed("binance", ["BTCUSDT"])
    feed.frame(kline("BTCUSDT", 0, 0.5, False))
    for m in range(1, 6):
        feed.frame(kline("BTCUSDT", m, m + 1, True))
    feed.evidence.market_lost("BTCUSDT", "test")
    feed.frame(kline("BTCUSDT", 8, 9, True))
    conn = Conn(
        "binance#0", feed.evidence, {"BTCUSDT": MarketKeys.build("binance", "BTC", "USDT", "BTCUSDT", ";;")}
    )
    records = take_records([conn], minute(5) + 30_000)  # the fetcher's newest bar: minute 5
    outages, covered = split_coverage(map(encode_record, records))  # as they cross Redis
    assert [o.start_ms for o in outages] == [minute(6)]
    assert [(c.start_ms, c.end_ms, c.source) for c in covered] == [(minute(1), minute(4), "ws")]
