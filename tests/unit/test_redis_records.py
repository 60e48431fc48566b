"""The records that cross Redis: their JSON, kept exactly as processes already running write it."""

from __future__ import annotations

import json

import pytest

from common.coverage import REST, WS, CoverageRange
from common.redis_records import (
    OutageRecord,
    RejectedBar,
    decode_bar,
    decode_latest_hash,
    decode_record,
    encode_bar,
    encode_record,
    encode_waiting_bar,
    said_closed,
)

pytestmark = pytest.mark.unit

T0 = 1_700_000_040_000


def test_bars_are_compact_json_of_decimal_strings():
    bar = (T0, "37050.01000000", "37065.0", "1e-8", "37060.5", "0")
    assert encode_bar(bar) == (
        '{"time":1700000040000,"open":"37050.01000000","high":"37065.0","low":"1e-8",'
        '"close":"37060.5","volume":"0"}'
    )
    assert encode_waiting_bar(bar, closed=False) == encode_bar(bar)
    closed = encode_waiting_bar(bar, closed=True)
    assert closed == encode_bar(bar)[:-1] + ',"closed":true}'
    assert said_closed(closed) and said_closed(closed.encode()) and not said_closed(encode_bar(bar))
    assert decode_bar(closed) == decode_bar(encode_bar(bar).encode()) == bar
    reordered = {"volume": "0", "close": "37060.5", "low": "1e-8", "high": "37065.0", "open": bar[1]}
    assert decode_bar(json.dumps({**reordered, "time": T0})) == bar  # any key order or spacing


@pytest.mark.parametrize(
    "raw",
    [
        "nonsense",
        "[1, 2]",
        '{"time": "1700000040000", "open": "1", "high": "1", "low": "1", "close": "1", "volume": "1"}',
        '{"time": true, "open": "1", "high": "1", "low": "1", "close": "1", "volume": "1"}',
        '{"time": 1700000040000, "open": 1, "high": "1", "low": "1", "close": "1", "volume": "1"}',
        '{"time": 1700000040000, "open": "1", "high": "1", "low": "1", "close": "1"}',
    ],
)
def test_a_bar_is_an_integer_time_and_five_strings(raw):
    with pytest.raises(ValueError):
        decode_bar(raw)


def test_the_latest_bar_hash():
    fields = {b"time": b"1700000040000", b"open": b"1", b"high": b"2", b"low": b"0.5", b"close": b"1.5"}
    assert decode_latest_hash({**fields, b"volume": b"3"}) == (T0, "1", "2", "0.5", "1.5", "3")
    with pytest.raises(ValueError):
        decode_latest_hash(fields)


def test_outage_and_coverage_records_keep_their_json():
    outage = OutageRecord("binance", "BTC", "USDT", T0, T0 + 60_000, "connection lost")
    covered = CoverageRange("binance", "BTC", "USDT", T0, T0 + 60_000, WS)
    assert encode_record(outage) == (
        '{"exchange": "binance", "base_id": "BTC", "quote_id": "USDT", "start_ms": 1700000040000, '
        '"end_ms": 1700000100000, "reason": "connection lost"}'
    )
    assert encode_record(covered) == (
        '{"kind": "coverage", "exchange": "binance", "base_id": "BTC", "quote_id": "USDT", '
        '"start_ms": 1700000040000, "end_ms": 1700000100000}'
    )
    assert decode_record(encode_record(outage)) == outage
    assert decode_record(encode_record(covered).encode()) == covered
    with pytest.raises(ValueError, match="websocket"):
        encode_record(CoverageRange("binance", "BTC", "USDT", T0, T0 + 60_000, REST))
    rejected = RejectedBar("ws_sub_binance;;BTC;;USDT", "1", "x", "why", T0)
    assert json.loads(encode_record(rejected)) == {
        "key": "ws_sub_binance;;BTC;;USDT",
        "field": "1",
        "raw": "x",
        "reason": "why",
        "rejected_ms": T0,
    }
