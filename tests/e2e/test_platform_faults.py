"""The whole platform through faults, every part a process as users run it (`make demo`'s commands).

The simulator runs 60 times faster than real time and starts hours ahead of this machine's clock,
so only the exchange's own clock says what "now" is. `scripts.platform init` loads the schema and
markets; the three websocket fetchers and the updater stream live bars; the backfill CLI fetches the
last simulated hours of every market up to the exchange's present. While the live feed runs, the
test drops every websocket, `kill -9`s a fetcher and the updater (restarting them as the supervisor
does) and restarts Redis (its data kept, as production Redis does). Then `ohlcvs` must equal the
simulator's ground truth for every closed minute covered (outside recorded outages), hold no
duplicate, agree with every summary level, and `/view/wschart` must draw it in headless Chromium.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright
from pydantic import SecretStr

from common.db import AGGREGATE_LEVELS, BUCKET_ORIGIN, connection, load_markets
from common.exchanges import EXCHANGES
from common.timeutil import MINUTE_MS, ms_to_datetime
from scripts.platform import READY_LINE
from tests.e2e.test_web_chart import COUNT_CANDLE_PIXELS
from tests.support.live import FAST_HEARTBEATS, LiveStack, mismatches, outages, wait_for
from tests.support.services import RedisServer, free_port, stop_process
from tests.support.simulator import simulator_process
from tests.support.web import CHROMIUM, CHROMIUM_ARGS

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SPEED = 60
HOURS = 3
DAY_MS = 86_400_000
AHEAD_MS = DAY_MS + 80 * MINUTE_MS
"""The simulator starts 01:20 on a day after this machine's (the next one, or the one after when it
is late in our day): its present is at least a day ahead whenever the test runs, and the backfilled
hours straddle its midnight (Bittrex serves the finished day and today differently)."""


@pytest.fixture
def logdir():
    path = Path(tempfile.mkdtemp(prefix="cfr-platform-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run(stack: LiveStack, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        env=stack.env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def backfill_last_hours(stack: LiveStack, start_ms: int, end_ms: int) -> None:
    """The three exchanges' backfills at once, each `python -m scripts.fetchers.rest fetch --local`."""
    iso = [ms_to_datetime(ms).strftime("%Y-%m-%dT%H:%M:%S") for ms in (start_ms, end_ms)]
    procs = {
        exchange: subprocess.Popen(
            [
                sys.executable,
                "-m",
                "scripts.fetchers.rest",
                "fetch",
                "--exchange",
                exchange,
                "--start",
                iso[0],
                "--end",
                iso[1],
                "--local",
            ],
            cwd=ROOT,
            env=stack.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for exchange in EXCHANGES
    }
    for exchange, proc in procs.items():
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, f"{exchange} backfill: {out}{err}"
        assert "0 failed" in out, out


def duplicates(settings) -> list[tuple]:
    with connection(settings) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT exchange, base_id, quote_id, time, count(*) FROM ohlcvs "
            "GROUP BY exchange, base_id, quote_id, time HAVING count(*) > 1"
        )
        return cur.fetchall()


