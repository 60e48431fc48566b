"""Live coverage only from the exchange's own evidence, end to end: the simulator at 120x, the three
websocket fetchers and the updater as processes, one fault per test, then the repair.

Each test checks the promise for its rule:
- at no time does `ws` coverage hold a minute whose updates the simulator withheld (it records what
  it withheld: `/control/dropped`), and every covered minute equals the ground truth;
- the minutes the fault touched lie in a recorded outage;
- after the repair, every closed minute of the window equals the ground truth, outages included.
The platform runs for the whole module; each test looks at its own window of minutes.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from common.candle import Market
from common.coverage import WS, read_coverage
from common.db import connection, load_markets
from common.exchanges import EXCHANGES
from common.timeutil import MINUTE_MS
from fetchers.rest.engine import BackfillEngine
from fetchers.rest.repair import submit_repair
from tests.conftest import settings_for, simulator_limits
from tests.support.live import (
    LiveStack,
    coverage_mismatches,
    mismatches,
    outages,
    refresh_all_markets,
)
from tests.support.simulator import SimHandle, running_simulator

pytestmark = pytest.mark.e2e

SPEED = 120.0
STALL_SECONDS = 3.0
"""Shorter than the fetchers' silence limit in these tests (2 x 4 s): no reconnect notices it."""


CLOSE_CARRIES_THE_BAR = {"binance"}
"""A minute whose closing update arrived was delivered in full, whatever updates before it were
lost: for these exchanges only withheld closes make a minute incomplete."""


@dataclass
class Platform:
    stack: LiveStack
    sim: SimHandle
    markets: dict[str, list[Market]]

    def clock(self, exchange: str) -> int:
        return self.stack.exchange_clock(exchange)

    def minutes_pass(self, exchanges: list[str], minutes: int) -> None:
        targets = {exchange: self.clock(exchange) + minutes * MINUTE_MS for exchange in exchanges}
        for exchange, target in targets.items():
            self.stack.wait_clock_past(exchange, target)

    def window(self, exchanges: list[str], fault: Callable[[], None]) -> tuple[int, int]:
        """Apply `fault` a minute into a fresh window; returns the window's closed, flushed span."""
        for exchange in exchanges:
            self.stack.wait_connected(exchange)
        now = max(self.clock(exchange) for exchange in exchanges)
        start = now - now % MINUTE_MS + MINUTE_MS
        for exchange in exchanges:
            self.stack.wait_clock_past(exchange, start + MINUTE_MS)
        fault()
        self.minutes_pass(exchanges, 4)
        for exchange in exchanges:
            self.stack.wait_connected(exchange)
        self.minutes_pass(exchanges, 1)
        return start, self.stack.wait_flushed(exchanges)

    def check(self, exchange: str, start: int, end: int, withheld: bool = True) -> None:
        settings, sim, markets = self.stack.settings, self.sim, self.markets[exchange]
        dropped = {
            platform_symbol(exchange, listing): minutes
            for listing, minutes in sim.dropped(exchange, closes=exchange in CLOSE_CARRIES_THE_BAR).items()
        }
        assert set(dropped) <= {m.symbol for m in markets}, f"withheld, yet not followed: {set(dropped)}"
        in_window = {s: {m for m in minutes if start <= m < end} for s, minutes in dropped.items()}
        assert any(in_window.values()) == withheld, f"withheld in the window: {in_window}"
        with connection(settings) as conn:
            coverage = read_coverage(conn, exchange)
        found = outages(settings, exchange)
        for market in markets:
            key = (market.base_id, market.quote_id)
            ws = coverage.get(key, {}).get(WS, [])
            for minute in sorted(dropped.get(market.symbol, ())):
                claimed = [r for r in ws if r[0] <= minute < r[1]]
                assert not claimed, f"{market.symbol} {minute}: withheld, yet covered by {claimed}"
            for minute in sorted(in_window.get(market.symbol, ())):
                gaps = found.get(key, [])
                assert any(g.start_ms <= minute < g.end_ms for g in gaps), (market.symbol, minute, gaps)
        lies, covered = coverage_mismatches(settings, sim, exchange, markets)
        assert lies == [] and covered > 0, (covered, lies[:5])
        repair(settings, exchange)
        problems = mismatches(settings, sim, exchange, markets, start, end, repaired=True)
        assert problems == [], f"{len(problems)} after the repair, e.g. {problems[:5]}"


def platform_symbol(exchange: str, listing: str) -> str:
    """The platform's symbol of a market the simulator's control port names by its listing symbol
    (Bitfinex `BTCUSD` is the platform's `tBTCUSD`)."""
    return f"t{listing}" if exchange == "bitfinex" else listing


def repair(settings, exchange: str) -> None:
    """One repair run, drained in this process (what the Celery beat and worker do)."""
    submission = asyncio.run(submit_repair(settings, exchange))
    assert submission.job is not None, "the repair found nothing to do"
    job = asyncio.run(BackfillEngine(settings, submission.job.id).run())
    assert job.finished and job.failed == 0, job


