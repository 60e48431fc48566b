"""Golden tests of the simulator's REST APIs over real sockets, against docs/exchanges.md.

Every exchange is checked field by field, JSON types included (Bitfinex numbers, Binance and Bittrex
strings), then against the control port's ground truth, and under limits and injected faults.
"""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from itertools import pairwise
from typing import Any

import pytest

from simulator.core import MarketCatalog
from tests.support.simulator import SimHandle, is_json_number, running_simulator

pytestmark = pytest.mark.integration

MINUTE = 60_000
DAY = 86_400_000
FIXED8 = re.compile(r"^\d+\.\d{8}$")
BITTREX_NUMBER = re.compile(r"^(0|\d+\.\d{8})$")
ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
GENEROUS: dict[str, Any] = {
    "rate_window_seconds": 60.0,
    "bitfinex_candle_requests_per_window": 1_000_000,
    "bitfinex_conf_requests_per_window": 1_000_000,
    "binance_weight_per_window": 100_000_000,
    "bittrex_requests_per_window": 1_000_000,
}


# ------------------------------------------------------------------------------------------ helpers


@dataclass
class Reply:
    status: int
    headers: Any
    text: str
    seconds: float

    def json(self) -> Any:
        """Decimals for JSON numbers with a fraction, ints for the others: types stay visible."""
        return json.loads(self.text, parse_float=Decimal)


def get(url: str, method: str = "GET", timeout: float = 30) -> Reply:
    started = time.monotonic()
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Reply(
                response.status, response.headers, response.read().decode(), time.monotonic() - started
            )
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, exc.headers, exc.read().decode(), time.monotonic() - started)


