"""GET /api/ohlcvs?format=csv on a real server: the same bars and text as the JSON answer."""

from __future__ import annotations

import csv
import io
from urllib.error import HTTPError
from urllib.parse import urlencode
from urllib.request import urlopen

import pytest

from tests.support.web import (
    BASE_MS,
    BTC,
    ETH,
    http_get,
    imitate_live_pipeline_bar,
    imitate_waiting_minute,
    running_web,
    seed_known_data,
)

pytestmark = pytest.mark.integration

MIN = 60_000
MINUTES = [i for i in range(3 * 60) if i not in {7, 8, 100}]


@pytest.fixture
def api(settings):
    seed_known_data(settings, [BTC, ETH], MINUTES)
    with running_web(settings) as base:
        yield base + "/api"


def get_raw(url: str, **params) -> tuple[int, dict[str, str], bytes]:
    try:
        with urlopen(f"{url}?{urlencode(params)}", timeout=30) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


def as_json_bars(body: bytes, as_ms: bool) -> list[dict]:
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    return [{**row, "time": int(row["time"]) if as_ms else row["time"]} for row in rows]


@pytest.mark.parametrize("interval", ["1m", "5m", "1h", "3h", "1D", "1M"])
@pytest.mark.parametrize("mls", ["true", "false"])
def test_csv_holds_the_same_bars_and_text_as_json(api, interval, mls):
    params = dict(exchange="binance", base_id="BTC", quote_id="USDT", interval=interval, results_mls=mls)
    params.update(start=BASE_MS, end=BASE_MS + 170 * MIN, limit=150)
    status, headers, body = get_raw(f"{api}/ohlcvs", **params, format="csv")
    assert status == 200, body
    assert headers["content-type"] == "text/csv; charset=utf-8"
    assert headers["content-disposition"] == f'attachment; filename="binance_BTC_USDT_{interval}.csv"'
    assert headers.get("transfer-encoding") == "chunked", "streamed, not sent as one sized body"
    assert body.startswith(b"time,open,high,low,close,volume\n")
    status, want = http_get(f"{api}/ohlcvs", **params)
    assert want, "no bars to compare"
    assert as_json_bars(body, mls == "true") == want


def test_csv_merges_live_minutes_and_fills_gaps_as_json_does(api, settings, redis_server):
    client = redis_server.client()
    last = BASE_MS + 179 * MIN
    waiting = dict(time=last + 2 * MIN, open="1.10", high="999.5", low="1.00", close="1.05", volume="2.5")
    imitate_waiting_minute(client, settings, BTC, waiting)
    live = dict(time=last + 3 * MIN, open="1.05", high="1.2", low="0.5", close="1.15", volume="0.25")
    imitate_live_pipeline_bar(client, settings, BTC, live)
    for interval in ("1m", "5m"):
        params = dict(exchange="binance", base_id="BTC", quote_id="USDT", interval=interval, empty_ts="true")
        status, _, body = get_raw(f"{api}/ohlcvs", **params, format="csv")
        assert status == 200
        status, want = http_get(f"{api}/ohlcvs", **params)
        got = as_json_bars(body, True)
        assert got == want
        if interval == "1m":
            assert [bar["time"] for bar in got[-4:]] == [last, last + MIN, last + 2 * MIN, last + 3 * MIN]
            assert got[-3]["volume"] == "0" and got[-1]["close"] == "1.15"


def test_csv_errors_are_the_json_errors(api):
    status, headers, body = get_raw(
        f"{api}/ohlcvs", exchange="binance", base_id="NOPE", quote_id="USDT", format="csv"
    )
    assert status == 404 and headers["content-type"] == "application/json"
    assert b"symbol-exchange" in body
    status, _, body = get_raw(
        f"{api}/ohlcvs", exchange="binance", base_id="BTC", quote_id="USDT", format="xml"
    )
    assert status == 422 and b"format" in body
    market = dict(exchange="binance", base_id="BTC", quote_id="USDT")
    status, _, body = get_raw(
        f"{api}/ohlcvs", **market, format="csv", start=BASE_MS - 10 * MIN, end=BASE_MS - MIN
    )
    assert (status, body) == (200, b"time,open,high,low,close,volume\n"), (
        "a known market without bars: just the header"
    )
