"""The pure exchange adapters against realistic payloads: the real market lists the exchanges
served, and candle/error bodies in the documented wire formats."""

from __future__ import annotations

import inspect
import json
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path

import pytest

from common.candle import Market
from common.exchanges import EXCHANGES
from common.settings import Settings
from fetchers.exchanges import ADAPTERS, get_adapter
from fetchers.exchanges.base import (
    JITTER_SECONDS,
    SAFETY_FRACTION,
    ErrorKind,
    ExchangeAdapter,
    FetchTask,
    RateLimit,
    UnknownSymbolError,
    resolve_symbol,
)
from fetchers.exchanges.bitfinex import split_pair

pytestmark = pytest.mark.unit

DATA = Path(__file__).resolve().parents[2] / "simulator" / "data"
UTC = UTC
MIN = 60_000
DAY = 86_400_000
T0 = 1_700_000_040_000  # 2023-11-14T22:14:00Z, minute-aligned
NOW = 1_700_100_000_000


def body(name: str) -> str:
    return (DATA / name).read_text()


def ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


# ---------------------------------------------------------------------------------------- shape


def test_every_adapter_fills_in_what_the_base_leaves_open_in_the_base_order():
    methods = [name for name, value in vars(ExchangeAdapter).items() if inspect.isfunction(value)]
    left_open = [
        name for name in methods if "NotImplementedError" in inspect.getsource(vars(ExchangeAdapter)[name])
    ]
    assert {"parse_candles", "classify_error", "parse_ws_frame"} <= set(left_open)
    for adapter in ADAPTERS.values():
        own = [name for name in type(adapter).__dict__ if name in methods]
        assert own == [name for name in methods if name in own], adapter.name
        assert set(left_open) <= set(own), adapter.name


def test_every_exchange_of_the_registry_has_its_adapter_and_settings():
    assert tuple(ADAPTERS) == EXCHANGES
    for simulator_host in ("", "127.0.0.1"):
        settings = Settings(simulator_host=simulator_host)
        for name, adapter in ADAPTERS.items():  # each reads its exchange's settings by name
            assert adapter.name == name
            assert adapter.rate_limit(settings).capacity >= 1
            assert adapter.ws_limits(settings).heartbeat_seconds > 0
            assert adapter.ws_url(settings) and settings.rest_url(name)


def test_unknown_exchange_is_named():
    with pytest.raises(KeyError, match="kraken"):
        get_adapter("kraken")


# -------------------------------------------------------------------------------------- markets


def test_bitfinex_pairs_split_on_colon_or_three_plus_three():
    assert split_pair("BTCUSD") == ("BTC", "USD")
    assert split_pair("AAVE:USD") == ("AAVE", "USD")
    assert split_pair("TESTBTC:TESTUSD") == ("TESTBTC", "TESTUSD")
    with pytest.raises(ValueError):
        split_pair("BTCUSDT")


def test_bitfinex_real_market_list():
    adapter = get_adapter("bitfinex")
    assert [r.url("https://api-pub.bitfinex.com") for r in adapter.markets_requests()] == [
        "https://api-pub.bitfinex.com/v2/conf/pub:list:pair:exchange"
    ]
    markets = adapter.parse_markets([body("bitfinex_conf_pub_list_pair_exchange.json")])
    listed = json.loads(body("bitfinex_conf_pub_list_pair_exchange.json"))[0]
    assert len(markets) == len(listed)
    by_symbol = {m.symbol: m for m in markets}
    assert by_symbol["tBTCUSD"] == Market("bitfinex", "BTC", "USD", "tBTCUSD", True)
    assert by_symbol["tAAVE:USD"] == Market("bitfinex", "AAVE", "USD", "tAAVE:USD", True)
    assert all(m.symbol == "t" + p for m, p in zip(markets, listed, strict=True))
    long_codes = [m for m in markets if len(m.base_id) > 3 or len(m.quote_id) > 3]
    assert long_codes and all(":" in m.symbol for m in long_codes)
    paper = [m for m in markets if m.base_id.startswith("TEST")]
    assert all(not m.is_trading for m in paper)


def test_binance_real_market_list():
    adapter = get_adapter("binance")
    (request,) = adapter.markets_requests()
    assert request.path == "/api/v3/exchangeInfo" and request.weight == 20
    markets = adapter.parse_markets([body("binance_exchangeInfo.json")])
    info = json.loads(body("binance_exchangeInfo.json"))["symbols"]
    assert len(markets) == len(info)
    by_symbol = {m.symbol: m for m in markets}
    assert by_symbol["BTCUSDT"] == Market("binance", "BTC", "USDT", "BTCUSDT", True)
    assert by_symbol["1INCHBTC"].base_id == "1INCH"
    for item in info:
        market = by_symbol[item["symbol"]]
        assert market.base_id + market.quote_id == item["symbol"]
        assert market.is_trading == (item["status"] == "TRADING")
    assert any(not m.is_trading for m in markets)


