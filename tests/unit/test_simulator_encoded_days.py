"""Bittrex's kept minute days serve exactly what encoding the history's bars anew would."""

from __future__ import annotations

import pytest

from simulator.core import MINUTE_MS, CandleModel, MarketCatalog, SimClock
from simulator.encoded_days import EncodedDays
from simulator.history import DAY_MS, History
from simulator.wire import bittrex_candle, dumps

pytestmark = pytest.mark.unit

DAY = 1_700_006_400_000 - 1_700_006_400_000 % DAY_MS + 5 * DAY_MS


class SetClock(SimClock):
    """A clock that stands where the test puts it."""

    def __init__(self, at_ms: int) -> None:
        super().__init__(speed=1.0, start_ms=at_ms)
        self.at_ms = at_ms

    def now_ms(self) -> int:
        return self.at_ms


def fresh_text(history: History, market, lo: int, hi: int) -> str:
    bars = history.minute_candles(market, lo, hi, include_current=False)
    return ",".join(dumps(bittrex_candle(bar)) for bar in bars)


@pytest.mark.parametrize("first_ms", [DAY - 2 * DAY_MS, DAY - DAY_MS + 333 * MINUTE_MS])
def test_kept_days_equal_fresh_encoding_as_the_clock_moves(first_ms):
    """Windows across day boundaries, before the history's first minute, up to and past the last
    closed minute, asked again after the clock moved on (the kept day grows), and after eviction."""
    clock = SetClock(DAY + 7 * 60 * MINUTE_MS + 20_000)
    history = History(clock, CandleModel(11), first_ms)
    kept = EncodedDays(history, lambda bar: dumps(bittrex_candle(bar)), days_kept=7)
    markets = MarketCatalog.load("bittrex", 3, seed=11)

    def windows():
        now = clock.now_ms() - clock.now_ms() % MINUTE_MS
        return [
            (now - DAY_MS + MINUTE_MS, now),  # `recent`: yesterday's tail and today so far
            (DAY - DAY_MS, DAY - MINUTE_MS),  # yesterday, whole
            (first_ms - 90 * MINUTE_MS, first_ms + 5 * MINUTE_MS),  # begins before the history
            (now - 3 * MINUTE_MS, now - 3 * MINUTE_MS),  # one minute
            (now + MINUTE_MS, now + 9 * MINUTE_MS),  # nothing closed yet
        ]

    for step in [0, 1, 37, 24 * 60]:  # minutes the clock moves on between rounds
        clock.at_ms += step * MINUTE_MS
        for market in markets:
            for lo, hi in windows():
                assert kept.closed_text(market, lo, hi) == fresh_text(history, market, lo, hi), (
                    market.symbol,
                    step,
                    lo,
                    hi,
                )
        assert len(kept._days) <= 7, "the kept days stay within their bound"


def test_a_kept_day_grows_by_the_minutes_asked_for_since():
    """Each minute is worked out once: asked again a minute later, only the new minute is; asked
    for earlier minutes of the day, only those."""
    clock = SetClock(DAY + 600 * MINUTE_MS)
    history = History(clock, CandleModel(4), DAY - DAY_MS)
    encoded: list[int] = []
    kept = EncodedDays(history, lambda bar: encoded.append(bar.time_ms) or dumps(bittrex_candle(bar)), 4)
    market = MarketCatalog.load("bittrex", 1, seed=4)[0]
    kept.closed_text(market, DAY + 300 * MINUTE_MS, DAY + DAY_MS)
    assert encoded == [DAY + k * MINUTE_MS for k in range(300, 600)]
    clock.at_ms += MINUTE_MS
    kept.closed_text(market, DAY + 300 * MINUTE_MS, DAY + DAY_MS)
    assert encoded[300:] == [DAY + 600 * MINUTE_MS]
    text = kept.closed_text(market, DAY, DAY + DAY_MS)
    assert sorted(encoded[301:]) == [DAY + k * MINUTE_MS for k in range(300)]
    assert text == fresh_text(history, market, DAY, DAY + DAY_MS)
