"""The live pipeline end to end, as users run it: the simulator, `python -m scripts.fetchers.ws fetch`
for each exchange and `python -m scripts.fetchers.ws update`, real Redis and PostgreSQL.

The database must equal the simulator's ground truth for every closed minute of every subscribed
market (outside recorded outages), whatever happens to the sockets, Redis or the processes.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from pydantic import SecretStr

from common.candle import Market
from common.db import connection, load_markets
from common.exchanges import EXCHANGES
from common.redis_keys import ws_send_key
from common.timeutil import MINUTE_MS
from tests.support.live import (
    FAST_HEARTBEATS,
    LiveStack,
    coverage_mismatches,
    mismatches,
    outage_share,
    outages,
    refresh_all_markets,
    wait_for,
)
from tests.support.services import RedisServer
from tests.support.simulator import running_simulator, simulator_process

pytestmark = pytest.mark.e2e


@pytest.fixture
def logdir():
    path = Path(tempfile.mkdtemp(prefix="cfr-live-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def trading(settings, exchange: str) -> list[Market]:
    with connection(settings) as conn:
        return load_markets(conn, exchange, trading_only=True)


def assert_matches_truth(stack: LiveStack, exchanges, start_ms: int, end_ms: int) -> None:
    assert end_ms - start_ms >= 3 * MINUTE_MS, (start_ms, end_ms)
    for exchange in exchanges:
        problems = mismatches(
            stack.settings, stack.sim, exchange, trading(stack.settings, exchange), start_ms, end_ms
        )
        assert problems == [], (
            f"{len(problems)} differences, e.g. {problems[:5]}\n{stack.output(exchange)[-3000:]}"
        )


def test_full_market_lists_equal_ground_truth_and_users_get_the_latest_bar(settings, logdir):
    """Every market of all three exchanges (1,695 + 909 + 293) for tens of simulated minutes."""
    # 20x with one update a minute keeps the simulator's own load low enough for a shared machine
    flags = ("--markets", "all", "--speed", "20", "--max-updates-per-real-second", "1")
    flags += ("--bitfinex-snapshot-candles", "5", *FAST_HEARTBEATS)
    with simulator_process(*flags) as sim:
        live_settings = settings.model_copy(update=sim.settings_overrides())
        refresh_all_markets(live_settings)
        counts = {ex: len(trading(settings, ex)) for ex in EXCHANGES}
        assert counts["binance"] > 1000 and counts["bittrex"] > 500 and counts["bitfinex"] > 200
        stack = LiveStack(live_settings, sim, logdir)
        try:
            client = stack.redis()
            watched = trading(settings, "binance")[0]
            channel = ws_send_key("binance", watched.base_id, watched.quote_id)
            subscriber = client.pubsub()
            subscriber.subscribe(channel)
            start = stack.start_all(EXCHANGES)
            for exchange in EXCHANGES:
                stack.wait_clock_past(exchange, start + 12 * MINUTE_MS)
            end = stack.wait_flushed(EXCHANGES)

            received = []
            wait_for(lambda: received.extend(_messages(subscriber)) or received, 30, "a bar on the channel")
            assert stack.stop("binance") == 0
            received.extend(_messages(subscriber, settle=1.0))
            latest = json.loads(received[-1])
            assert set(latest) == {"time", "open", "high", "low", "close", "volume"}
            assert isinstance(latest["time"], int) and all(
                isinstance(latest[k], str) for k in latest if k != "time"
            )
            stored = {k.decode(): v.decode() for k, v in client.hgetall(channel).items()}
            assert stored == {k: str(v) for k, v in latest.items()}
            times = [json.loads(m)["time"] for m in received]
            assert times == sorted(times), "the channel never goes back in time"
            stack.stop_all()  # the database is complete up to `end`; the truth is read from an idle simulator

            assert_matches_truth(stack, EXCHANGES, start, end)
            for exchange in EXCHANGES:  # a busy machine may stall the simulator; most minutes still count
                share = outage_share(settings, exchange, trading(settings, exchange), start, end)
                reasons = {o.reason for rows in outages(settings, exchange).values() for o in rows}
                assert share < 0.3, f"{exchange}: {share:.0%} of the minutes fell in outages: {reasons}"
        finally:
            stack.stop_all()


def _messages(subscriber, settle: float = 0.0) -> list[str]:
    found = []
    deadline = time.monotonic() + settle
    while True:
        message = subscriber.get_message(timeout=0.2)
        if message is not None and message["type"] == "message":
            found.append(message["data"].decode())
        elif message is None and time.monotonic() >= deadline:
            return found


FAST = dict(speed=60.0, markets=40, ws_connections_window_seconds=3.0)


def test_faults_are_survived_and_every_outage_is_recorded(settings, logdir):
    """Drops, a stall, malformed frames, Bitfinex 20051/20060/20061, Binance serverShutdown and a
    Redis restart (with its data kept, as production Redis does)."""
    durable = RedisServer(persistent=True).start()
    with running_simulator(**FAST) as sim:
        live_settings = settings.model_copy(
            update={
                **sim.settings_overrides(),
                "redis_port": durable.port,
                "redis_password": SecretStr(durable.password),
            }
        )
        refresh_all_markets(live_settings)
        stack = LiveStack(live_settings, sim, logdir, {"WS_MARKETS_REFRESH_SECONDS": "1"})
        listed_later = trading(settings, "bittrex")[-1]
        _set_trading(settings, listed_later, False)
        try:
            start = stack.start_all(EXCHANGES)

            _set_trading(settings, listed_later, True)  # listed while running: picked up
            key = ws_send_key("bittrex", listed_later.base_id, listed_later.quote_id)
            wait_for(lambda: stack.redis().exists(key), 30, "the newly listed market to stream")

            def settle(minutes: int = 2) -> None:
                now = max(stack.exchange_clock(ex) for ex in EXCHANGES)
                for exchange in EXCHANGES:
                    stack.wait_clock_past(exchange, now + minutes * MINUTE_MS)
                    stack.wait_connected(exchange)

            sim.set_faults("all", drop_ws=True)
            settle()
            reconnects = int(stack.health("bitfinex")["reconnects"])
            sim.set_faults("bitfinex", ws_stall=True)
            wait_for(
                lambda: int(stack.health("bitfinex")["reconnects"]) > reconnects, 30, "a stall reconnect"
            )
            sim.set_faults("bitfinex", ws_stall=False)
            settle()
            sim.set_faults("binance", ws_malformed_rate=0.05)
            time.sleep(1.0)  # malformed frames flow for a moment (not a timed assertion)
            sim.set_faults("binance", ws_malformed_rate=0.0)
            sim.set_faults("bitfinex", ws_info=20051)
            sim.set_faults("binance", server_shutdown=True)
            settle()
            sim.set_faults("bitfinex", ws_info=20060, maintenance_seconds=1.0)
            settle()
            durable.halt()
            time.sleep(1.0)  # Redis stays down for a moment while bars keep coming
            durable.start()
            settle(6)  # long enough for every connection to cover a few minutes again
            end = stack.wait_flushed(EXCHANGES)

            assert_matches_truth(stack, EXCHANGES, start, end)
            for exchange in EXCHANGES:  # every minute coverage vouches for equals the truth
                lies, covered = coverage_mismatches(settings, sim, exchange, trading(settings, exchange))
                assert lies == [] and covered > 0, (covered, lies[:5])
            reasons = {
                ex: {o.reason for rows in outages(settings, ex).values() for o in rows} for ex in EXCHANGES
            }
            for exchange in EXCHANGES:
                assert any("connection lost" in r for r in reasons[exchange]), reasons
            assert any("silent" in r for r in reasons["bitfinex"]), reasons["bitfinex"]
            assert any("20051" in r for r in reasons["bitfinex"]), reasons["bitfinex"]
            assert any("maintenance" in r for r in reasons["bitfinex"]), reasons["bitfinex"]
            assert any("serverShutdown" in r for r in reasons["binance"]), reasons["binance"]
            # a mangled frame costs no reconnect; only a close it took is an outage (checked above:
            # the minutes equal the truth or lie inside an outage, and coverage holds no wrong one)
            assert int(stack.health("binance")["bad_frames"]) >= 1
            for exchange in EXCHANGES:
                assert stack.procs[exchange].poll() is None, stack.output(exchange)[-3000:]
        finally:
            stack.stop_all()
            durable.stop()


def _set_trading(settings, market: Market, trading_now: bool) -> None:
    with connection(settings) as conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE symbol_exchange SET is_trading = %s WHERE exchange = %s AND symbol = %s",
            (trading_now, market.exchange, market.symbol),
        )


def test_kill_9_of_the_updater_and_of_a_fetcher_loses_and_doubles_nothing(settings, logdir):
    with running_simulator(**FAST) as sim:
        live_settings = settings.model_copy(update=sim.settings_overrides())
        refresh_all_markets(live_settings, ["binance", "bittrex"])
        stack = LiveStack(live_settings, sim, logdir)
        exchanges = ["binance", "bittrex"]
        try:
            start = stack.start_all(exchanges)
            rng = random.Random(7)
            for _ in range(8):  # the updater flushes every 0.5 s: some kills land inside a flush
                time.sleep(rng.uniform(0.2, 1.2))
                stack.kill("updater")
                stack.update()
            stack.kill("binance")
            time.sleep(1.5)  # the fetcher is away for a while
            stack.fetch("binance")
            stack.wait_connected("binance")
            now = max(stack.exchange_clock(ex) for ex in exchanges)
            for exchange in exchanges:
                stack.wait_clock_past(exchange, now + 3 * MINUTE_MS)
            end = stack.wait_flushed(exchanges)
            assert_matches_truth(stack, exchanges, start, end)
            stopped = {o.reason for rows in outages(settings, "binance").values() for o in rows}
            assert stopped == {"fetcher stopped"}, stopped
            assert outages(settings, "bittrex") == {}
        finally:
            stack.stop_all()


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["fetch", "--exchange", "kraken"], "unknown exchange 'kraken'"),
        (["fetch", "--exchange", "binance", "--shard", "3/2"], "--shard 3/2"),
        (["fetch", "--exchange", "binance", "--symbols", "NOPE/USD"], "unknown symbol 'NOPE/USD'"),
    ],
)
def test_bad_input_exits_2_with_one_line(settings, args, fragment):
    result = subprocess.run(
        [sys.executable, "-m", "scripts.fetchers.ws", *args],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert fragment in result.stderr and len(result.stderr.strip().splitlines()) == 1