def test_bittrex_real_market_list():
    adapter = get_adapter("bittrex")
    markets = adapter.parse_markets([body("bittrex_markets.json")])
    raw = json.loads(body("bittrex_markets.json"))
    assert len(markets) == len(raw)
    by_symbol = {m.symbol: m for m in markets}
    assert by_symbol["BTC-USD"] == Market("bittrex", "BTC", "USD", "BTC-USD", True)
    assert by_symbol["1INCH-BTC"].base_id == "1INCH"
    offline = {item["symbol"] for item in raw if item["status"] == "OFFLINE"}
    assert offline and {m.symbol for m in markets if not m.is_trading} == offline


@pytest.mark.parametrize("text", ["BTC/USD", "btc/usd", "tBTCUSD", "BTCUSD", "btcusd"])
def test_symbols_resolve_as_pair_or_exchange_symbol(text):
    markets = get_adapter("bitfinex").parse_markets([body("bitfinex_conf_pub_list_pair_exchange.json")])
    assert resolve_symbol(markets, text).symbol == "tBTCUSD"
    assert resolve_symbol(markets, "AAVE:USD").symbol == "tAAVE:USD"


def test_unknown_symbol_is_one_clear_message():
    markets = get_adapter("bittrex").parse_markets([body("bittrex_markets.json")])
    assert resolve_symbol(markets, "btc-usd").symbol == "BTC-USD"
    with pytest.raises(UnknownSymbolError, match="^unknown symbol 'NOPE/USD' on bittrex"):
        resolve_symbol(markets, "NOPE/USD")


# -------------------------------------------------------------------------------- exchange clock


def test_server_time_requests_use_each_exchanges_real_paths():
    urls = {
        name: adapter.server_time_request().url(f"https://{name}.example")
        for name, adapter in ADAPTERS.items()
    }
    assert urls == {
        "bitfinex": "https://bitfinex.example/v2/platform/status",
        "binance": "https://binance.example/api/v3/time",
        "bittrex": "https://bittrex.example/v3/ping",
    }
    assert all(adapter.server_time_request().weight == 1 for adapter in ADAPTERS.values())


BITFINEX_STATUS_HEADERS = {"Content-Type": "application/json; charset=utf-8", "Connection": "keep-alive"}


@pytest.mark.parametrize(
    "exchange, headers, payload, expected",
    [
        (
            "binance",
            {"Date": "Wed, 12 Jul 2017 02:41:59 GMT"},
            '{"serverTime":1499827319559}',
            1_499_827_319_559,
        ),
        ("bittrex", {}, '{"serverTime":1594596023162}', 1_594_596_023_162),
        # Bitfinex: the reply's Date header, whatever the body says and whatever case the name has
        (
            "bitfinex",
            {**BITFINEX_STATUS_HEADERS, "Date": "Tue, 14 Nov 2023 22:16:59 GMT"},
            "[1]",
            1_700_000_219_000,
        ),
        ("bitfinex", {"date": "Tue, 14 Nov 2023 22:16:59 GMT"}, "[0]", 1_700_000_219_000),
        ("bitfinex", {"DATE": "Tue, 14 Nov 2023 23:16:59 +0100"}, "", 1_700_000_219_000),
    ],
)
def test_server_time_is_read_from_the_exchanges_own_reply(exchange, headers, payload, expected):
    assert get_adapter(exchange).parse_server_time(headers, payload) == expected


@pytest.mark.parametrize(
    "exchange, headers, payload",
    [
        ("binance", {"Date": "Wed, 12 Jul 2017 02:41:59 GMT"}, '{"code":-1003,"msg":"Too many requests."}'),
        ("binance", {}, '{"serverTime":"1499827319559"}'),
        ("bittrex", {}, '{"serverTime":1.5e12}'),
        ("bittrex", {}, "<html>502 Bad Gateway</html>"),
        ("bitfinex", BITFINEX_STATUS_HEADERS, "[1]"),  # no Date header
        ("bitfinex", {"Date": "yesterday"}, "[1]"),
        ("bitfinex", {"Date": "Tue, 14 Nov 2023 22:16:59 -0000"}, "[1]"),  # -0000: zone unknown
        ("bitfinex", {"Date": ""}, "[1]"),
    ],
)
def test_server_time_without_a_time_raises_value_error(exchange, headers, payload):
    with pytest.raises(ValueError):
        get_adapter(exchange).parse_server_time(headers, payload)