@pytest.fixture(scope="module")
def platform(postgres_server, redis_server, template_database) -> Iterator[Platform]:
    logdir = Path(tempfile.mkdtemp(prefix="cfr-evidence-"))
    database = f"cfr_evidence_{os.getpid()}"
    postgres_server.clone_database(database, template_database)
    redis_server.client().flushall()
    with running_simulator(speed=SPEED, markets=6, ws_connections_window_seconds=3.0) as sim:
        overrides = {**sim.settings_overrides(), **simulator_limits(sim), "repair_settle_minutes": 1}
        settings = settings_for(postgres_server, redis_server, database, **overrides)
        refresh_all_markets(settings)
        with connection(settings) as conn:
            markets = {ex: load_markets(conn, ex, trading_only=True) for ex in EXCHANGES}
        stack = LiveStack(settings, sim, logdir)
        try:
            stack.start_all(EXCHANGES)
            yield Platform(stack, sim, markets)
            for exchange in EXCHANGES:
                assert stack.procs[exchange].poll() is None, stack.output(exchange)[-3000:]
        finally:
            stack.stop_all()
            shutil.rmtree(logdir, ignore_errors=True)
            postgres_server.drop_database(database)


def test_a_stall_shorter_than_the_silence_limit_is_an_outage_not_coverage(platform):
    """All three exchanges stall at once (the exchanges do not share a socket, so each is its own case)."""
    reconnects = {ex: int(platform.stack.health(ex)["reconnects"]) for ex in EXCHANGES}

    def stall() -> None:
        platform.sim.set_faults("all", ws_stall=True)
        time.sleep(STALL_SECONDS)  # how long the fault lasts, not a timed assertion
        platform.sim.set_faults("all", ws_stall=False)

    start, end = platform.window(EXCHANGES, stall)
    for exchange in EXCHANGES:
        assert int(platform.stack.health(exchange)["reconnects"]) == reconnects[exchange], exchange
        platform.check(exchange, start, end)


def test_one_dropped_frame_is_a_sequence_jump_of_its_socket(platform):
    start, end = platform.window(["bitfinex"], lambda: platform.sim.set_faults("bitfinex", lose_ws_frames=1))
    platform.check("bitfinex", start, end)


def test_a_lost_closing_update_leaves_its_minute_uncovered(platform):
    start, end = platform.window(["binance"], lambda: platform.sim.set_faults("binance", lose_ws_closes=1))
    platform.check("binance", start, end)


def test_a_sequence_jump_is_an_outage_of_its_market(platform):
    start, end = platform.window(["bittrex"], lambda: platform.sim.set_faults("bittrex", lose_ws_frames=3))
    platform.check("bittrex", start, end)


def test_unreadable_frames_cost_no_reconnect_and_no_coverage(platform):
    reconnects = int(platform.stack.health("bittrex")["reconnects"])

    def mangle() -> None:
        platform.sim.set_faults("bittrex", ws_malformed_rate=1.0)
        time.sleep(0.5)  # how long the fault lasts
        platform.sim.set_faults("bittrex", ws_malformed_rate=0.0)

    start, end = platform.window(["bittrex"], mangle)
    assert int(platform.stack.health("bittrex")["reconnects"]) == reconnects
    platform.check("bittrex", start, end)


def test_a_reconnect_is_an_outage_of_every_market_of_the_connection(platform):
    before = {key: len(gaps) for key, gaps in outages(platform.stack.settings, "binance").items()}
    start, end = platform.window(["binance"], lambda: platform.sim.set_faults("binance", drop_ws=True))
    after = outages(platform.stack.settings, "binance")
    for market in platform.markets["binance"]:
        key = (market.base_id, market.quote_id)
        assert len(after.get(key, [])) > before.get(key, 0), market.symbol
    platform.check("binance", start, end, withheld=False)


MAINTENANCE_SECONDS = 4.0
"""Eight simulated minutes at 120x: several whole minutes and channel heartbeats inside the pause."""


def test_a_maintenance_pause_is_an_outage_though_the_channels_keep_beating(platform):
    """Bitfinex 20060: data stops until 20061 while every channel keeps beating. Beats during a
    pause prove nothing (the trades of those minutes were never sent), so the minutes wholly inside
    the pause lie in an outage, never in ws coverage."""
    paused: list[int] = []

    def maintenance() -> None:
        began = platform.sim.clock()["now_ms"]
        platform.sim.set_faults("bitfinex", ws_info=20060, maintenance_seconds=MAINTENANCE_SECONDS)
        time.sleep(MAINTENANCE_SECONDS + 0.5)  # how long the fault lasts
        ended = began + int(MAINTENANCE_SECONDS * SPEED * 1000)  # 20061 comes no earlier
        paused.extend(range(began - began % MINUTE_MS + MINUTE_MS, ended - ended % MINUTE_MS, MINUTE_MS))

    start, end = platform.window(["bitfinex"], maintenance)
    assert paused, "no whole minute inside the pause"
    with connection(platform.stack.settings) as conn:
        coverage = read_coverage(conn, "bitfinex")
    found = outages(platform.stack.settings, "bitfinex")
    for market in platform.markets["bitfinex"]:
        key = (market.base_id, market.quote_id)
        ws = coverage.get(key, {}).get(WS, [])
        for minute in paused:
            assert not [r for r in ws if r[0] <= minute < r[1]], (market.symbol, minute, ws)
            assert any(g.start_ms <= minute < g.end_ms for g in found.get(key, [])), (market.symbol, minute)
    platform.check("bitfinex", start, end, withheld=False)
