"""Pure bar arithmetic, interval buckets and websocket message parsing of the web API."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import pytest

from common.candle import MarketKey
from web.bars import combine, encode_bars, fill_empty, merge_minutes, parse_latest_hash, parse_live_bar
from web.candles import combine_stored_and_fresh
from web.reads import INTERVALS, BarQuery, Fold, bars_body_query, bars_body_values
from web.ws_messages import BadMessage, parse_request

pytestmark = pytest.mark.unit


def ms(*args) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp() * 1000)


def test_combine_keeps_the_exact_text_and_sums_volumes_exactly():
    bars = [
        (0, "10.10", "12.500", "9.90", "11.00", "0.1"),
        (60_000, "11.00", "12.5000001", "9.899", "10.50", "0.2"),
        (120_000, "10.50", "11", "10", "10.75000000", "0.00000001"),
    ]
    assert combine(bars, 0) == (0, "10.10", "12.5000001", "9.899", "10.75000000", "0.30000001")
    # huge and tiny values together stay exact (no float, no 28-digit rounding)
    assert (
        combine(
            [
                (0, "1", "1", "1", "1", "123456789012345678901234567890"),
                (1, "1", "1", "1", "1", "0.000000001"),
            ],
            0,
        )[5]
        == "123456789012345678901234567890.000000001"
    )
    assert combine([(0, "1", "1", "1", "1", "0.00000000")], 0)[5] == "0.00000000", "no 0E-8"


@pytest.mark.parametrize(
    "interval, time_ms, start, after",
    [
        ("1m", ms(2024, 5, 17, 13, 7, 30), ms(2024, 5, 17, 13, 7), ms(2024, 5, 17, 13, 8)),
        ("3h", ms(2024, 5, 17, 13, 7), ms(2024, 5, 17, 12), ms(2024, 5, 17, 15)),
        ("7D", ms(2024, 5, 17, 13), ms(2024, 5, 13), ms(2024, 5, 20)),  # weeks start on Monday
        ("14D", ms(2024, 1, 16), ms(2024, 1, 15), ms(2024, 1, 29)),  # 2000-01-03 + 14k days
        ("1M", ms(2024, 2, 29, 23, 59), ms(2024, 2, 1), ms(2024, 3, 1)),
        ("1M", ms(2023, 12, 31, 23), ms(2023, 12, 1), ms(2024, 1, 1)),
    ],
)
def test_interval_buckets(interval, time_ms, start, after):
    spec = INTERVALS[interval]
    assert spec.bucket_start(time_ms) == start
    assert spec.next_start(start) == after


def test_fill_empty_adds_flat_zero_volume_bars_and_keeps_the_newest():
    one = INTERVALS["1m"]
    bars = [(0, "1", "2", "0.5", "1.5", "3"), (180_000, "1.6", "1.7", "1.4", "1.65", "1")]
    flat = ("1.5", "1.5", "1.5", "1.5", "0")
    assert fill_empty(bars, one, 10) == [bars[0], (60_000, *flat), (120_000, *flat), bars[1]]
    assert fill_empty(bars, one, 2) == [(120_000, *flat), bars[1]]
    month = INTERVALS["1M"]
    jan, apr = ms(2024, 1, 1), ms(2024, 4, 1)
    filled = fill_empty([(jan, "1", "1", "1", "2", "1"), (apr, "2", "2", "2", "2", "1")], month, 10)
    assert [b[0] for b in filled] == [jan, ms(2024, 2, 1), ms(2024, 3, 1), apr]
    assert fill_empty([], one, 5) == [] and fill_empty(bars[:1], one, 5) == bars[:1]


def test_merge_minutes_lets_the_database_win_and_keeps_the_newest():
    stored = [(0, "1", "1", "1", "1", "1"), (60_000, "2", "2", "2", "2", "2")]
    live = [(60_000, "9", "9", "9", "9", "9"), (120_000, "3", "3", "3", "3", "3")]
    assert merge_minutes(stored, live, 10) == [*stored, live[1]]
    assert merge_minutes(stored, live, 2) == [stored[1], live[1]]


def test_stored_fold_and_fresh_minutes_take_open_and_close_by_time():
    fold = Fold(first_ms=120_000, last_ms=180_000, open="5", high="6", low="4", close="5.5", volume="2")
    early = (60_000, "4.9", "5", "3", "5", "1")
    late = (240_000, "5.5", "7", "5", "6.5", "0.5")
    assert combine_stored_and_fresh(0, fold, [late]) == (0, "5", "7", "4", "6.5", "2.5")
    assert combine_stored_and_fresh(0, fold, [early]) == (0, "4.9", "6", "3", "5.5", "3")
    assert combine_stored_and_fresh(0, None, []) is None


def test_live_bar_parsing_accepts_the_contract_and_nothing_else():
    good = {
        "time": 1700000040000,
        "open": "37050.01",
        "high": "37051",
        "low": "37049.5",
        "close": "37050",
        "volume": "1.2",
    }
    assert parse_live_bar(json.dumps(good)) == (1700000040000, "37050.01", "37051", "37049.5", "37050", "1.2")
    for bad in (
        "nonsense",
        json.dumps({**good, "open": 37050.01}),  # a float, not decimal text
        json.dumps({**good, "close": '1","x":"'}),  # would break the hand-built JSON
        json.dumps({**good, "time": "1700000040000"}),
        json.dumps({k: v for k, v in good.items() if k != "volume"}),
    ):
        assert parse_live_bar(bad) is None
    fields = {k.encode(): str(v).encode() for k, v in good.items()}
    assert parse_latest_hash(fields) == parse_live_bar(json.dumps(good))
    assert parse_latest_hash({}) is None


def test_encoded_bars_are_valid_json_in_both_time_formats():
    bars = [(ms(2024, 1, 1), "1.0", "2", "0.5", "1.5", "10")]
    assert json.loads(encode_bars(bars, True)) == [
        {"time": ms(2024, 1, 1), "open": "1.0", "high": "2", "low": "0.5", "close": "1.5", "volume": "10"}
    ]
    assert json.loads(encode_bars(bars, False))[0]["time"] == "2024-01-01T00:00:00Z"
    assert encode_bars([], True) == b"[]"


def test_ws_request_parsing():
    event, sub = parse_request(
        '{"event_type":"subscribe","data_type":"ohlcv","exchange":"binance","base_id":"BTC","quote_id":"USDT",'
        '"interval":"3h","mls":false}'
    )
    assert event == "subscribe" and sub.interval.name == "3h" and not sub.as_ms
    assert sub.market.exchange == "binance" and sub.market.base_id == "BTC"
    event, sub = parse_request(
        '{"event_type":"unsubscribe","exchange":"bittrex","base_id":"ETH","quote_id":"BTC"}'
    )
    assert event == "unsubscribe" and sub.interval.name == "1m" and sub.as_ms
    with pytest.raises(BadMessage, match="base_id: send the currency code"):
        parse_request('{"event_type":"subscribe","exchange":"binance","base_id":"BTC USDT","quote_id":"X"}')


@pytest.mark.parametrize("name", list(INTERVALS))
@pytest.mark.parametrize("as_ms", [True, False])
def test_body_query_numbers_each_named_parameter_once_and_binds_them_in_that_order(name, as_ms):
    query = bars_body_query(name, as_ms)
    assert "%(" not in query.text
    used = sorted({int(n) for n in re.findall(r"\$(\d+)", query.text)})
    assert used == list(range(1, len(query.names) + 1))
    market = MarketKey("binance", "BTC", "USDT")
    values = bars_body_values(BarQuery(market, INTERVALS[name], ms(2024, 1, 1), ms(2024, 2, 1), 7))
    assert set(query.names) <= set(values)
    bound = dict(zip(query.names, query.arguments(values), strict=True))
    assert bound["limit"] == 7 and bound["exchange"] == "binance"
    assert bound["start"] == datetime(2024, 1, 1, tzinfo=UTC) and bound["end"] == datetime(
        2024, 2, 1, tzinfo=UTC
    )
    assert ('"time":"%s"' in query.text) is not as_ms