def aggregate_differences(settings, closed_until_ms: int) -> list[str]:
    """Every summary bucket closed by `closed_until_ms` against the same figures from the 1m rows."""
    closed_until = ms_to_datetime(closed_until_ms)
    problems = []
    with connection(settings) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT exchange, base_id, quote_id, time, open, high, low, close, volume FROM ohlcvs "
            "ORDER BY time"
        )
        rows = cur.fetchall()
        for name, width in AGGREGATE_LEVELS.items():
            expected: dict = {}
            for exchange, base, quote, t, open_, high, low, close, volume in rows:
                key = (exchange, base, quote, BUCKET_ORIGIN + ((t - BUCKET_ORIGIN) // width) * width)
                g = expected.get(key)
                if g is None:
                    expected[key] = [open_, high, low, close, volume]
                else:
                    g[1], g[2], g[3], g[4] = max(g[1], high), min(g[2], low), close, g[4] + volume
            cur.execute(
                f"SELECT exchange, base_id, quote_id, bucket, open, high, low, close, volume FROM {name}"
            )
            shown = {tuple(r[:4]): list(r[4:]) for r in cur.fetchall()}
            for key, values in expected.items():
                if key[3] + width <= closed_until and shown.get(key) != values:
                    problems.append(f"{name} {key}: shows {shown.get(key)}, 1m rows give {values}")
            counted = {}
            for key in shown:
                counted[key] = counted.get(key, 0) + 1
            problems += [f"{name} {key}: {n} rows" for key, n in counted.items() if n > 1]
    return problems


def test_backfill_and_live_through_faults_equal_the_exchanges(settings, logdir):
    local_now = int(time.time() * 1000)
    sim_start = local_now - local_now % DAY_MS + AHEAD_MS
    if sim_start < local_now + DAY_MS:  # late in our day: the next simulated day, never < a day ahead
        sim_start += DAY_MS
    durable = RedisServer(persistent=True).start()
    flags = ("--markets", "3", "--speed", str(SPEED), "--start", ms_to_datetime(sim_start).isoformat())
    web = None
    with simulator_process(*flags, *FAST_HEARTBEATS) as sim:
        live = settings.model_copy(
            update={
                **sim.settings_overrides(),
                "redis_port": durable.port,
                "redis_password": SecretStr(durable.password),
            }
        )
        stack = LiveStack(live, sim, logdir)
        try:
            init = run(stack, "scripts.platform", "init")
            assert init.returncode == 0, init.stderr
            assert (logdir / "init.log").read_text().strip().splitlines()[-1].endswith(READY_LINE)

            live_start = stack.start_all(EXCHANGES)
            wait_for(lambda: sim.clock()["current_minute_ms"] >= live_start, 30, "the first live minute")
            backfill_end = sim.clock()["current_minute_ms"]
            backfill_start = backfill_end - HOURS * 60 * MINUTE_MS
            assert backfill_end > time.time() * 1000 + DAY_MS / 2, "the exchange's present is ahead of ours"
            backfill_last_hours(stack, backfill_start, backfill_end)

            def settle(minutes: int = 2) -> None:
                now = max(stack.exchange_clock(ex) for ex in EXCHANGES)
                for exchange in EXCHANGES:
                    stack.wait_clock_past(exchange, now + minutes * MINUTE_MS)
                    stack.wait_connected(exchange)

            sim.set_faults("all", drop_ws=True)  # every connection drops
            settle()
            stack.kill("bittrex")  # kill -9 of one fetcher; the supervisor starts it again
            stack.fetch("bittrex")
            settle()
            stack.kill("updater")  # kill -9 of the updater, restarted the same way
            stack.update()
            settle()
            durable.halt()  # Redis restarts, keeping its data
            time.sleep(1.0)  # bars keep coming while it is down (not a timed assertion)
            durable.start()
            settle(3)
            end = stack.wait_flushed(EXCHANGES)

            for exchange in EXCHANGES:
                with connection(live) as conn:
                    markets = load_markets(conn, exchange, trading_only=True)
                assert len(markets) == 3
                problems = mismatches(live, sim, exchange, markets, backfill_start, end)
                assert problems == [], f"{len(problems)} differences, e.g. {problems[:5]}"
            assert duplicates(live) == []
            reasons = {o.reason for ex in EXCHANGES for rows in outages(live, ex).values() for o in rows}
            assert any("connection lost" in r for r in reasons), reasons
            assert any("fetcher stopped" in r for r in reasons), reasons
            assert aggregate_differences(live, end - 5 * MINUTE_MS) == []

            web_port = free_port()
            web = subprocess.Popen(
                [sys.executable, "-m", "web"],
                cwd=ROOT,
                env={**stack.env(), "WEB_PORT": str(web_port)},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            chart = f"http://127.0.0.1:{web_port}/view/wschart?exchange=binance&base=BTC&quote=USDT&period=6h"
            assert_chart_shows(chart, newest_ms=end - MINUTE_MS)
        finally:
            if web is not None:
                stop_process(web)
            stack.stop_all()
            durable.stop()


def assert_chart_shows(url: str, newest_ms: int) -> None:
    """The page draws candles up to the newest stored minute and ticks with the live feed."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            wait_for(lambda: page.goto(url).ok, 30, "the web app to serve the chart")
            page.wait_for_function(
                f"() => window.cfrChart && window.cfrChart.barCount() > 0 "
                f"&& window.cfrChart.lastBar().time >= {newest_ms // 1000}",
                timeout=30_000,
            )
            assert page.evaluate("() => window.cfrChart.barCount()") >= HOURS * 60
            page.wait_for_function(f"() => ({COUNT_CANDLE_PIXELS})() > 200", timeout=15_000)
            page.wait_for_function("() => window.cfrChart.state.liveUpdates >= 1", timeout=30_000)
            assert errors == [], errors
        finally:
            browser.close()
