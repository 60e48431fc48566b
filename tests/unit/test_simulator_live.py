"""The live feed: open / update / final events per subscribed market, driven by sim time."""

from __future__ import annotations

import pytest

from simulator.core import MINUTE_MS, CandleModel, MarketCatalog, SimClock
from simulator.live import CandleEvent, LiveFeed

pytestmark = pytest.mark.unit

START = 1_700_000_040_000


def _feed(updates: int = 3) -> LiveFeed:
    markets = MarketCatalog.load("binance", 5, seed=3) + MarketCatalog.load("bittrex", 5, seed=3)
    return LiveFeed(SimClock(60.0, START), CandleModel(3), markets, updates_per_minute=updates)


def test_events_follow_the_minute_and_final_equals_the_model() -> None:
    feed = _feed(updates=3)
    got: list[CandleEvent] = []
    feed.subscribe("binance", "BTCUSDT", got.append)
    for tick in [START, START + 20_000, START + 40_000, START + 60_000, START + 80_000]:
        feed.step(tick)
    kinds = [(e.kind, e.minute_ms) for e in got]
    assert kinds == [
        ("open", START),
        ("update", START),
        ("update", START),
        ("final", START),
        ("open", START + MINUTE_MS),
        ("update", START + MINUTE_MS),
    ]
    market = feed.market("binance", "BTCUSDT")
    assert got[3].candle == feed.model.final_candle(market, START)
    assert got[0].candle.trades == 0 and got[0].candle.open == got[0].candle.close
    assert got[1].candle == feed.model.partial_candle(market, START, START + 20_000)


def test_a_stall_still_yields_every_final_once_in_order() -> None:
    feed = _feed(updates=1)
    got: list[CandleEvent] = []
    feed.subscribe("bittrex", "BTC-USD", got.append)
    feed.step(START)
    feed.step(START + 3 * MINUTE_MS + 5)
    finals = [e.minute_ms for e in got if e.final]
    assert finals == [START, START + MINUTE_MS, START + 2 * MINUTE_MS]
    assert [e.minute_ms for e in got if e.kind == "open"] == [START, START + 3 * MINUTE_MS]


def test_a_stall_past_the_catch_up_says_which_minutes_got_no_final(caplog) -> None:
    """A final never sent reaches the servers as "missed" (to count as lost), and the feed warns."""
    feed = _feed(updates=1)
    got: list[CandleEvent] = []
    feed.subscribe("bittrex", "BTC-USD", got.append)
    feed.step(START)
    feed.step(START + 8 * MINUTE_MS + 5)
    finals = [e.minute_ms for e in got if e.final]
    assert finals == [START + m * MINUTE_MS for m in range(3, 8)]
    assert f"no final sent for minutes {START} .. {START + 2 * MINUTE_MS}" in caplog.text
    missed = [e for e in got if e.missed]
    assert [e.minute_ms for e in missed] == [START + m * MINUTE_MS for m in range(3)], "servers hear of them"
    market = feed.market("bittrex", "BTC-USD")
    assert all(e.candle == feed.model.final_candle(market, e.minute_ms) for e in missed)
    kinds = [e.kind for e in got if e.kind in ("missed", "final")]
    assert kinds == ["missed"] * 3 + ["final"] * 5, "in minute order"


def test_unsubscribed_and_unknown_markets() -> None:
    feed = _feed()
    got: list[CandleEvent] = []
    sub = feed.subscribe("binance", "ETHBTC", got.append)
    with pytest.raises(KeyError):
        feed.subscribe("binance", "NOPEUSDT", got.append)
    feed.step(START)
    sub.close()
    sub.close()
    feed.step(START + MINUTE_MS)
    assert len(got) == 1 and feed.subscriber_count() == 0


def test_a_failing_listener_does_not_stop_the_others() -> None:
    feed = _feed()
    got: list[CandleEvent] = []

    def broken(event: CandleEvent) -> None:
        raise RuntimeError("boom")

    feed.subscribe("binance", "ETHBTC", broken)
    feed.subscribe("binance", "ETHBTC", got.append)
    feed.step(START)
    feed.step(START + MINUTE_MS)
    assert [e.kind for e in got] == ["open", "final", "open"]
    assert feed.subscriber_count() == 1, "the broken listener is unsubscribed"


def test_frames_are_never_stamped_past_a_minute_whose_final_is_still_to_come() -> None:
    """A heartbeat timer firing before a late feed tick must not stamp the next minute's time."""
    feed = _feed(updates=1)
    feed.subscribe("binance", "BTCUSDT", lambda event: None)
    assert feed.stamp_ms(START + 5) == START + 5, "before the first tick nothing is owed"
    feed.step(START)
    assert feed.stamp_ms(START + 30_000) == START + 30_000
    late = START + MINUTE_MS + 2_000
    assert feed.stamp_ms(late) == START + MINUTE_MS - 1, "the final of START is not delivered yet"
    feed.step(late)
    assert feed.stamp_ms(late) == late


@pytest.mark.parametrize("minutes_late", [2, 3, 8])
def test_a_late_tick_stamps_each_final_within_its_own_minute(minutes_late: int) -> None:
    """Catching up several minutes at once, a frame sent with the final (or the lost final) of
    minute M is stamped inside M: never before the data it carries (a client takes a stamp as
    the server's time, and would vouch for M from a later frame stamped before M), and never
    past M's end while M's final is still being sent."""
    feed = _feed(updates=1)
    late = START + minutes_late * MINUTE_MS + 2_000
    stamped: list[tuple[str, int, int]] = []
    feed.subscribe("binance", "BTCUSDT", lambda e: stamped.append((e.kind, e.minute_ms, feed.stamp_ms(late))))
    feed.step(START)
    feed.step(late)
    closed = [(kind, minute, stamp) for kind, minute, stamp in stamped if kind in ("final", "missed")]
    assert [minute for _, minute, _ in closed] == [START + k * MINUTE_MS for k in range(minutes_late)]
    for kind, minute, stamp in closed:
        assert minute <= stamp <= minute + MINUTE_MS - 1, (kind, minute, stamp)


def test_a_trade_at_the_first_millisecond_waits_for_the_minutes_first_update() -> None:
    """The "open" is the bar before any trade, even when one is made at M + 0: a server sending
    only changed bars with one update a minute (a fast simulator) would otherwise send a
    minute's first trade as a bar of its own and then its final, two frames for one minute."""
    feed = _feed(updates=2)
    market = feed.market("binance", "BTCUSDT")
    assert market is not None
    minute = next(
        START + k * MINUTE_MS
        for k in range(200_000)
        if (trades := feed.model.trades(market, START + k * MINUTE_MS)) and trades[0].offset_ms == 0
    )
    got: list[CandleEvent] = []
    feed.subscribe("binance", "BTCUSDT", got.append)
    for tick in feed.tick_times(minute) + [minute + MINUTE_MS]:
        feed.step(tick)
    opened, update, final = got[:3]
    assert (opened.kind, update.kind, final.kind) == ("open", "update", "final")
    assert opened.candle.trades == 0 and opened.candle.volume == 0
    assert opened.candle.open == opened.candle.close == final.candle.open
    assert update.candle.trades >= 1, "the trade made at M + 0 comes with the first update"
    assert final.candle == feed.model.final_candle(market, minute)
