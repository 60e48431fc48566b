"""GET /api/coverage and /api/coverage/summary on a real server, with known coverage and outages."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis.asyncio as aioredis

from common.candle import Market
from common.coverage import REST, WS, CoverageRange, record_coverage
from common.db import connection
from common.timeutil import ms_to_datetime
from fetchers.exchanges.base import FetchTask
from fetchers.rest.job_store import JobStore, job_scope
from fetchers.rest.repair import repair_key
from tests.support.web import BASE_MS, BTC, ETH, HOUR_MS, http_get, running_web, seed_known_data

pytestmark = pytest.mark.integration

MIN = 60_000


@pytest.fixture
def api(settings):
    seed_known_data(settings, [BTC, ETH], list(range(6 * 60)))
    with connection(settings) as conn, conn.cursor() as cur:
        record_coverage(
            conn,
            [
                CoverageRange("binance", "BTC", "USDT", BASE_MS, BASE_MS + 2 * HOUR_MS, REST),
                CoverageRange("binance", "BTC", "USDT", BASE_MS + 2 * HOUR_MS, BASE_MS + 5 * HOUR_MS, WS),
            ],
        )
        cur.execute(
            "INSERT INTO ohlcvs_outages (exchange, base_id, quote_id, start_time, end_time, reason) "
            "VALUES ('binance', 'BTC', 'USDT', %s, %s, 'connection lost: test')",
            (ms_to_datetime(BASE_MS + 3 * HOUR_MS), ms_to_datetime(BASE_MS + 3 * HOUR_MS + 10 * MIN)),
        )

    asyncio.run(
        repair_under_way(settings, {"BTC/USDT": [[BASE_MS + 3 * HOUR_MS, BASE_MS + 3 * HOUR_MS + 10 * MIN]]})
    )
    with running_web(settings) as base:
        yield base + "/api"


async def repair_under_way(settings, ranges: dict[str, list[list[int]]]) -> None:
    """A low-priority Binance repair job fetching `ranges` ("BASE/QUOTE" -> [[start_ms, end_ms]]),
    registered as the exchange's current repair, as `submit_repair` leaves it."""
    client = aioredis.from_url(settings.redis_url)
    store = JobStore(client, job_scope(settings))
    tasks = [
        FetchTask("binance", name.replace("/", ""), *name.split("/"), start, end)
        for name, spans in ranges.items()
        for start, end in spans
    ]
    symbols = sorted({task.symbol for task in tasks})
    first, last = min(t.start_ms for t in tasks), max(t.end_ms for t in tasks)
    job = await store.create("binance", first, last, symbols, tasks, priority="low")
    await client.hset(
        repair_key("binance", job_scope(settings)), mapping={"job": job.id, "ranges": json.dumps(ranges)}
    )
    await client.aclose()


def get(api, **params):
    query = {"exchange": "binance", "base_id": "BTC", "quote_id": "USDT", **params}
    return http_get(api + "/coverage", **query)


def test_covered_missing_and_repairing_ranges_of_one_market(api):
    status, body = get(api, start=BASE_MS, end=BASE_MS + 6 * HOUR_MS)
    assert status == 200
    h = lambda hours, minutes=0: BASE_MS + hours * HOUR_MS + minutes * MIN  # noqa: E731
    assert body["covered"] == [[h(0), h(3)], [h(3, 10), h(5)]]
    assert body["missing"] == [[h(3), h(3, 10)], [h(5), h(6)]]
    assert body["repairing"] == [[h(3), h(3, 10)]]
    assert body["missing_minutes"] == 70
    status, window = get(api, start=h(1), end=h(2))
    assert (status, window["covered"], window["missing"]) == (200, [[h(1), h(2)]], [])


@pytest.mark.parametrize(
    "params, code, fragment",
    [
        ({"start": BASE_MS + 10 * MIN, "end": BASE_MS}, 400, "must be before end"),
        ({"base_id": "NOPE"}, 404, "unknown market"),
        ({"exchange": "kraken"}, 422, "exchange"),
        ({"start": "yesterday"}, 422, "start"),
    ],
)
def test_bad_input_is_a_4xx_saying_what_to_send(api, params, code, fragment):
    status, body = get(api, **params)
    assert status == code and fragment in body["detail"], body


