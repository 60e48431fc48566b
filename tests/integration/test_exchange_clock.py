""" "Now" is the exchange's: a simulator whose present is hours ahead of this machine's clock (and
runs 60 times faster) is asked for its time, and the last simulated hour backfills exactly."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from common import settings as settings_module
from common.exchanges import EXCHANGES
from common.timeutil import MINUTE_MS, ms_to_datetime
from fetchers.rest.exchange_clock import ExchangeClock, ExchangeClockUnavailable, exchange_now_ms
from fetchers.rest.jobs import BackfillRequestError, create_job
from tests.conftest import simulator_limits
from tests.support.backfill import DAY_MS, assert_matches_truth, run_job
from tests.support.simulator import running_simulator

pytestmark = pytest.mark.integration

SYMBOLS = {
    "bitfinex": ["tBTCUSD", "tETHUSD"],
    "binance": ["BTCUSDT", "ETHBTC"],
    "bittrex": ["BTC-USD", "ETH-BTC"],
}
DAYS_AHEAD = (2, 9, 40)
"""The simulated days the tests run on, so that no result hangs on what one day's markets did."""
NOON_MS = 12 * 60 * MINUTE_MS
"""The simulator starts at noon: no UTC midnight falls in the hour the test backfills."""


ON_EACH_DAY = pytest.mark.parametrize("ahead", DAYS_AHEAD, indirect=True, ids=lambda d: f"{d}-days-ahead")
"""For the tests whose result could hang on the simulated day's markets."""


@pytest.fixture
def ahead(request, settings, monkeypatch):
    """A simulator at 60x whose present is days ahead of this machine's (the test's parameter, else
    the first of DAYS_AHEAD), and settings pointing at it."""
    days = getattr(request, "param", DAYS_AHEAD[0])
    local_now = int(time.time() * 1000)
    start_ms = local_now - local_now % DAY_MS + days * DAY_MS + NOON_MS
    with running_simulator(speed=60.0, start_ms=start_ms) as sim:
        values = {**sim.settings_overrides(), **simulator_limits(sim), "rest_timeout_seconds": 5.0}
        for key, value in values.items():
            monkeypatch.setenv(key.upper(), str(value))
        settings_module.get_settings.cache_clear()
        yield sim, settings.model_copy(update=values)


@ON_EACH_DAY
@pytest.mark.parametrize("exchange", EXCHANGES)
def test_exchange_now_is_the_simulated_present(ahead, exchange):
    sim, settings = ahead
    before = sim.clock()["now_ms"]
    now = asyncio.run(exchange_now_ms(settings, exchange))
    after = sim.clock()["now_ms"]
    # Bitfinex says its time in whole seconds (the reply's Date header)
    assert before - before % 1000 <= now <= after
    assert now > time.time() * 1000 + DAY_MS


@ON_EACH_DAY
@pytest.mark.parametrize("exchange", EXCHANGES)
def test_the_last_simulated_hour_backfills_and_equals_ground_truth(ahead, exchange):
    sim, settings = ahead
    current = sim.clock()["current_minute_ms"]
    start_ms, end_ms = current - 60 * MINUTE_MS, current

    job = run_job(settings, exchange, start_ms, end_ms, SYMBOLS[exchange])

    assert job.finished and job.failed == 0
    assert (job.start_ms, job.end_ms) == (start_ms, end_ms)
    rows = assert_matches_truth(settings, sim, exchange, SYMBOLS[exchange], start_ms, end_ms)
    assert rows == job.candles
    if exchange != "bitfinex":  # the others send a candle for every minute, traded or not
        assert rows == 60 * len(SYMBOLS[exchange])


def test_a_range_past_the_exchanges_present_is_cut_there(ahead):
    sim, settings = ahead
    start_ms = sim.clock()["current_minute_ms"] - 10 * MINUTE_MS

    async def go():
        job = await create_job(
            settings, "binance", ms_to_datetime(start_ms), ms_to_datetime(start_ms + DAY_MS), ["BTCUSDT"]
        )
        return job, sim.clock()["current_minute_ms"]

    job, after = asyncio.run(go())
    assert start_ms + 10 * MINUTE_MS <= job.end_ms <= after
    with pytest.raises(BackfillRequestError, match="starts in the future"):
        asyncio.run(
            create_job(
                settings, "binance", ms_to_datetime(after + DAY_MS), ms_to_datetime(after + 2 * DAY_MS)
            )
        )


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_exchange_is_one_clear_message(settings):
    url = f"http://127.0.0.1:{_closed_port()}"
    offline = settings.model_copy(
        update={"binance_rest_url": url, "rest_timeout_seconds": 2.0, "rest_max_retries": 1}
    )
    with pytest.raises(ExchangeClockUnavailable, match=f"cannot ask binance for its time at {url}"):
        asyncio.run(exchange_now_ms(offline, "binance"))


def test_the_clock_goes_on_from_its_last_answer_when_the_exchange_stops_answering(ahead):
    sim, settings = ahead

    async def go() -> tuple[int, int]:
        clock = ExchangeClock(settings, "bittrex", refresh_seconds=0.0)
        first = await clock.now_ms()
        sim.set_faults("bittrex", http_5xx_rate=1.0)
        return first, await clock.now_ms()

    first, second = asyncio.run(go())
    assert first > time.time() * 1000 + DAY_MS  # the simulator's answer, not the local clock
    assert first <= second < first + 60_000
