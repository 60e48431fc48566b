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


def test_kept_traded_bars_extended_by_later_minutes_equal_a_fresh_scan():
    """Bitfinex snapshots reuse the last answer per market: asked again minutes later (a reconnect
    storm), or for fewer bars, or for an earlier minute, they equal a scan from scratch."""
    clock = SimClock(speed=1e-9, start_ms=NOW)
    first = NOW - 2 * DAY_MS
    kept = History(clock, CandleModel(5), first)
    fresh_model = CandleModel(5)
    markets = MarketCatalog.load("bitfinex", 12, seed=5)
    illiquid = min(markets, key=lambda m: m.trade_probability if m.trade_probability else 2)
    assert illiquid.trade_probability < 0.5, "a market with many quiet minutes between its bars"
    for market in [markets[0], illiquid]:
        for before, count in [
            (NOW - 90 * MINUTE_MS, 240),
            (NOW - 89 * MINUTE_MS, 240),  # one minute on
            (NOW - 40 * MINUTE_MS, 240),  # many minutes on
            (NOW - 40 * MINUTE_MS, 30),  # fewer bars
            (NOW - 20 * MINUTE_MS, 240),  # more bars than kept: scanned again
            (NOW - 300 * MINUTE_MS, 240),  # earlier than kept
            (first + 50 * MINUTE_MS, 240),  # fewer traded minutes than asked since the history began
        ]:
            fresh = History(clock, fresh_model, first)
            expected = [
                c for c in fresh.minute_candles(market, first, before - MINUTE_MS, now_ms=before) if c.trades
            ][-count:]
            assert kept.traded_before(market, before, count) == expected, (market.symbol, before, count)