# ------------------------------------------------------------------------------------- planning


def _plan(exchange: str, start_ms: int, end_ms: int) -> list[FetchTask]:
    market = Market(
        exchange, "BTC", "USD", {"bitfinex": "tBTCUSD", "binance": "BTCUSDT", "bittrex": "BTC-USD"}[exchange]
    )
    return list(get_adapter(exchange).plan_fetch_tasks(market, start_ms, end_ms))


@pytest.mark.parametrize("exchange, per_request", [("bitfinex", 10_000), ("binance", 1000)])
def test_plans_cover_the_range_with_the_fewest_requests(exchange, per_request):
    start, end = T0, T0 + (3 * per_request + 7) * MIN
    tasks = _plan(exchange, start, end)
    assert len(tasks) == 4
    assert tasks[0].start_ms == start and tasks[-1].end_ms == end
    assert all(a.end_ms == b.start_ms for a, b in pairwise(tasks))
    assert [t.minutes for t in tasks] == [per_request] * 3 + [7]


def test_bittrex_plans_one_request_per_utc_day():
    start = ms(datetime(2021, 6, 13, 22, 0, tzinfo=UTC))
    end = ms(datetime(2021, 6, 16, 1, 0, tzinfo=UTC))
    tasks = _plan("bittrex", start, end)
    assert [(t.start_ms, t.end_ms) for t in tasks] == [
        (start, ms(datetime(2021, 6, 14, tzinfo=UTC))),
        (ms(datetime(2021, 6, 14, tzinfo=UTC)), ms(datetime(2021, 6, 15, tzinfo=UTC))),
        (ms(datetime(2021, 6, 15, tzinfo=UTC)), ms(datetime(2021, 6, 16, tzinfo=UTC))),
        (ms(datetime(2021, 6, 16, tzinfo=UTC)), end),
    ]


def test_task_round_trips_through_its_stored_form():
    task = _plan("binance", T0, T0 + 5 * MIN)[0]
    assert FetchTask.from_dict(json.loads(json.dumps(task.to_dict()))) == task


# ------------------------------------------------------------------------------------- requests


def test_candle_requests_use_each_exchanges_real_paths():
    bfx = FetchTask("bitfinex", "tAAVE:USD", "AAVE", "USD", T0, T0 + 3 * MIN)
    assert get_adapter("bitfinex").candles_request(bfx, NOW).url("https://api-pub.bitfinex.com") == (
        "https://api-pub.bitfinex.com/v2/candles/trade:1m:tAAVE:USD/hist"
        f"?start={T0}&end={T0 + 3 * MIN - 1}&limit=10000&sort=1"
    )
    bn = FetchTask("binance", "BTCUSDT", "BTC", "USDT", T0, T0 + 3 * MIN)
    request = get_adapter("binance").candles_request(bn, NOW)
    assert request.weight == 2
    assert request.url("https://api.binance.com") == (
        "https://api.binance.com/api/v3/klines?symbol=BTCUSDT&interval=1m"
        f"&startTime={T0}&endTime={T0 + 3 * MIN - 1}&limit=1000"
    )


def test_bittrex_uses_historical_for_finished_days_and_recent_for_today():
    adapter = get_adapter("bittrex")
    day = ms(datetime(2021, 6, 3, tzinfo=UTC))
    task = FetchTask("bittrex", "BTC-USD", "BTC", "USD", day + 5 * MIN, day + DAY)
    assert adapter.candles_request(task, day + DAY).path == (
        "/v3/markets/BTC-USD/candles/TRADE/MINUTE_1/historical/2021/6/3"
    )
    assert adapter.candles_request(task, day + DAY - 1).path == (
        "/v3/markets/BTC-USD/candles/TRADE/MINUTE_1/recent"
    )


# -------------------------------------------------------------------------------------- parsing


