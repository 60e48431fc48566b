"""Candle blocks, the backfill's bulk form: a block holds only exact decimal text, and an adapter's
block is always the same candles as its `parse_candles`, on the usual body and on every odd one."""

from __future__ import annotations

import json

import pytest

from common.candle import Candle, CandleBlock
from fetchers.exchanges import get_adapter
from fetchers.exchanges.base import FetchTask

pytestmark = pytest.mark.unit

MIN = 60_000
T0 = 1_700_000_040_000  # 2023-11-14T22:14:00Z, minute-aligned


def kline(time_ms: int, open_="37050.01000000", volume="12.34567000") -> list:
    return [
        time_ms,
        open_,
        "37065.00000000",
        "37049.00000000",
        "37062.50000000",
        volume,
        time_ms + MIN - 1,
        "457321.12345678",
        512,
        "6.12345000",
        "226789.12345678",
        "0",
    ]


def block(times: list, lines: list) -> CandleBlock:
    return CandleBlock("binance", "BTC", "USDT", times, lines)


def test_a_block_of_exact_text_round_trips_to_candles():
    made = block([T0, T0 + MIN], [f"{T0}\t1\t2\t0.5\t1.5\t10", f"{T0 + MIN}\t1e-8\t2\t0.5\t1.5\t0.00000000"])
    assert made.candles() == [
        Candle("binance", "BTC", "USDT", T0, "1", "2", "0.5", "1.5", "10"),
        Candle("binance", "BTC", "USDT", T0 + MIN, "1e-8", "2", "0.5", "1.5", "0.00000000"),
    ]
    assert len(made) == 2
    assert len(block([], [])) == 0


@pytest.mark.parametrize(
    "times, lines",
    [
        ([T0], [f"{T0}\t1\t2\t0.5\t1.5\tNaN"]),  # not a number
        ([T0], [f"{T0}\t1\t2\t0.5\t1.5"]),  # a field short
        ([T0], [f"{T0}\t1\t2\t0.5\t1.5\t10\t3"]),  # a field too many
        ([T0], [f"{T0}\t1\t\t0.5\t1.5\t10"]),  # an empty field
        ([T0], [f"{T0}\t1\t2\t0.5\t1.5\t"]),  # an empty last field
        ([T0], [f"{T0}\t1\t2\t0.5\t1\n5\t10"]),  # a line break inside a value
        ([T0], [1.5]),  # not text
        ([float(T0)], [f"{T0}\t1\t2\t0.5\t1.5\t10"]),  # a float time
        ([T0 + 1], [f"{T0 + 1}\t1\t2\t0.5\t1.5\t10"]),  # not on a minute
        ([T0 + MIN, T0], [f"{T0 + MIN}\t1\t2\t0.5\t1.5\t10", f"{T0}\t1\t2\t0.5\t1.5\t10"]),  # descending
        ([T0, T0], [f"{T0}\t1\t2\t0.5\t1.5\t10", f"{T0}\t1\t2\t0.5\t1.5\t10"]),  # repeated
        ([T0], [f"{T0 + MIN}\t1\t2\t0.5\t1.5\t10"]),  # a line of another time
        ([T0, T0 + MIN], [f"{T0}\t1\t2\t0.5\t1.5\t10"]),  # counts differ
    ],
)
def test_a_block_refuses_anything_but_exact_candles(times, lines):
    with pytest.raises(ValueError):
        block(times, lines)


def test_from_candles_orders_keeps_the_last_of_a_minute_and_refuses_other_markets():
    early = Candle("binance", "BTC", "USDT", T0, "1", "2", "0.5", "1.5", "10")
    late = Candle("binance", "BTC", "USDT", T0 + MIN, "2", "2", "2", "2", "0")
    again = Candle("binance", "BTC", "USDT", T0, "3", "3", "3", "3", "3")
    made = CandleBlock.from_candles("binance", "BTC", "USDT", [late, early, again])
    assert made.candles() == [again, late]
    with pytest.raises(ValueError):
        CandleBlock.from_candles("binance", "ETH", "USDT", [early])
    with pytest.raises(ValueError):
        a_float = Candle("binance", "BTC", "USDT", T0, 1.5, "2", "1", "1", "1")
        CandleBlock.from_candles("binance", "BTC", "USDT", [a_float])


BINANCE_BODIES = {
    "usual": [kline(T0 + i * MIN) for i in range(5)],
    "empty": [],
    "a row before and after the range": [kline(T0 - MIN)] + [kline(T0 + i * MIN) for i in range(6)],
    "a row off the minute": [kline(T0), kline(T0 + MIN + 1), kline(T0 + 2 * MIN)],
    "numbers instead of strings": [kline(T0, open_=37050.01), kline(T0 + MIN, volume=1e-05)],
    "a repeated row": [kline(T0), kline(T0), kline(T0 + MIN)],
}


@pytest.mark.parametrize("name", sorted(BINANCE_BODIES))
def test_binance_block_is_the_same_candles_as_parse_candles(name):
    task = FetchTask("binance", "BTCUSDT", "BTC", "USDT", T0, T0 + 5 * MIN)
    body = json.dumps(BINANCE_BODIES[name])
    adapter = get_adapter("binance")
    expected = CandleBlock.from_candles("binance", "BTC", "USDT", adapter.parse_candles(task, body))
    assert adapter.parse_candle_block(task, body) == expected
    assert expected.candles() == sorted(
        {c.time: c for c in adapter.parse_candles(task, body)}.values(), key=lambda c: c.time
    )


