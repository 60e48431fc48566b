"""/view/wschart in headless Chromium (Debian's, driven by Playwright) against a running server.

History comes from a REST backfill of the simulator, or for the gap test from rows written straight
into `ohlcvs`. The live websocket fetcher is not part of these tests: a live bar is written to Redis
by `imitate_live_pipeline_bar`, exactly as the live pipeline's contract says the fetcher writes it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from urllib.request import urlopen

import pytest

from common.candle import Candle, Market
from common.db import connection, refresh_aggregates, upsert_candles, upsert_markets
from tests.conftest import service_env
from tests.support.backfill import day_aligned_range, run_job
from tests.support.services import free_port, stop_process, wait_for
from tests.support.web import chromium_page, http_get, imitate_live_pipeline_bar, market_key

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
BTC = Market("binance", "BTC", "USDT", "BTCUSDT")
BTCUSD = Market("bitfinex", "BTC", "USD", "tBTCUSD")
MINUTE = 60
HOUR = 3600
DAY = 86_400

# Pixels of the candle colours (#26a69a up, #ef5350 down) on the chart's canvases.
COUNT_CANDLE_PIXELS = """() => {
  let count = 0;
  for (const canvas of document.querySelectorAll('#chart canvas')) {
    const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    for (let i = 0; i < data.length; i += 4) {
      const [r, g, b] = [data[i], data[i + 1], data[i + 2]];
      if ((Math.abs(r - 38) < 8 && Math.abs(g - 166) < 8 && Math.abs(b - 154) < 8) ||
          (Math.abs(r - 239) < 8 && Math.abs(g - 83) < 8 && Math.abs(b - 80) < 8)) count++;
    }
  }
  return count;
}"""


# Pixels of the strip's "complete" colour on the coverage canvas under the chart.
COUNT_STRIP_PIXELS = """() => {
  const canvas = document.getElementById('coverage');
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let count = 0;
  for (let i = 0; i < data.length; i += 4) if (data[i + 3] > 0 && Math.abs(data[i + 1] - 166) < 8) count++;
  return count;
}"""


def test_chart_draws_history_switches_period_and_ticks_live(
    platform_settings, simulator, redis_server, tmp_path
):
    start_ms, end_ms = day_aligned_range(simulator, days_back=3, days=3)
    job = run_job(platform_settings, "binance", start_ms, end_ms, ["BTCUSDT"])
    assert job.finished and job.failed == 0 and job.refreshed
    wait_for(
        lambda: simulator.truth("binance", "BTCUSDT", end_ms, end_ms + 60_000), 30, "the next minute closes"
    )
    live = simulator.truth("binance", "BTCUSDT", end_ms, end_ms + 60_000)[0]

    env = {**service_env(platform_settings), "LOG_DIR": str(tmp_path)}
    with chromium_page(env, tmp_path / "web.log") as (base, page, errors):
        page.goto(f"{base}/view/wschart?exchange=binance&base=BTC&quote=USDT&period=1D")

        page.wait_for_function("() => window.cfrChart && window.cfrChart.barCount() > 0", timeout=30_000)
        # 3 days of 5-minute bars: one page of 500, the newest first
        assert page.evaluate("() => window.cfrChart.barCount()") == 500
        page.wait_for_function(f"() => ({COUNT_CANDLE_PIXELS})() > 200", timeout=15_000)
        # the strip under the candles: the backfilled range is complete, nothing is missing
        page.wait_for_function("() => window.cfrChart.coverage() !== null", timeout=30_000)
        coverage = page.evaluate("() => window.cfrChart.coverage()")
        shown_from = page.evaluate("() => window.cfrChart.state.bars[0].time") * 1000
        assert coverage["covered"] == [[shown_from, end_ms]] and coverage["missing"] == []
        page.wait_for_function(f"() => ({COUNT_STRIP_PIXELS})() > 100", timeout=15_000)

        page.get_by_role("button", name="1h", exact=True).click()
        page.wait_for_function(
            "() => window.cfrChart.state.period === '1h' && window.cfrChart.barCount() === 500",
            timeout=30_000,
        )
        assert "period=1h" in page.url and "exchange=binance" in page.url
        last = page.evaluate("() => window.cfrChart.lastBar()")
        assert last["time"] * 1000 == end_ms - 60_000, "history ends at the last backfilled minute"

        page.evaluate("() => window.cfrChart.scrollBack()")
        page.wait_for_function("() => window.cfrChart.barCount() === 1000", timeout=30_000)
        first = page.evaluate("() => window.cfrChart.state.bars[0].time")
        assert first * 1000 == end_ms - 1000 * 60_000, "scrolling back loaded the 500 minutes before"

        # the live bar, written the way the live pipeline writes it
        imitate_live_pipeline_bar(redis_server.client(), platform_settings, BTC, live)
        page.wait_for_function(f"() => window.cfrChart.lastBar().time === {end_ms // 1000}", timeout=30_000)
        drawn = page.evaluate("() => window.cfrChart.lastBar()")
        assert Decimal(str(drawn["close"])) == Decimal(live["close"])
        assert Decimal(str(drawn["high"])) == Decimal(live["high"])
        assert page.evaluate("() => window.cfrChart.state.liveUpdates") >= 1

        page.screenshot(path=str(tmp_path / "wschart.png"))
        assert (tmp_path / "wschart.png").stat().st_size > 10_000

        page.goto(f"{base}/view/status")
        page.wait_for_function("() => window.cfrStatus !== undefined", timeout=15_000)
        jobs_text = page.inner_text("#jobs")
        assert job.id in jobs_text and f"{job.total}/{job.total}" in jobs_text and "done" in jobs_text
        page.wait_for_function("() => window.cfrStatus.coverage !== null", timeout=15_000)
        summary = {c["exchange"]: c for c in page.evaluate("() => window.cfrStatus.coverage")}
        assert summary["binance"]["missing_minutes"] == 0 and "binance" in page.inner_text("#coverage")
        # three distinct counts, each under its own label, explained under the table
        headers = page.locator("#coverage th").all_inner_texts()
        assert headers == ["Exchange", "Before first bar", "Missing", "Being repaired", "Repair"], headers
        binance = page.locator("#coverage tr", has_text="binance").locator("td").all_inner_texts()
        assert [cell.split(" min")[0] for cell in binance[1:4]] == [
            f"{summary['binance'][key]:,}"
            for key in ("before_first_bar_minutes", "awaiting_repair_minutes", "repairing_minutes")
        ], binance
        legend = page.inner_text("#coverage-legend")
        assert all(f"{label}:" in legend for label in ("Before first bar", "Missing", "Being repaired"))
        assert "binance" in page.inner_text("#fetchers") and "ok" in page.inner_text("#stores")
        page.screenshot(path=str(tmp_path / "status.png"))

        page.goto(f"{base}/view/analytics/general")
        page.wait_for_function("() => window.cfrAnalytics !== undefined", timeout=15_000)
        counts = page.evaluate("() => window.cfrAnalytics")
        assert counts["geodr"] == len(http_get(f"{base}/api/analytics/geodr", limit=-1)[1])
        assert counts["top"] == len(http_get(f"{base}/api/analytics/top20qvlm")[1])
        page.screenshot(path=str(tmp_path / "analytics.png"))
        assert errors == [], errors


def minute_candles(market: Market, start: int, count: int, price: int, skip=range(0)) -> list[Candle]:
    """`count` 1-minute candles from `start` (epoch seconds) around `price`, minutes in `skip` left
    out (as Bitfinex sends no candle for a minute without trades)."""
    candles = []
    for i in range(count):
        if i in skip:
            continue
        open_ = Decimal(price) + Decimal(i % 7) / 10
        close = open_ + Decimal(i % 3 - 1) / 10
        values = (open_, max(open_, close) + 1, min(open_, close) - 1, close, Decimal("0.5"))
        candles.append(Candle(*market_key(market), (start + i * MINUTE) * 1000, *map(str, values)))
    return candles


def test_1d_period_shows_only_its_day_after_a_year_long_gap(settings, redis_server, tmp_path):
    # The new day ends an hour before the current UTC midnight and the live bar comes half an hour
    # later: all of it closed and in the past, on whatever date this runs.
    new_end = int(time.time()) // DAY * DAY - HOUR
    new_start, old_start = new_end - DAY, new_end - 366 * DAY
    skipped = range(720, 725)  # one whole 5-minute bar missing at midday: a short gap
    with connection(settings) as conn:
        upsert_markets(conn, [BTCUSD])
        upsert_candles(conn, minute_candles(BTCUSD, old_start, 1440, 100))
        upsert_candles(conn, minute_candles(BTCUSD, new_start, 1440, 50_000, skipped))
    refresh_aggregates(settings, None, None)
    step = 5 * MINUTE
    newest = new_end - step

    env = {**service_env(settings), "LOG_DIR": str(tmp_path)}
    with chromium_page(env, tmp_path / "web.log") as (base, page, errors):
        page.goto(f"{base}/view/wschart?exchange=bitfinex&base=BTC&quote=USD&period=1D")
        page.wait_for_function(
            "() => window.cfrChart && window.cfrChart.barCount() > 0"
            " && document.getElementById('status').textContent.includes('live')",
            timeout=30_000,
        )
        # the first page of 500 reaches back into the old day: 287 new bars, 213 old ones
        assert page.evaluate("() => window.cfrChart.barCount()") == 500
        series = page.evaluate("() => window.cfrChart.seriesData()")
        average = page.evaluate("() => window.cfrChart.averageData()")
        visible = page.evaluate("() => window.cfrChart.visibleRange()")
        prices = page.evaluate("() => window.cfrChart.priceRange()")
        ma_length = page.evaluate("() => MA_LENGTH")

        bars = [p["time"] for p in series if "close" in p]
        new_bars = [t for t in bars if t >= new_start]
        last_old = max(t for t in bars if t < new_start)
        assert new_bars[0] == new_start and bars[-1] == newest

        # the view is the period: the last day, not the old bars before the gap
        assert abs(visible["from"] - (newest - DAY)) <= step, visible
        assert visible["to"] == newest, visible
        # the price scale follows that day only, far above the old price of ~100
        assert prices["from"] > 40_000, prices

        # the year between the bars is a gap: whitespace points, a few of them, not one per bar
        gap = [p for p in series if last_old < p["time"] < new_start]
        assert 0 < len(gap) <= 100 and all("close" not in p for p in gap)
        # the missing bar at midday is one whitespace point
        midday = new_start + skipped.start * MINUTE
        assert [p for p in series if p["time"] == midday] == [{"time": midday}]

        # the moving average restarts after the gap: no old price in it
        after = [p for p in average if p["time"] >= new_start and "value" in p]
        assert after[0]["time"] == new_bars[ma_length - 1], (after[0], new_bars[:ma_length])
        assert all(p["value"] > 40_000 for p in after), min(p["value"] for p in after)

        # a live bar half an hour after the newest: whitespace for the 6 bars missing between
        live_ms = (new_end + 30 * MINUTE) * 1000
        bar = {"time": live_ms, "open": "50100", "high": "50200", "low": "50000", "close": "50150"}
        client = redis_server.client()
        wait_for(
            lambda: (
                imitate_live_pipeline_bar(client, settings, BTCUSD, {**bar, "volume": "1"})
                or page.evaluate(f"() => window.cfrChart.lastBar().time === {live_ms // 1000}")
            ),
            30,
            "the live bar is drawn",
            every=1.0,
        )
        series = page.evaluate("() => window.cfrChart.seriesData()")
        assert [p for p in series if p["time"] > newest] == [
            *({"time": newest + k * step} for k in range(1, 7)),
            {**series[-1], "time": live_ms // 1000},
        ]
        assert series[-1]["close"] == 50150 and page.evaluate("() => window.cfrChart.barCount()") == 501
        assert page.evaluate("() => window.cfrChart.visibleRange().to") == live_ms // 1000

        # scrolling back loads the rest of the old day, before the same gap
        page.evaluate("() => window.cfrChart.scrollBack()")
        page.wait_for_function("() => window.cfrChart.barCount() === 576", timeout=30_000)
        series = page.evaluate("() => window.cfrChart.seriesData()")
        assert series[0]["time"] == old_start and len(series) == 576 + len(gap) + 1 + 6
        assert errors == [], errors


def test_python_m_web_serves_the_pages_and_api_on_the_configured_port(settings, tmp_path):
    port = free_port()
    env = {**os.environ, **service_env(settings), "WEB_PORT": str(port), "LOG_DIR": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "web"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: http_get(f"{base}/api/health")[0] == 200, 30, "python -m web answers")
        with urlopen(f"{base}/view/wschart") as page:
            html = page.read().decode()
        assert "/vendor/lightweight-charts/lightweight-charts.standalone.production.js" in html
        with urlopen(
            f"{base}/vendor/lightweight-charts/lightweight-charts.standalone.production.js"
        ) as script:
            assert b"LightweightCharts" in script.read(), "the library is served from node_modules"
    finally:
        stop_process(proc)
