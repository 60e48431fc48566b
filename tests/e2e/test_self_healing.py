"""Self-healing history end to end, as users run it: the simulator at an accelerated clock, the
websocket fetchers, the updater, a Celery worker and Celery beat as processes. Connections are
dropped for several simulated minutes and a fetcher is stopped for a while; with no user action the
beat's repair makes `ohlcvs` equal the ground truth again and coverage shows no gap."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from common.db import connection, load_markets
from common.timeutil import MINUTE_MS
from fetchers.rest.gaps import missing_ranges
from fetchers.rest.repair import load_evidence
from tests.conftest import simulator_limits
from tests.support.live import LiveStack, coverage_mismatches, refresh_all_markets, wait_for
from tests.support.simulator import running_simulator

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
EXCHANGES = ["binance", "bitfinex", "bittrex"]
REPAIR_INTERVAL_SECONDS = 4


@pytest.fixture
def logdir():
    path = Path(tempfile.mkdtemp(prefix="cfr-heal-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def celery(stack: LiveStack, logdir: Path, *args: str) -> subprocess.Popen:
    log = open(logdir / f"celery-{args[0]}.out", "a")  # noqa: SIM115 - closed with the process
    env = stack.env()
    env.update({key.upper(): str(value) for key, value in simulator_limits(stack.sim).items()})
    env.update(REPAIR_INTERVAL_SECONDS=str(REPAIR_INTERVAL_SECONDS), REPAIR_SETTLE_MINUTES="3")
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "celery_app.celery_main", *args],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    return proc


def gaps_before(settings, exchange: str, end_ms: int) -> dict:
    with connection(settings) as conn:
        evidence = load_evidence(conn, exchange)
    return {key: gaps for key, ev in evidence.items() if (gaps := missing_ranges(ev, 0, end_ms))}


def test_dropped_connections_and_a_stopped_fetcher_heal_without_user_action(settings, logdir):
    with running_simulator(speed=60.0, markets=4, ws_connections_window_seconds=3.0) as sim:
        live_settings = settings.model_copy(update=sim.settings_overrides())
        refresh_all_markets(live_settings, EXCHANGES)
        stack = LiveStack(live_settings, sim, logdir)
        workers = []
        try:
            stack.start_all(EXCHANGES)
            queues = ",".join(f"{ex}_rest" for ex in EXCHANGES)
            workers.append(
                celery(stack, logdir, "worker", "-Q", queues, "--concurrency", "1", "--loglevel", "INFO")
            )
            workers.append(
                celery(stack, logdir, "beat", "-s", str(logdir / "beat-schedule"), "--loglevel", "INFO")
            )
            clock = stack.exchange_clock("binance")
            stack.wait_clock_past("binance", clock + 3 * MINUTE_MS)

            # binance: every connection dropped again and again for five simulated minutes
            until = stack.exchange_clock("binance") + 5 * MINUTE_MS
            while stack.exchange_clock("binance") < until:
                sim.set_faults("binance", drop_ws=True)
                time.sleep(0.3)
            # bitfinex: the fetcher process stopped for five simulated minutes
            assert stack.stop("bitfinex") == 0
            stack.wait_clock_past("binance", stack.exchange_clock("binance") + 5 * MINUTE_MS)
            stack.fetch("bitfinex")
            for exchange in EXCHANGES:
                stack.wait_connected(exchange)
            end = max(stack.exchange_clock(ex) for ex in EXCHANGES) + MINUTE_MS
            for exchange in EXCHANGES:  # past the settle time, so the repair may plan up to `end`
                stack.wait_clock_past(exchange, end + 5 * MINUTE_MS)

            for exchange in EXCHANGES:
                wait_for(
                    lambda ex=exchange: not gaps_before(settings, ex, end),
                    120,
                    f"{exchange}: the repair to fill every gap before {end}",
                )
            for exchange in EXCHANGES:
                with connection(settings) as conn:
                    markets = load_markets(conn, exchange, trading_only=True)
                lies, covered = coverage_mismatches(settings, sim, exchange, markets)
                assert lies == [], lies[:5]
                assert covered > 0
            with connection(settings) as conn, conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM ohlcvs_outages WHERE exchange = 'binance'")
                assert cur.fetchone()[0] > 0  # the drops were recorded
                cur.execute("SELECT DISTINCT exchange FROM ohlcvs_coverage WHERE source = 'rest'")
                assert {row[0] for row in cur.fetchall()} == set(EXCHANGES)  # and repaired over REST
            assert "repair_gaps" in (logdir / "celery-worker.out").read_text()
        finally:
            for proc in workers:
                proc.send_signal(signal.SIGTERM)
            for proc in workers:
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            stack.stop_all()