def test_bitfinex_candles_are_ochl_numbers_parsed_exactly():
    task = FetchTask("bitfinex", "tBTCUSD", "BTC", "USD", T0, T0 + 3 * MIN)
    payload = (
        f"[[{T0},37050,37062,37065,37049,1.2345],"
        f"[{T0 + MIN},37062,37070.5,37071,37060,0.5],"
        f"[{T0 + 2 * MIN},0.00000123,1e-8,0.0000013,1E-8,123456789.12345678]]"
    )
    candles = get_adapter("bitfinex").parse_candles(task, payload)
    assert [c.time for c in candles] == [T0 + i * MIN for i in range(3)]
    first = candles[0]
    assert (first.open, first.high, first.low, first.close, first.volume) == (
        "37050",
        "37065",
        "37049",
        "37062",
        "1.2345",
    )
    last = candles[2]  # the numbers' own text, not a float's or a Decimal's rendering
    assert (last.open, last.close, last.high, last.low) == ("0.00000123", "1e-8", "0.0000013", "1E-8")
    assert last.volume == "123456789.12345678"
    assert all(type(c.time) is int for c in candles)


def test_bitfinex_extra_fields_and_rows_outside_the_task_are_ignored():
    task = FetchTask("bitfinex", "tBTCUSD", "BTC", "USD", T0, T0 + MIN)
    payload = f"[[{T0 - MIN},1,1,1,1,1],[{T0},1,2,3,0.5,4,99],[{T0 + MIN},1,1,1,1,1]]"
    (candle,) = get_adapter("bitfinex").parse_candles(task, payload)
    assert (candle.open, candle.close, candle.high, candle.low, candle.volume) == ("1", "2", "3", "0.5", "4")


def test_binance_klines_are_ohlc_strings_parsed_exactly():
    task = FetchTask("binance", "BTCUSDT", "BTC", "USDT", T0, T0 + 2 * MIN)
    payload = json.dumps(
        [
            [
                T0,
                "37050.01000000",
                "37065.00000000",
                "37049.00000000",
                "37062.50000000",
                "12.34567000",
                T0 + MIN - 1,
                "457321.12345678",
                512,
                "6.12345000",
                "226789.12345678",
                "0",
            ],
            [
                T0 + MIN,
                "0.00000123",
                "0.00000124",
                "0.00000122",
                "0.00000123",
                "0.00000000",
                T0 + 2 * MIN - 1,
                "0.00000000",
                0,
                "0.00000000",
                "0.00000000",
                "0",
            ],
        ]
    )
    first, quiet = get_adapter("binance").parse_candles(task, payload)
    assert (first.time, first.open, first.high) == (T0, "37050.01000000", "37065.00000000")
    assert (first.low, first.close, first.volume) == ("37049.00000000", "37062.50000000", "12.34567000")
    assert (quiet.time, quiet.volume, quiet.open) == (T0 + MIN, "0.00000000", "0.00000123")


def test_bittrex_candles_keep_their_strings_and_zero_volume_minutes():
    day = ms(datetime(2021, 6, 13, tzinfo=UTC))
    task = FetchTask("bittrex", "BTC-USD", "BTC", "USD", day, day + 2 * MIN)
    payload = json.dumps(
        [
            {
                "startsAt": "2021-06-13T00:00:00Z",
                "open": "35512.78500000",
                "high": "35540.00000000",
                "low": "35498.12000000",
                "close": "35530.01000000",
                "volume": "1.84211903",
                "quoteVolume": "65432.10987654",
            },
            {
                "startsAt": "2021-06-13T00:01:00Z",
                "open": "35530.01000000",
                "high": "35530.01000000",
                "low": "35530.01000000",
                "close": "35530.01000000",
                "volume": "0",
                "quoteVolume": "0",
            },
            {
                "startsAt": "2021-06-13T00:02:00Z",
                "open": "1",
                "high": "1",
                "low": "1",
                "close": "1",
                "volume": "0",
                "quoteVolume": "0",
            },
        ]
    )
    first, quiet = get_adapter("bittrex").parse_candles(task, payload)
    assert first.time == day
    assert first.open == "35512.78500000" and first.volume == "1.84211903"
    assert quiet.volume == "0" and quiet.time == day + MIN


@pytest.mark.parametrize(
    "exchange, payload",
    [
        ("bitfinex", '{"not": "a list"}'),
        ("bitfinex", "[[1700000040000, 1, 2]]"),
        ("binance", '[["1700000040000", "1"]]'),
        ("binance", '[[1700000040000, "1", "2", "0.5", "NaN", "3"]]'),
        ("bitfinex", "[[1700000040000, 1, 2, 3, 0.5, true]]"),
        (
            "bittrex",
            '[{"startsAt": "2023-11-14T22:14:00Z", "open": 1.5, "high": "1", "low": "1", "close": "1"}]',
        ),
        ("bittrex", '[{"startsAt": "2023-11-14T22:14:00Z"}]'),
        ("bittrex", '[{"startsAt": "x", "open": "1", "high": "1", "low": "1", "close": "1"}]'),
    ],
)
def test_malformed_bodies_raise_value_error(exchange, payload):
    task = FetchTask(exchange, "X", "B", "Q", T0, T0 + MIN)
    with pytest.raises(ValueError):
        get_adapter(exchange).parse_candles(task, payload)


