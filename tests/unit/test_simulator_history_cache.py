"""The optional day cache of final bars serves exactly what the model computes."""

from __future__ import annotations

import pytest

from simulator.core import MINUTE_MS, CandleModel, MarketCatalog, SimClock
from simulator.history import DAY_MS, History

pytestmark = pytest.mark.unit

NOW = 1_700_006_400_000 + 3 * DAY_MS + 17 * MINUTE_MS  # mid-day, 3 days after a day boundary


@pytest.mark.parametrize("exchange", ["bitfinex", "bittrex"])  # one with gaps, one without
def test_cached_days_equal_fresh_computation(exchange):
    clock = SimClock(speed=1e-9, start_ms=NOW)
    first = NOW - NOW % DAY_MS - 4 * DAY_MS
    plain = History(clock, CandleModel(3), first)
    cached = History(clock, CandleModel(3), first, cache_days=3)
    for market in MarketCatalog.load(exchange, 2, seed=3):
        for lo, hi in [
            (first + 5 * MINUTE_MS, first + DAY_MS + 9 * MINUTE_MS),  # across a day boundary
            (first + 2 * DAY_MS, NOW),  # up to the current minute
            (first + 30 * MINUTE_MS, first + 31 * MINUTE_MS),
        ]:  # served from the cache
            assert cached.minute_candles(market, lo, hi) == plain.minute_candles(market, lo, hi)
    assert len(cached._days) == 3, "the cache stays within its bound"