@pytest.mark.parametrize(
    "body",
    [
        json.dumps([kline(T0, open_="")]),
        json.dumps([kline(T0, open_="NaN")]),
        json.dumps([kline(T0)[:4]]),
        json.dumps({"code": -1121, "msg": "Invalid symbol."}),
        "[[" + str(T0) + ',"1"',
    ],
)
def test_binance_block_refuses_what_parse_candles_refuses(body):
    task = FetchTask("binance", "BTCUSDT", "BTC", "USDT", T0, T0 + 5 * MIN)
    adapter = get_adapter("binance")
    with pytest.raises(ValueError):
        adapter.parse_candles(task, body)
    with pytest.raises(ValueError):
        adapter.parse_candle_block(task, body)


def bitfinex_row(time_ms: int, open_="37050.01", volume="12.3456") -> str:
    return f"[{time_ms},{open_},37062.5,37065,37049,{volume}]"


BITFINEX_BODIES = {
    "usual": "[" + ",".join(bitfinex_row(T0 + i * MIN) for i in range(5)) + "]",
    "empty": "[]",
    "numbers written many ways": "["
    + ",".join(
        [
            bitfinex_row(T0, "3e-8", "0.00000000"),
            bitfinex_row(T0 + MIN, "1.50000", "1E+2"),
            bitfinex_row(T0 + 2 * MIN, "-0", "0"),
        ]
    )
    + "]",
    "newest first": "[" + ",".join(bitfinex_row(T0 + i * MIN) for i in (2, 1, 0)) + "]",
    "a row before and after the range": "["
    + ",".join(bitfinex_row(T0 + i * MIN) for i in range(-1, 6))
    + "]",
    "a row off the minute": "[" + ",".join([bitfinex_row(T0), bitfinex_row(T0 + MIN + 7)]) + "]",
    "a repeated row": "[" + ",".join([bitfinex_row(T0), bitfinex_row(T0), bitfinex_row(T0 + MIN)]) + "]",
    "spaces": "[[" + str(T0) + ", 1, 2, 3, 0.5, 10]]",
}


@pytest.mark.parametrize("name", sorted(BITFINEX_BODIES))
def test_bitfinex_block_is_the_same_candles_as_parse_candles(name):
    task = FetchTask("bitfinex", "tBTCUSD", "BTC", "USD", T0, T0 + 5 * MIN)
    body = BITFINEX_BODIES[name]
    adapter = get_adapter("bitfinex")
    candles = adapter.parse_candles(task, body)
    assert adapter.parse_candle_block(task, body) == CandleBlock.from_candles(
        "bitfinex", "BTC", "USD", candles
    )


def test_bitfinex_block_keeps_each_numbers_own_text():
    task = FetchTask("bitfinex", "tBTCUSD", "BTC", "USD", T0, T0 + 5 * MIN)
    block = get_adapter("bitfinex").parse_candle_block(task, BITFINEX_BODIES["numbers written many ways"])
    assert block.lines[0] == f"{T0}\t3e-8\t37065\t37049\t37062.5\t0.00000000"
    assert block.lines[1] == f"{T0 + MIN}\t1.50000\t37065\t37049\t37062.5\t1E+2"


@pytest.mark.parametrize(
    "body",
    [
        "[[" + str(T0) + ",1.2.3,2,3,4,5]]",  # not a JSON number
        "[[" + str(T0) + ",1,2,3,4]]",  # a value short
        '["error",10020,"time_interval: invalid"]',
        "[[" + str(T0) + ",1,2,3,4,5]",  # cut short
    ],
)
def test_bitfinex_block_refuses_what_parse_candles_refuses(body):
    task = FetchTask("bitfinex", "tBTCUSD", "BTC", "USD", T0, T0 + 5 * MIN)
    adapter = get_adapter("bitfinex")
    with pytest.raises(ValueError):
        adapter.parse_candles(task, body)
    with pytest.raises(ValueError):
        adapter.parse_candle_block(task, body)


def test_bittrex_block_is_the_same_candles_as_parse_candles():
    task = FetchTask("bittrex", "BTC-USD", "BTC", "USD", T0, T0 + 2 * MIN)
    rows = [
        {"startsAt": "2023-11-14T22:14:00Z", "open": "35512.785", "high": "35540", "low": "35498.12",
         "close": "35530.01", "volume": "1.84211903", "quoteVolume": "65432.10987654"},
        {"startsAt": "2023-11-14T22:15:00Z", "open": "1", "high": "1", "low": "1", "close": "1",
         "volume": "0", "quoteVolume": "0"},
    ]  # fmt: skip
    adapter = get_adapter("bittrex")
    body = json.dumps(rows)
    block = adapter.parse_candle_block(task, body)
    assert block.candles() == adapter.parse_candles(task, body)
    assert block.lines[0] == f"{T0}\t35512.785\t35540\t35498.12\t35530.01\t1.84211903"