def within(seconds: float, condition: Callable[[], bool]) -> bool:
    """Whether `condition()` comes true within `seconds` (polled; it is tried at least once)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def utc_day(ms: int) -> datetime:
    return datetime.fromtimestamp(ms // 1000, tz=UTC)


def iso_ms(text: str) -> int:
    return int(datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp() * 1000)


def now_ms(sim: SimHandle) -> int:
    return sim.clock()["now_ms"]


def pick(sim: SimHandle, exchange: str, lo: float, hi: float) -> str:
    """A trading market whose trade probability is in [lo, hi)."""
    for market in sim.markets(exchange):
        if lo <= market["trade_probability"] < hi:
            return market["symbol"]
    raise AssertionError(f"no {exchange} market with trade probability in [{lo}, {hi})")


@pytest.fixture(scope="module")
def sim() -> Iterator[SimHandle]:
    """The full real market lists with limits out of the way; faults and limits get their own."""
    with running_simulator(markets=None, **GENEROUS) as handle:
        yield handle


@pytest.fixture(scope="module")
def past(sim: SimHandle) -> tuple[int, int]:
    """A closed two-hour range well inside the history."""
    start = sim.clock()["first_ms"] + 3 * DAY + 7 * MINUTE
    return start, start + 120 * MINUTE


# ------------------------------------------------------------------------------------- bitfinex


def bfx(sim: SimHandle, path: str) -> Reply:
    return get(sim.urls["bitfinex"]["rest"] + path)


def test_bitfinex_pair_list_is_the_real_list_without_t_prefix(sim: SimHandle) -> None:
    reply = bfx(sim, "/v2/conf/pub:list:pair:exchange")
    assert reply.status == 200 and reply.headers["Content-Type"].startswith("application/json")
    body = reply.json()
    assert isinstance(body, list) and len(body) == 1
    pairs = body[0]
    assert all(isinstance(p, str) and p == p.upper() for p in pairs), "no `t` prefix"
    assert pairs == MarketCatalog.fixture("bitfinex_conf_pub_list_pair_exchange.json")[0]
    assert {"BTCUSD", "AAVE:USD", "BTC:CNHT"} <= set(pairs)
    for pair in pairs:
        assert ":" in pair or len(pair) == 6, pair


def test_bitfinex_currencies_and_combined_conf_keys(sim: SimHandle) -> None:
    currencies = bfx(sim, "/v2/conf/pub:list:currency").json()
    assert len(currencies) == 1 and all(isinstance(c, str) for c in currencies[0])
    assert {"BTC", "USD", "UST"} <= set(currencies[0])
    combined = bfx(sim, "/v2/conf/pub:list:pair:exchange,pub:list:currency,pub:map:currency:sym").json()
    assert len(combined) == 3
    pairs, listed, mapping = combined
    assert listed == currencies[0]
    for pair in pairs:
        base, quote = pair.split(":") if ":" in pair else (pair[:3], pair[3:])
        assert base in listed and quote in listed, pair
    assert ["UST", "USDt"] in mapping
    assert all(
        isinstance(entry, list) and len(entry) == 2 and all(isinstance(s, str) for s in entry)
        for entry in mapping
    )


def test_bitfinex_info_pair_and_the_lists_clients_ask_with_it_in_one_joined_call(sim: SimHandle) -> None:
    keys = "pub:info:pair,pub:info:pair:futures,pub:list:pair:securities,pub:list:pair:margin"
    reply = bfx(sim, f"/v2/conf/{keys}")
    assert reply.status == 200
    info, futures, securities, margin = reply.json()
    pairs = bfx(sim, "/v2/conf/pub:list:pair:exchange").json()[0]
    assert [row[0] for row in info] == pairs, "one info row per listed pair, in list order"
    for pair, details in info:
        assert isinstance(details, list) and len(details) == 10, pair
        assert details[:3] == [None, None, None] and details[5:8] == [None, None, None], pair
        low, high = details[3], details[4]
        assert isinstance(low, str) and isinstance(high, str), "order sizes are decimal strings"
        assert 0 < Decimal(low) < Decimal(high), pair
        margins = details[8:]
        assert margins == ([Decimal("0.2"), Decimal("0.1")] if pair in margin else [None, None]), pair
    assert dict(info)["BTCUSD"][3:5] == ["0.0002", "2000"]
    assert futures == [] and securities == [], "the simulator lists spot pairs only"
    assert {"BTCUSD", "ETHUSD", "ETHBTC"} <= set(margin) < set(pairs)
    assert margin == sorted(margin)
    alone = [bfx(sim, f"/v2/conf/{key}").json() for key in keys.split(",")]
    assert alone == [[info], [futures], [securities], [margin]], "the same sections asked one by one"


def _check_bitfinex_rows(rows: list[Any]) -> None:
    for row in rows:
        assert isinstance(row, list) and len(row) == 6
        assert isinstance(row[0], int) and row[0] % MINUTE == 0
        assert all(is_json_number(v) for v in row[1:]), row
        _, open_, close, high, low, volume = row
        assert high >= max(open_, close) and low <= min(open_, close) and low > 0
        assert volume > 0, "Bitfinex has no candle for a minute without trades"


def test_bitfinex_hist_defaults_newest_first_numbers_not_strings(sim: SimHandle) -> None:
    reply = bfx(sim, "/v2/candles/trade:1m:tBTCUSD/hist")
    assert reply.status == 200
    rows = reply.json()
    assert len(rows) == 100, "default limit is 100"
    _check_bitfinex_rows(rows)
    times = [r[0] for r in rows]
    assert times == sorted(times, reverse=True), "default sort is -1 (newest first)"
    assert '"' not in reply.text and "e" not in reply.text.lower(), (
        "plain JSON numbers, no strings or exponents"
    )


def test_bitfinex_hist_start_end_sort_limit(sim: SimHandle, past: tuple[int, int]) -> None:
    start, end = past
    up = bfx(sim, f"/v2/candles/trade:1m:tBTCUSD/hist?start={start}&end={end}&sort=1&limit=10000").json()
    _check_bitfinex_rows(up)
    times = [r[0] for r in up]
    assert times == sorted(times) and times[0] >= start and times[-1] <= end
    assert len(up) == 121, "BTCUSD trades every minute; end is inclusive"
    down = bfx(sim, f"/v2/candles/trade:1m:tBTCUSD/hist?start={start}&end={end}&limit=10000").json()
    assert down == list(reversed(up))
    limited_up = bfx(sim, f"/v2/candles/trade:1m:tBTCUSD/hist?start={start}&end={end}&sort=1&limit=7").json()
    assert limited_up == up[:7], "ascending with start: the oldest candles from start"
    limited_down = bfx(
        sim, f"/v2/candles/trade:1m:tBTCUSD/hist?start={start}&end={end}&sort=-1&limit=7"
    ).json()
    assert limited_down == down[:7], "descending: the newest candles up to end"
    only_end = bfx(sim, f"/v2/candles/trade:1m:tBTCUSD/hist?end={end}&limit=3").json()
    assert [r[0] for r in only_end] == [end, end - MINUTE, end - 2 * MINUTE]
    colon = bfx(sim, f"/v2/candles/trade:1m:tAAVE:USD/hist?start={start}&end={end}&limit=5").json()
    assert colon and all(start <= r[0] <= end for r in colon)
    _check_bitfinex_rows(colon)


def test_bitfinex_hist_limit_ceiling_is_10000(sim: SimHandle) -> None:
    medium = pick(sim, "bitfinex", 0.45, 0.6)
    reply = bfx(sim, f"/v2/candles/trade:1m:t{medium}/hist?limit=10000&sort=1")
    assert reply.status == 200 and len(reply.json()) == 10_000
    over = bfx(sim, "/v2/candles/trade:1m:tBTCUSD/hist?limit=10001")
    assert (over.status, over.json()) == (500, ["error", 10020, "limit: invalid"])


def test_bitfinex_last_is_one_flat_candle(sim: SimHandle, past: tuple[int, int]) -> None:
    _, end = past
    last = bfx(sim, f"/v2/candles/trade:1m:tBTCUSD/last?end={end}").json()
    assert isinstance(last, list) and isinstance(last[0], int)
    _check_bitfinex_rows([last])
    assert last == bfx(sim, f"/v2/candles/trade:1m:tBTCUSD/hist?end={end}&limit=1").json()[0]
    # the current minute shows once its first trade happened (BTCUSD trades every minute)
    seen: list[tuple[int, int, int]] = []

    def shows_the_current_minute() -> bool:
        before = now_ms(sim)
        shown = bfx(sim, "/v2/candles/trade:1m:tBTCUSD/last").json()[0]
        seen.append((before, shown, now_ms(sim)))
        return before - before % MINUTE <= shown <= seen[-1][2]

    assert within(10, shows_the_current_minute), f"the in-progress candle is included: {seen}"


@pytest.mark.parametrize(
    ("path", "status", "body"),
    [
        ("/v2/candles/trade:7m:tBTCUSD/hist", 500, ["error", 10020, "time_interval: invalid"]),
        ("/v2/candles/trade:1m:tBTCUSD/hist?limit=0", 500, ["error", 10020, "limit: invalid"]),
        ("/v2/candles/trade:1m:tBTCUSD/hist?limit=abc", 500, ["error", 10020, "limit: invalid"]),
        ("/v2/candles/trade:1m:tBTCUSD/hist?start=yesterday", 500, ["error", 10020, "start: invalid"]),
        ("/v2/candles/trade:1m:tBTCUSD/everything", 500, ["error", 10020, "section: invalid"]),
        ("/v2/candles/trade:1m:tNOPEUSD/hist", 200, []),
        ("/v2/candles/trade:1m:tBTCUSD/hist?start=9000000000000", 200, []),
    ],
)
def test_bitfinex_errors_are_arrays(sim: SimHandle, path: str, status: int, body: Any) -> None:
    reply = bfx(sim, path)
    assert (reply.status, reply.json()) == (status, body)


# -------------------------------------------------------------------------------------- binance


def bn(sim: SimHandle, path: str) -> Reply:
    return get(sim.urls["binance"]["rest"] + path)


def test_binance_exchange_info_fields(sim: SimHandle) -> None:
    reply = bn(sim, "/api/v3/exchangeInfo")
    assert reply.status == 200
    info = reply.json()
    assert info["timezone"] == "UTC" and isinstance(info["serverTime"], int)
    assert info["exchangeFilters"] == []
    for limit in info["rateLimits"]:
        assert isinstance(limit["rateLimitType"], str) and limit["interval"] in ("SECOND", "MINUTE", "DAY")
        assert isinstance(limit["intervalNum"], int) and isinstance(limit["limit"], int)
    weight = [r for r in info["rateLimits"] if r["rateLimitType"] == "REQUEST_WEIGHT"]
    assert weight == [
        {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 100_000_000}
    ]
    fixture = MarketCatalog.fixture("binance_exchangeInfo.json")["symbols"]
    assert [s["symbol"] for s in info["symbols"]] == [s["symbol"] for s in fixture]
    for entry in info["symbols"]:
        assert entry["symbol"] == entry["baseAsset"] + entry["quoteAsset"]
        assert entry["status"] in ("TRADING", "END_OF_DAY", "HALT", "BREAK", "CANCEL_ONLY")
        assert isinstance(entry["baseAssetPrecision"], int) and isinstance(entry["filters"], list)
    one = bn(sim, "/api/v3/exchangeInfo?symbol=ETHBTC").json()
    assert [s["symbol"] for s in one["symbols"]] == ["ETHBTC"]
    two = bn(sim, '/api/v3/exchangeInfo?symbols=["BTCUSDT","ETHBTC"]').json()
    assert [s["symbol"] for s in two["symbols"]] == ["BTCUSDT", "ETHBTC"]
    bad = bn(sim, "/api/v3/exchangeInfo?symbol=NOPEUSDT")
    assert (bad.status, bad.json()) == (400, {"code": -1121, "msg": "Invalid symbol."})


def _check_kline_rows(rows: list[Any], interval_ms: int = MINUTE) -> None:
    for row in rows:
        assert isinstance(row, list) and len(row) == 12
        assert isinstance(row[0], int) and isinstance(row[6], int) and isinstance(row[8], int)
        assert row[6] == row[0] + interval_ms - 1
        for i in (1, 2, 3, 4, 5, 7, 9, 10):
            assert isinstance(row[i], str) and FIXED8.match(row[i]), (i, row)
        assert row[11] == "0"
        o, h, low, c = (Decimal(row[i]) for i in (1, 2, 3, 4))
        assert h >= max(o, c) and low <= min(o, c)
        if row[8] == 0:
            assert o == h == low == c and Decimal(row[5]) == 0 and Decimal(row[7]) == 0


def test_binance_klines_start_limit_rows(sim: SimHandle, past: tuple[int, int]) -> None:
    start, end = past
    rows = bn(sim, f"/api/v3/klines?symbol=BTCUSDT&interval=1m&startTime={start}&limit=5").json()
    assert [r[0] for r in rows] == [start + i * MINUTE for i in range(5)]
    _check_kline_rows(rows)
    for previous, row in pairwise(rows):
        assert row[1] == previous[4], "open is the previous close"
    both = bn(
        sim, f"/api/v3/klines?symbol=BTCUSDT&interval=1m&startTime={start}&endTime={end}&limit=1000"
    ).json()
    assert [r[0] for r in both] == list(range(start, end + 1, MINUTE)) and both[:5] == rows
    only_end = bn(sim, f"/api/v3/klines?symbol=BTCUSDT&interval=1m&endTime={end}&limit=3").json()
    assert [r[0] for r in only_end] == [end - 2 * MINUTE, end - MINUTE, end] and only_end == both[-3:]
    five = bn(
        sim, f"/api/v3/klines?symbol=BTCUSDT&interval=5m&startTime={start - start % (5 * MINUTE)}&limit=3"
    ).json()
    _check_kline_rows(five, 5 * MINUTE)
    assert all(r[0] % (5 * MINUTE) == 0 for r in five)


def test_binance_klines_default_and_max_limit_end_at_the_open_minute(sim: SimHandle) -> None:
    before = now_ms(sim)
    rows = bn(sim, "/api/v3/klines?symbol=ETHBTC&interval=1m").json()
    after = now_ms(sim)
    assert len(rows) == 500, "default limit is 500"
    _check_kline_rows(rows)
    assert [r[0] for r in rows] == list(range(rows[0][0], rows[-1][0] + 1, MINUTE)), "no gaps"
    assert before - before % MINUTE <= rows[-1][0] <= after, "the last row is the in-progress minute"
    assert len(bn(sim, "/api/v3/klines?symbol=ETHBTC&interval=1m&limit=1000").json()) == 1000


@pytest.mark.parametrize(
    ("query", "code", "msg"),
    [
        ("symbol=NOPEUSDT&interval=1m", -1121, "Invalid symbol."),
        ("symbol=BTCUSDT&interval=2m", -1120, "Invalid interval."),
        ("symbol=BTCUSDT&interval=1m&limit=1001", -1130, "Data sent for parameter 'limit' is not valid."),
        ("symbol=BTCUSDT&interval=1m&limit=0", -1130, "Data sent for parameter 'limit' is not valid."),
        ("interval=1m", -1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed."),
        (
            "symbol=BTCUSDT",
            -1102,
            "Mandatory parameter 'interval' was not sent, was empty/null, or malformed.",
        ),
        (
            "symbol=btcusdt&interval=1m",
            -1100,
            "Illegal characters found in parameter 'symbol'; legal range is '^[A-Z0-9-_.]{1,20}$'.",
        ),
        (
            "symbol=BTCUSDT&interval=1m&startTime=abc",
            -1100,
            "Illegal characters found in parameter 'startTime'; legal range is '^[0-9]{1,20}$'.",
        ),
        (
            "symbol=BTCUSDT&interval=1m&startTime=2000&endTime=1000",
            -1023,
            "Start time is greater than end time.",
        ),
    ],
)
def test_binance_errors_are_code_msg_objects(sim: SimHandle, query: str, code: int, msg: str) -> None:
    reply = bn(sim, "/api/v3/klines?" + query)
    assert reply.status == 400
    assert reply.json() == {"code": code, "msg": msg}
    assert reply.headers["X-MBX-USED-WEIGHT-1M"].isdigit()


def test_binance_weights_and_used_weight_header() -> None:
    with running_simulator(rate_window_seconds=3600.0, binance_weight_per_window=10_000) as sim:
        first = bn(sim, "/api/v3/exchangeInfo")
        assert first.headers["X-MBX-USED-WEIGHT-1M"] == "20", "exchangeInfo weighs 20"
        used = [
            int(
                bn(sim, "/api/v3/klines?symbol=BTCUSDT&interval=1m&limit=1000").headers[
                    "X-MBX-USED-WEIGHT-1M"
                ]
            )
            for _ in range(3)
        ]
        assert used == [22, 24, 26], "klines weigh 2 whatever the limit"
        assert bn(sim, "/api/v3/ping").headers["X-MBX-USED-WEIGHT-1M"] == "27"


def test_binance_429_with_retry_after_then_418_ban() -> None:
    with running_simulator(
        rate_window_seconds=20.0, binance_weight_per_window=20, binance_ban_seconds=7.0
    ) as sim:
        replies = [bn(sim, "/api/v3/klines?symbol=BTCUSDT&interval=1m&limit=1") for _ in range(30)]
        statuses = [r.status for r in replies]
        assert 429 in statuses and 418 in statuses, statuses
        first_429 = statuses.index(429)
        first_418 = statuses.index(418)
        assert 0 < first_429 < first_418 and set(statuses[:first_429]) == {200}
        assert set(statuses[first_429:first_418]) == {429} and set(statuses[first_418:]) == {418}
        too_many = replies[first_429]
        assert too_many.json()["code"] == -1003 and "Too much request weight used" in too_many.json()["msg"]
        assert 1 <= int(too_many.headers["Retry-After"]) <= 20
        banned = replies[first_418]
        assert banned.json()["code"] == -1003 and "IP banned until" in banned.json()["msg"]
        assert int(banned.headers["Retry-After"]) == 7
        stats = sim.stats()["binance"]
        assert stats["http_429"] == first_418 - first_429 and stats["http_418"] == 30 - first_418
        assert stats["over_limit"] == 30 - first_429 and stats["storm_429"] == 0


# -------------------------------------------------------------------------------------- bittrex


def btx(sim: SimHandle, path: str, method: str = "GET") -> Reply:
    return get(sim.urls["bittrex"]["rest"] + path, method)


def test_bittrex_markets_fields(sim: SimHandle) -> None:
    markets = btx(sim, "/v3/markets").json()
    assert [m["symbol"] for m in markets] == [
        m["symbol"] for m in MarketCatalog.fixture("bittrex_markets.json")
    ]
    for market in markets:
        assert market["symbol"] == f"{market['baseCurrencySymbol']}-{market['quoteCurrencySymbol']}"
        assert isinstance(market["minTradeSize"], str) and Decimal(market["minTradeSize"]) >= 0
        assert isinstance(market["precision"], int) and market["status"] in ("ONLINE", "OFFLINE")
        assert isinstance(market["createdAt"], str) and market["createdAt"].endswith("Z")
        for name in ("prohibitedIn", "associatedTermsOfService", "tags"):
            assert isinstance(market[name], list)
    one = btx(sim, "/v3/markets/1INCH-BTC").json()
    assert one == markets[[m["symbol"] for m in markets].index("1INCH-BTC")]


def _check_bittrex_candles(candles: list[Any], step: int = MINUTE) -> None:
    assert [iso_ms(c["startsAt"]) for c in candles] == list(
        range(iso_ms(candles[0]["startsAt"]), iso_ms(candles[-1]["startsAt"]) + 1, step)
    ), "ascending, one per interval, no gaps"
    for previous, candle in pairwise(candles):
        assert candle["open"] == previous["close"]
    for candle in candles:
        assert set(candle) == {"startsAt", "open", "high", "low", "close", "volume", "quoteVolume"}
        assert ISO_Z.match(candle["startsAt"])
        for name in ("open", "high", "low", "close"):
            assert isinstance(candle[name], str) and FIXED8.match(candle[name]), candle
        for name in ("volume", "quoteVolume"):
            assert isinstance(candle[name], str) and BITTREX_NUMBER.match(candle[name]), candle


def test_bittrex_recent_is_the_last_day_including_the_open_minute(sim: SimHandle) -> None:
    before = now_ms(sim)
    reply = btx(sim, "/v3/markets/BTC-USD/candles/TRADE/MINUTE_1/recent")
    after = now_ms(sim)
    assert reply.status == 200
    candles = reply.json()
    assert len(candles) == 1440
    _check_bittrex_candles(candles)
    newest = iso_ms(candles[-1]["startsAt"])
    assert before - before % MINUTE <= newest <= after, "the in-progress minute is the last one"
    quiet = pick(sim, "bittrex", 0.15, 0.2)
    hourly = btx(sim, f"/v3/markets/{quiet}/candles/HOUR_1/recent").json()
    _check_bittrex_candles(hourly, 60 * MINUTE)
    assert 720 <= len(hourly) <= 744


def test_bittrex_historical_day_has_every_minute_quiet_ones_included(sim: SimHandle) -> None:
    quiet = pick(sim, "bittrex", 0.15, 0.25)
    day = utc_day(sim.clock()["first_ms"] + 2 * DAY)
    path = f"/v3/markets/{quiet}/candles/TRADE/MINUTE_1/historical/{day.year}/{day.month}/{day.day}"
    reply = btx(sim, path)
    assert reply.status == 200
    candles = reply.json()
    assert len(candles) == 1440
    assert candles[0]["startsAt"] == day.strftime("%Y-%m-%dT00:00:00Z")
    assert candles[-1]["startsAt"] == day.strftime("%Y-%m-%dT23:59:00Z")
    _check_bittrex_candles(candles)
    silent = [c for c in candles if c["volume"] == "0"]
    assert len(silent) > 500, "an illiquid market has many zero-volume candles"
    for candle in silent:
        assert (
            candle["quoteVolume"] == "0"
            and candle["open"] == candle["high"] == candle["low"] == candle["close"]
        )
    padded = btx(sim, f"/v3/markets/{quiet}/candles/MINUTE_1/historical/{day:%Y/%m/%d}")
    assert padded.json() == candles, "TRADE may be omitted; zero-padded month/day accepted"
    five = btx(
        sim, f"/v3/markets/{quiet}/candles/MINUTE_5/historical/{day.year}/{day.month}/{day.day}"
    ).json()
    assert len(five) == 288
    _check_bittrex_candles(five, 5 * MINUTE)


def test_bittrex_errors(sim: SimHandle) -> None:
    now = utc_day(now_ms(sim))
    yesterday = utc_day(now_ms(sim) - DAY)
    base = "/v3/markets/BTC-USD/candles/TRADE"
    cases = [
        (
            f"{base}/MINUTE_1/historical/{yesterday.year}/{yesterday.month}/{yesterday.day}/0",
            400,
            {"code": "INVALID_DATE"},
        ),
        (
            f"{base}/HOUR_1/historical/{yesterday.year}/{yesterday.month}/{yesterday.day}",
            400,
            {"code": "INVALID_DATE"},
        ),
        (f"{base}/MINUTE_1/historical/{yesterday.year}/13/1", 400, {"code": "INVALID_DATE"}),
        (
            f"{base}/MINUTE_1/historical/{now.year}/{now.month}/{now.day}",
            400,
            {"code": "STARTDATE_OUT_OF_RANGE"},
        ),
        (f"{base}/DAY_1/historical/{now.year}", 400, {"code": "STARTDATE_OUT_OF_RANGE"}),
        (f"{base}/MINUTE_1/historical/{now.year + 1}/1/1", 400, {"code": "STARTDATE_OUT_OF_RANGE"}),
        ("/v3/markets/NOPE-USD/candles/TRADE/MINUTE_1/recent", 404, {"code": "MARKET_DOES_NOT_EXIST"}),
        ("/v3/markets/NOPE-USD", 404, {"code": "MARKET_DOES_NOT_EXIST"}),
        (
            f"{base}/MINUTE_2/recent",
            400,
            {
                "code": "BAD_REQUEST",
                "detail": "Refer to the data field for specific field validation failures.",
                "data": {"invalidRequestParameter": "candleInterval"},
            },
        ),
    ]
    for path, status, body in cases:
        reply = btx(sim, path)
        assert (reply.status, reply.json()) == (status, body), path


def test_bittrex_currencies_serve_every_currency_the_markets_use(sim: SimHandle) -> None:
    markets = btx(sim, "/v3/markets").json()
    used = {m["baseCurrencySymbol"] for m in markets} | {m["quoteCurrencySymbol"] for m in markets}
    reply = btx(sim, "/v3/currencies")
    assert reply.status == 200 and reply.headers["Content-Type"].startswith("application/json")
    currencies = reply.json()
    assert [c["symbol"] for c in currencies] == sorted(used)
    strings = ("symbol", "name", "coinType", "status", "notice", "txFee", "logoUrl", "baseAddress")
    lists = ("prohibitedIn", "associatedTermsOfService", "tags")
    for currency in currencies:
        assert set(currency) == {*strings, *lists, "minConfirmations"}, currency
        assert all(isinstance(currency[k], str) for k in strings), currency
        assert all(isinstance(currency[k], list) for k in lists), currency
        assert isinstance(currency["minConfirmations"], int) and currency["status"] == "ONLINE"
        assert BITTREX_NUMBER.match(currency["txFee"]), currency
    by_symbol = {c["symbol"]: c for c in currencies}
    assert by_symbol["BTC"]["name"] == "Bitcoin" and by_symbol["1INCH"]["coinType"] == "ETH_CONTRACT"
    for path, symbol in (("/v3/currencies/BTC", "BTC"), ("/v3/currencies/1inch", "1INCH")):
        one = btx(sim, path)
        assert (one.status, one.json()) == (200, by_symbol[symbol]), path
    unknown = btx(sim, "/v3/currencies/NOPECOIN")
    assert (unknown.status, unknown.json()) == (404, {"code": "NOT_FOUND"})


def test_tiny_price_markets_have_prices_below_0_00001_where_the_last_digit_matters(
    sim: SimHandle, past: tuple[int, int]
) -> None:
    start, end = past
    for exchange, symbol in (("bitfinex", "DOGBTC"), ("binance", "DOGEBTC"), ("bittrex", "DOGE-BTC")):
        truth = sim.truth(exchange, symbol, start, end)
        prices = [Decimal(t[k]) for t in truth for k in ("open", "high", "low", "close")]
        assert prices and all(Decimal("0.000001") <= p < Decimal("0.00001") for p in prices), exchange
        assert all(p.as_tuple().exponent == -8 for p in prices), "8-decimal prices"
        assert len({p.as_tuple().digits[-1] for p in prices}) > 3, "the last digit moves"
        volumes = [Decimal(t["volume"]) for t in truth if Decimal(t["volume"])]
        if exchange != "binance":  # Binance's DOGEBTC lot size is 1 DOGE: whole-number volumes
            assert max(len(v.as_tuple().digits) for v in volumes) >= 12, "volumes with many digits"
    rows = bn(sim, f"/api/v3/klines?symbol=DOGEBTC&interval=1m&startTime={start}&limit=5").json()
    assert all(FIXED8.match(r[1]) and r[1].startswith("0.00000") for r in rows), rows
    text = bfx(sim, f"/v2/candles/trade:1m:tDOGBTC/hist?start={start}&end={end}&sort=1").text
    assert "e" not in text.lower() and "0.00000" in text, "JSON numbers written out, no exponent"


# ----------------------------------------------------------------------------- cross-exchange


def test_server_times_are_the_simulated_clock(sim: SimHandle) -> None:
    """Binance `/api/v3/time` and Bittrex `/v3/ping` say `{"serverTime": ms}` with the simulated
    present (not this machine's: the tests' simulators start on a fixed day), as an integer."""
    for ask in (lambda: bn(sim, "/api/v3/time"), lambda: btx(sim, "/v3/ping")):
        before = now_ms(sim)
        reply = ask()
        after = now_ms(sim)
        body = reply.json()
        assert reply.status == 200 and list(body) == ["serverTime"]
        assert isinstance(body["serverTime"], int)
        assert before <= body["serverTime"] <= after
    assert abs(now_ms(sim) - time.time() * 1000) > DAY


def test_rest_never_serves_the_future(sim: SimHandle) -> None:
    far = now_ms(sim) + 30 * DAY
    bitfinex = bfx(sim, f"/v2/candles/trade:1m:tBTCUSD/hist?end={far}&limit=10").json()
    binance = bn(sim, f"/api/v3/klines?symbol=BTCUSDT&interval=1m&endTime={far}&limit=10").json()
    binance_from = bn(
        sim, f"/api/v3/klines?symbol=BTCUSDT&interval=1m&startTime={far - 31 * DAY}&limit=1000"
    ).json()
    bittrex = btx(sim, "/v3/markets/BTC-USD/candles/MINUTE_1/recent").json()
    after = now_ms(sim)
    current = after - after % MINUTE
    assert max(r[0] for r in bitfinex) <= current
    assert max(r[0] for r in binance) <= current and max(r[0] for r in binance_from) <= current
    assert iso_ms(bittrex[-1]["startsAt"]) <= current
    assert bn(sim, f"/api/v3/klines?symbol=BTCUSDT&interval=1m&startTime={far}").json() == []
    assert bfx(sim, f"/v2/candles/trade:1m:tBTCUSD/hist?start={far}").json() == []


def test_same_seed_same_history_in_two_instances() -> None:
    start = 1_790_000_000_000 - 1_790_000_000_000 % MINUTE
    window = f"start={start - 300 * MINUTE}&end={start - 200 * MINUTE}&limit=1000&sort=1"
    paths = [
        ("bitfinex", f"/v2/candles/trade:1m:tBTCUSD/hist?{window}"),
        ("bitfinex", f"/v2/candles/trade:1m:tAAVE:USD/hist?{window}"),
        ("binance", f"/api/v3/klines?symbol=ETHBTC&interval=1m&startTime={start - 300 * MINUTE}&limit=100"),
        ("binance", f"/api/v3/klines?symbol=1INCHBTC&interval=5m&startTime={start - 300 * MINUTE}&limit=50"),
        ("bittrex", "/v3/markets/BTC-USD/candles/MINUTE_1/historical/2026/9/20"),
    ]
    bodies = []
    for seed in (5, 5, 6):
        with running_simulator(seed=seed, start_ms=start, speed=1.0, **GENEROUS) as sim:
            bodies.append([get(sim.urls[exchange]["rest"] + path).text for exchange, path in paths])
    assert all(len(text) > 100 for text in bodies[0])
    assert bodies[0] == bodies[1], "the same seed gives byte-identical history"
    assert all(a != b for a, b in zip(bodies[0], bodies[2], strict=True)), "another seed gives other history"


def test_quiet_minutes_missing_on_bitfinex_zero_volume_elsewhere(
    sim: SimHandle, past: tuple[int, int]
) -> None:
    start, end = past
    quiet_bfx = pick(sim, "bitfinex", 0.15, 0.3)
    rows = bfx(
        sim, f"/v2/candles/trade:1m:t{quiet_bfx}/hist?start={start}&end={end}&sort=1&limit=1000"
    ).json()
    gaps = [b[0] - a[0] for a, b in pairwise(rows)]
    assert 0 < len(rows) < 121 and max(gaps) > MINUTE, "no candle for minutes without trades"
    assert all(row[5] > 0 for row in rows)
    quiet_bn = pick(sim, "binance", 0.15, 0.3)
    klines = bn(
        sim, f"/api/v3/klines?symbol={quiet_bn}&interval=1m&startTime={start}&endTime={end}&limit=1000"
    ).json()
    assert len(klines) == 121
    silent = [k for k in klines if k[8] == 0]
    assert silent and all(k[5] == "0.00000000" and k[1] == k[2] == k[3] == k[4] for k in silent)
    halted = next(m["symbol"] for m in sim.markets("binance") if m["status"] != "TRADING")
    frozen = bn(sim, f"/api/v3/klines?symbol={halted}&interval=1m&startTime={start}&limit=10").json()
    assert len(frozen) == 10 and all(k[8] == 0 for k in frozen), "a halted market still has (flat) klines"


def test_prices_span_magnitudes_without_exponents(sim: SimHandle) -> None:
    closes: dict[str, Decimal] = {}
    for market in sim.markets("bitfinex")[:120]:
        reply = bfx(sim, f"/v2/candles/trade:1m:t{market['symbol']}/hist?limit=1")
        assert "e" not in reply.text.lower(), reply.text
        rows = reply.json()
        if rows:
            closes[market["symbol"]] = Decimal(rows[0][2])
    assert max(closes.values()) / min(closes.values()) > Decimal(10) ** 6, closes
    assert any(v < Decimal("0.001") for v in closes.values()) and any(v > 10_000 for v in closes.values())
    binance = [
        Decimal(bn(sim, f"/api/v3/klines?symbol={s}&interval=1m&limit=1").json()[0][4])
        for s in ("BTCUSDT", "ETHBTC", "ARNBTC")
    ]
    assert binance[0] > 10_000 and Decimal("0.001") < binance[1] < 1 and binance[2] < Decimal("0.001")


def test_rest_candles_equal_ground_truth(sim: SimHandle, past: tuple[int, int]) -> None:
    start, end = past
    for symbol in ("BTCUSD", pick(sim, "bitfinex", 0.15, 0.3)):
        truth = sim.truth("bitfinex", symbol, start, end + MINUTE)
        rows = bfx(
            sim, f"/v2/candles/trade:1m:t{symbol}/hist?start={start}&end={end}&sort=1&limit=1000"
        ).json()
        assert [r[0] for r in rows] == [t["time"] for t in truth]
        for row, t in zip(rows, truth, strict=True):
            assert [Decimal(v) for v in row[1:]] == [
                Decimal(t[k]) for k in ("open", "close", "high", "low", "volume")
            ]
    for symbol in ("BTCUSDT", pick(sim, "binance", 0.15, 0.3)):
        truth = sim.truth("binance", symbol, start, end + MINUTE)
        rows = bn(sim, f"/api/v3/klines?symbol={symbol}&interval=1m&startTime={start}&endTime={end}").json()
        assert len(rows) == len(truth) == 121
        for row, t in zip(rows, truth, strict=True):
            assert row[0] == t["time"] and row[8] == t["trades"]
            assert [Decimal(v) for v in (row[1], row[2], row[3], row[4], row[5], row[7])] == [
                Decimal(t[k]) for k in ("open", "high", "low", "close", "volume", "quote_volume")
            ]
    quiet = pick(sim, "bittrex", 0.15, 0.3)
    day = utc_day(start)
    day_ms = start - start % DAY
    truth = sim.truth("bittrex", quiet, day_ms, day_ms + DAY)
    candles = btx(
        sim, f"/v3/markets/{quiet}/candles/MINUTE_1/historical/{day.year}/{day.month}/{day.day}"
    ).json()
    assert len(candles) == len(truth) == 1440
    for candle, t in zip(candles, truth, strict=True):
        assert iso_ms(candle["startsAt"]) == t["time"]
        assert [Decimal(candle[k]) for k in ("open", "high", "low", "close", "volume", "quoteVolume")] == [
            Decimal(t[k]) for k in ("open", "high", "low", "close", "volume", "quote_volume")
        ]


# --------------------------------------------------------------------------------- faults, limits

PROBES = {
    "bitfinex": "/v2/candles/trade:1m:tBTCUSD/hist?limit=1",
    "binance": "/api/v3/klines?symbol=BTCUSDT&interval=1m&limit=1",
    "bittrex": "/v3/markets/BTC-USD/candles/MINUTE_1/recent",
}


@contextmanager
def fault_sim(**overrides: Any) -> Iterator[SimHandle]:
    with running_simulator(**{**GENEROUS, **overrides}) as handle:
        yield handle


def probe(sim: SimHandle, exchange: str) -> Reply:
    return get(sim.urls[exchange]["rest"] + PROBES[exchange])


def test_fault_5xx_uses_each_exchange_error_and_is_counted() -> None:
    with fault_sim() as sim:
        for exchange in PROBES:
            sim.set_faults(exchange, http_5xx_rate=1.0)
        expected = {
            "bitfinex": (500, ["error", 10000, "unknown error"]),
            "binance": (
                503,
                {"code": -1001, "msg": "Internal error; unable to process your request. Please try again."},
            ),
            "bittrex": (503, {"code": "SERVICE_UNAVAILABLE"}),
        }
        for exchange, (status, body) in expected.items():
            replies = [probe(sim, exchange) for _ in range(3)]
            assert all((r.status, r.json()) == (status, body) for r in replies), exchange
        sim.set_faults("binance", http_5xx_rate=0.5)
        statuses = [probe(sim, "binance").status for _ in range(40)]
        assert 5 < statuses.count(503) < 35 and statuses.count(200) + statuses.count(503) == 40
        stats = sim.stats()
        assert stats["bitfinex"]["fault_5xx"] == 3 and stats["bittrex"]["fault_5xx"] == 3
        assert stats["binance"]["fault_5xx"] == 3 + statuses.count(503)
        assert all(stats[e]["over_limit"] == 0 for e in PROBES)
        sim.reset_faults()
        assert all(probe(sim, exchange).status == 200 for exchange in PROBES)


def test_fault_hang_holds_then_504_and_is_counted() -> None:
    with fault_sim(http_hang_seconds=0.6) as sim:
        sim.set_faults("all", http_hang_rate=1.0)
        for exchange in PROBES:
            reply = probe(sim, exchange)
            assert reply.status == 504 and reply.seconds >= 0.6, exchange
        stats = sim.stats()
        assert all(stats[e]["fault_hangs"] == 1 and stats[e]["rest_status"] == {"504": 1} for e in PROBES)
        sim.reset_faults()
        reply = probe(sim, "bitfinex")
        assert reply.status == 200


def test_fault_429_storm_answers_each_exchange_429_until_it_ends() -> None:
    with fault_sim() as sim:
        sim.set_faults("all", storm_seconds=1.5)
        bitfinex, binance, bittrex = (probe(sim, e) for e in ("bitfinex", "binance", "bittrex"))
        assert (bitfinex.status, bitfinex.json()) == (429, ["error", 11010, "ratelimit: error"])
        assert (
            binance.status == 429
            and binance.json()["code"] == -1003
            and int(binance.headers["Retry-After"]) >= 1
        )
        assert (bittrex.status, bittrex.json()) == (429, {"code": "TOO_MANY_REQUESTS"})
        assert sim.simulator.faults.as_dict()["bitfinex"]["storm_seconds_left"] > 0
        stats = sim.stats()
        assert all(stats[e]["storm_429"] == 1 and stats[e]["over_limit"] == 0 for e in PROBES)
        assert within(10, lambda: all(probe(sim, e).status == 200 for e in PROBES)), (
            "the storm ends by itself"
        )


def raw_exchange(url: str, path: str) -> tuple[bytes, bytes, BaseException | None]:
    """One HTTP/1.1 GET over a plain socket: the head, the body bytes that arrived, and the error
    that ended the read (None for a clean end of stream)."""
    parts = urllib.parse.urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as conn:
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n".encode())
        received = b""
        ended: BaseException | None = None
        try:
            while chunk := conn.recv(65536):
                received += chunk
        except ConnectionResetError as exc:
            ended = exc
    head, _, body = received.partition(b"\r\n\r\n")
    return head, body, ended


def content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    raise AssertionError(f"no Content-Length in {head!r}")


def settled_paths(sim: SimHandle) -> dict[str, str]:
    """A request per exchange whose reply never changes (closed history, a market object)."""
    end = sim.clock()["first_ms"] + DAY
    return {
        "bitfinex": f"/v2/candles/trade:1m:tBTCUSD/hist?start=0&end={end}&sort=1&limit=5",
        "binance": "/api/v3/klines?symbol=BTCUSDT&interval=1m&startTime=0&limit=5",
        "bittrex": "/v3/markets/BTC-USD",
    }


def test_fault_reset_breaks_the_connection_mid_body_and_is_counted() -> None:
    with fault_sim() as sim:
        paths = settled_paths(sim)
        full = {e: get(sim.urls[e]["rest"] + path).text.encode() for e, path in paths.items()}
        sim.set_faults("all", http_reset_rate=1.0)
        for exchange, path in paths.items():
            head, body, ended = raw_exchange(sim.urls[exchange]["rest"], path)
            assert head.startswith(b"HTTP/1.1 200 "), (exchange, head)
            announced = content_length(head)
            assert 0 < len(body) < announced == len(full[exchange]), (exchange, len(body), announced)
            assert body == full[exchange][: len(body)], "the real reply, cut short"
            assert isinstance(ended, ConnectionResetError), f"{exchange}: a reset, not a clean close"
            if exchange == "binance":
                assert b"\r\nX-MBX-USED-WEIGHT-1M: " in head, "the real reply's headers"
        stats = sim.stats()
        assert all(stats[e]["fault_resets"] == 1 and stats[e]["fault_truncated"] == 0 for e in PROBES)
        sim.reset_faults()
        assert all(probe(sim, exchange).status == 200 for exchange in PROBES)


def test_fault_truncate_sends_a_complete_reply_whose_body_is_half_the_json() -> None:
    with fault_sim() as sim:
        urls = {e: sim.urls[e]["rest"] + path for e, path in settled_paths(sim).items()}
        full = {exchange: get(url).text for exchange, url in urls.items()}
        sim.set_faults("all", http_truncate_rate=1.0)
        for exchange, url in urls.items():
            reply = get(url)
            assert reply.status == 200 and int(reply.headers["Content-Length"]) == len(reply.text)
            assert reply.text == full[exchange][: len(full[exchange]) // 2], exchange
            with pytest.raises(ValueError):
                reply.json()
        stats = sim.stats()
        assert all(stats[e]["fault_truncated"] == 1 and stats[e]["rest_status"]["200"] == 2 for e in PROBES)


def test_bitfinex_rate_limit_429_then_ip_block() -> None:
    with fault_sim(
        rate_window_seconds=30.0, bitfinex_candle_requests_per_window=5, bitfinex_block_seconds=1.5
    ) as sim:
        replies = [probe(sim, "bitfinex") for _ in range(12)]
        statuses = [r.status for r in replies]
        first = statuses.index(429)
        assert 1 <= first <= 5 + 5 and set(statuses[first:]) == {429}, statuses
        assert replies[first].json() == ["error", 11010, "ratelimit: error"]
        blocked = bfx(sim, "/v2/conf/pub:list:pair:exchange")
        assert blocked.status == 429, "the IP is blocked, not only the endpoint"
        stats = sim.stats()["bitfinex"]
        assert stats["over_limit"] == 12 - first + 1 and stats["http_429"] == stats["over_limit"]
        assert stats["storm_429"] == 0
        assert within(10, lambda: bfx(sim, "/v2/conf/pub:list:currency").status == 200), "the block ends"


def test_bittrex_rate_limit_429_until_the_window_resets() -> None:
    with fault_sim(rate_window_seconds=30.0, bittrex_requests_per_window=4) as sim:
        statuses = [btx(sim, "/v3/markets/BTC-USD").status for _ in range(10)]
        first = statuses.index(429)
        assert 1 <= first <= 8 and statuses[first:] == [429] * (10 - first), statuses
        reply = btx(sim, "/v3/markets/BTC-USD")
        assert (reply.status, reply.json()) == (429, {"code": "TOO_MANY_REQUESTS"})
        stats = sim.stats()["bittrex"]
        assert stats["over_limit"] == stats["http_429"] == 11 - first


def post_json(url: str, body: dict[str, Any]) -> Reply:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return Reply(
                response.status, response.headers, response.read().decode(), time.monotonic() - started
            )
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, exc.headers, exc.read().decode(), time.monotonic() - started)


def test_loss_actions_are_checked_and_dropped_answers_per_exchange() -> None:
    with fault_sim() as sim:
        faults_url = f"{sim.control}/control/faults"
        refused = [
            post_json(faults_url, {"exchange": "bitfinex", "lose_ws_closes": 1}),
            post_json(faults_url, {"exchange": "binance", "lose_ws_frames": 0}),
            post_json(faults_url, {"exchange": "bittrex", "lose_ws_frames": True}),
        ]
        assert [r.status for r in refused] == [400, 400, 400]
        assert refused[0].json() == {"error": "bitfinex has no action 'lose_ws_closes'"}
        assert refused[1].json() == {"error": "lose_ws_frames must be a whole number >= 1"}
        accepted = post_json(faults_url, {"exchange": "all", "lose_ws_frames": 2, "lose_ws_closes": 1})
        assert accepted.status == 200
        left = {e: (f["lose_ws_frames_left"], f["lose_ws_closes_left"]) for e, f in accepted.json().items()}
        assert left == {"bitfinex": (2, 0), "binance": (2, 1), "bittrex": (2, 0)}, "closes: Binance only"
        sim.reset_faults()
        assert get(faults_url).json()["binance"]["lose_ws_closes_left"] == 0
        dropped = get(f"{sim.control}/control/dropped?exchange=binance")
        assert (dropped.status, dropped.json()) == (200, {"exchange": "binance", "dropped": {}, "closes": {}})
        for query in ("?exchange=kraken", ""):
            unknown = get(f"{sim.control}/control/dropped{query}")
            assert unknown.status == 400 and "exchange must be one of" in unknown.json()["error"]