def test_summary_counts_missing_minutes_per_exchange(api):
    status, body = http_get(api + "/coverage/summary")
    assert status == 200
    by_exchange = {row["exchange"]: row for row in body}
    assert by_exchange["binance"]["missing_minutes"] == 70
    assert by_exchange["binance"]["repair_job"] is not None
    assert by_exchange["bitfinex"]["missing_minutes"] == 6 * 60  # nothing vouches for its rows
    assert by_exchange["bittrex"]["missing_minutes"] == 0


ETHUSDT = Market("binance", "ETH", "USDT", "ETHUSDT")


@pytest.fixture
def three_kinds(settings):
    """Binance in every state the status page tells apart, in minutes after BASE_MS (h = 60):

    - BTC/USDT: bars 0-6h; REST covers 0-2h, the live feed 2h-5h with an outage at 3h-3h10;
      missing 3h-3h10 and 5h-6h (70), the repair job fetches 3h-3h10 (and a covered 1h-1h05).
    - ETH/USDT: bars from 4h to 6h, a backfill found no trades in 3h-4h, an outage at 1h-1h30 (the
      fetcher was subscribed before its first bar); before its first bar: 0-1h and 1h30-3h (150),
      missing 1h-1h30 and 4h-6h (150), the repair job fetches 5h-6h."""
    seed_known_data(settings, [BTC], list(range(6 * 60)))
    seed_known_data(settings, [ETHUSDT], list(range(4 * 60, 6 * 60)))
    h = lambda hours, minutes=0: BASE_MS + hours * HOUR_MS + minutes * MIN  # noqa: E731
    with connection(settings) as conn, conn.cursor() as cur:
        record_coverage(
            conn,
            [
                CoverageRange("binance", "BTC", "USDT", h(0), h(2), REST),
                CoverageRange("binance", "BTC", "USDT", h(2), h(5), WS),
                CoverageRange("binance", "ETH", "USDT", h(3), h(4), REST),
            ],
        )
        for base, start, end in (("BTC", h(3), h(3, 10)), ("ETH", h(1), h(1, 30))):
            cur.execute(
                "INSERT INTO ohlcvs_outages (exchange, base_id, quote_id, start_time, end_time, reason) "
                "VALUES ('binance', %s, 'USDT', %s, %s, 'connection lost: test')",
                (base, ms_to_datetime(start), ms_to_datetime(end)),
            )

    ranges = {"BTC/USDT": [[h(1), h(1, 5)], [h(3), h(3, 10)]], "ETH/USDT": [[h(5), h(6)]]}
    asyncio.run(repair_under_way(settings, ranges))
    with running_web(settings) as base:
        yield base + "/api"


def test_summary_tells_before_first_bar_missing_and_being_repaired_apart(three_kinds):
    status, body = http_get(three_kinds + "/coverage/summary")
    assert status == 200
    binance = next(row for row in body if row["exchange"] == "binance")
    assert binance["history_start"] == BASE_MS and binance["markets_known"] == 2
    assert (binance["before_first_bar_minutes"], binance["markets_before_first_bar"]) == (150, 1)
    assert (binance["repairing_minutes"], binance["markets_repairing"]) == (10 + 60, 2)
    assert (binance["awaiting_repair_minutes"], binance["markets_awaiting_repair"]) == (60 + 90, 2)
    # the fields the status page read before stay as they were: every missing minute
    assert (binance["missing_minutes"], binance["markets_with_gaps"]) == (70 + 150, 2)
    assert binance["repair_job"] is not None and binance["repair_left"] == 3
    # and agree with the per-market endpoint
    eth = http_get(three_kinds + "/coverage", exchange="binance", base_id="ETH", quote_id="USDT")[1]
    assert eth["missing_minutes"] == 150 and sum(e - s for s, e in eth["repairing"]) == 60 * MIN
