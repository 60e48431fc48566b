"""The simulator's candle model: deterministic, continuous, exact, and partial bars converge."""

from __future__ import annotations

from decimal import Decimal
from itertools import pairwise
from types import SimpleNamespace

import pytest

import simulator.core
from simulator.core import MINUTE_MS, CandleModel, MarketCatalog, SimClock

pytestmark = pytest.mark.unit

START = 1_700_000_040_000


def _markets(exchange: str, limit: int = 12) -> list:
    return MarketCatalog.load(exchange, limit, seed=7)


@pytest.mark.parametrize("exchange", ["bitfinex", "binance", "bittrex"])
def test_same_seed_same_candles_in_a_fresh_model(exchange: str) -> None:
    first, second = CandleModel(7), CandleModel(7)
    for market in _markets(exchange):
        a = list(first.candles(market, START, START + 30 * MINUTE_MS))
        b = [second.final_candle(market, START + i * MINUTE_MS) for i in range(31)]
        assert a == b


def test_another_seed_gives_other_candles() -> None:
    market = _markets("binance")[0]
    assert list(CandleModel(1).candles(market, START, START + 10 * MINUTE_MS)) != list(
        CandleModel(2).candles(market, START, START + 10 * MINUTE_MS)
    )


@pytest.mark.parametrize("exchange", ["bitfinex", "binance", "bittrex"])
def test_open_is_previous_close_and_quiet_minutes_are_flat(exchange: str) -> None:
    model = CandleModel(7)
    saw_quiet = False
    for market in _markets(exchange):
        candles = list(model.candles(market, START, START + 120 * MINUTE_MS))
        for previous, current in pairwise(candles):
            assert current.open == previous.close
            assert current.time_ms == previous.time_ms + MINUTE_MS
        for candle in candles:
            assert (
                candle.low <= min(candle.open, candle.close) <= max(candle.open, candle.close) <= candle.high
            )
            if candle.trades == 0:
                saw_quiet = True
                assert candle.open == candle.high == candle.low == candle.close
                assert candle.volume == 0 and candle.quote_volume == 0
            else:
                assert candle.volume > 0
    assert saw_quiet, "the liquidity mix should produce some minutes without trades"


def test_prices_are_exact_decimals_quantized_to_the_market() -> None:
    model = CandleModel(7)
    for exchange in ("bitfinex", "binance", "bittrex"):
        for market in _markets(exchange):
            candle = model.final_candle(market, START)
            for value in (candle.open, candle.high, candle.low, candle.close):
                assert isinstance(value, Decimal) and value > 0
                assert value == value.quantize(Decimal(1).scaleb(-market.price_decimals))
            assert candle.volume == candle.volume.quantize(Decimal(1).scaleb(-market.volume_decimals))


def test_partial_candles_grow_into_the_final_one() -> None:
    model = CandleModel(7)
    market = next(m for m in _markets("binance") if m.symbol == "BTCUSDT")
    minute = START + 5 * MINUTE_MS
    final = model.final_candle(market, minute)
    assert final.trades > 1
    volumes = []
    for upto in range(minute, minute + MINUTE_MS, 5_000):
        partial = model.partial_candle(market, minute, upto)
        assert partial.open == final.open and partial.time_ms == minute
        assert partial.trades <= final.trades
        volumes.append(partial.volume)
    assert volumes == sorted(volumes)
    assert model.partial_candle(market, minute, minute + MINUTE_MS) == final


def test_subset_starts_with_majors_and_awkward_symbols() -> None:
    binance = {m.symbol for m in MarketCatalog.load("binance", 6, seed=1)}
    bitfinex = {m.symbol for m in MarketCatalog.load("bitfinex", 6, seed=1)}
    bittrex = {m.symbol for m in MarketCatalog.load("bittrex", 6, seed=1)}
    assert {"BTCUSDT", "1INCHUSDT"} <= binance
    assert {"BTCUSD", "AAVE:USD"} <= bitfinex
    assert {"BTC-USD", "1INCH-BTC"} <= bittrex
    assert MarketCatalog.load("binance", 40, seed=1) == MarketCatalog.load("binance", 40, seed=1)
    assert len(MarketCatalog.load("binance")) == 1695


def test_clock_runs_at_speed_from_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    real = SimpleNamespace(monotonic=lambda: 100.0, time=lambda: 1_700_000_059.999)
    monkeypatch.setattr(simulator.core, "time", real)
    assert SimClock(speed=60.0).start_ms == START, "the default start is now, floored to the minute"
    clock = SimClock(speed=600.0, start_ms=START)
    assert clock.now_ms() == START
    real.monotonic = lambda: 100.25  # a quarter of a real second is 150 simulated seconds
    assert clock.now_ms() == START + 150_000
    assert clock.current_minute_ms() == START + 2 * MINUTE_MS
    assert clock.real_seconds_until(START + 210_000) == pytest.approx(0.1)
    assert clock.real_seconds_until(START) == 0.0