# ---------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "exchange, status, headers, payload, kind, wait, code",
    [
        ("bitfinex", 429, {}, '["error",11010,"ratelimit: error"]', ErrorKind.RATE_LIMITED, None, "11010"),
        ("bitfinex", 500, {}, '["error",10020,"time_interval: invalid"]', ErrorKind.FATAL, None, "10020"),
        ("bitfinex", 500, {}, '["error",20060,"maintenance"]', ErrorKind.RETRY, None, "20060"),
        ("bitfinex", 502, {}, "<html>Bad Gateway</html>", ErrorKind.RETRY, None, None),
        (
            "binance",
            429,
            {"Retry-After": "17"},
            '{"code":-1003,"msg":"Too much request weight used"}',
            ErrorKind.RATE_LIMITED,
            17.0,
            "-1003",
        ),
        (
            "binance",
            418,
            {"Retry-After": "120"},
            '{"code":-1003,"msg":"Way too much request weight used; IP banned"}',
            ErrorKind.BANNED,
            120.0,
            "-1003",
        ),
        ("binance", 400, {}, '{"code":-1121,"msg":"Invalid symbol."}', ErrorKind.FATAL, None, "-1121"),
        ("binance", 503, {}, "", ErrorKind.RETRY, None, None),
        ("bittrex", 429, {}, "", ErrorKind.RATE_LIMITED, None, None),
        (
            "bittrex",
            404,
            {},
            '{"code":"MARKET_DOES_NOT_EXIST"}',
            ErrorKind.FATAL,
            None,
            "MARKET_DOES_NOT_EXIST",
        ),
        ("bittrex", 400, {}, '{"code":"INVALID_DATE"}', ErrorKind.FATAL, None, "INVALID_DATE"),
        ("bittrex", 503, {}, '{"code":"SERVICE_UNAVAILABLE"}', ErrorKind.RETRY, None, "SERVICE_UNAVAILABLE"),
    ],
)
def test_errors_are_classified(exchange, status, headers, payload, kind, wait, code):
    error = get_adapter(exchange).classify_error(status, headers, payload)
    assert (error.kind, error.wait_seconds, error.code, error.status) == (kind, wait, code, status)
    assert error.message


def test_binance_reports_its_used_weight():
    adapter = get_adapter("binance")
    assert adapter.used_weight({"X-MBX-USED-WEIGHT-1M": "5874"}) == 5874
    assert adapter.used_weight({"x-mbx-used-weight-1m": "2"}) == 2
    assert adapter.used_weight({}) is None
    assert get_adapter("bitfinex").used_weight({"X-MBX-USED-WEIGHT-1M": "1"}) is None


def test_rate_limits_come_from_settings():
    settings = Settings(_env_file=None, binance_rest_weight_per_minute=1200, rest_rate_window_seconds=5)
    limit = get_adapter("binance").rate_limit(settings)
    assert (limit.capacity, limit.window_seconds) == (1200, 5)
    assert get_adapter("bitfinex").rate_limit(Settings(_env_file=None)).capacity == 30
    assert get_adapter("bittrex").rate_limit(Settings(_env_file=None)).capacity == 60


@pytest.mark.parametrize(
    "limit",
    [RateLimit(10, 3.0), RateLimit(10, 1.0), RateLimit(300, 3.0, max_weight=5), RateLimit(60, 60.0)],
    ids=["fast preset", "one second", "weighted", "real minute"],
)
def test_a_request_reaching_the_exchange_late_still_counts_in_its_own_window(limit):
    """Requests sent at their slots, one of them `JITTER_SECONDS` late: no window of the
    exchange's counts more than its capacity, whichever request is the late one."""
    window_us = limit.window_seconds * 1_000_000
    slots = [k * limit.interval_us() for k in range(3 * limit.capacity)]
    for late in range(limit.capacity):
        arrivals = sorted(t + (JITTER_SECONDS * 1_000_000 if k == late else 0) for k, t in enumerate(slots))
        first = 0
        for last, t in enumerate(arrivals):
            while arrivals[first] <= t - window_us:
                first += 1
            assert last - first + 1 <= limit.capacity - (limit.max_weight - 1), (late, t)


def test_a_real_minute_window_is_paced_by_its_share_alone():
    limit = RateLimit(60, 60.0)
    assert limit.interval_us() == 60_000_000 / (60 * SAFETY_FRACTION)
