"""/view/wschart in headless Chromium (Debian's, driven by Playwright) against a running server.

History comes from a REST backfill of the simulator. The live websocket fetcher is not part of this
test: the live bar is written to Redis by `imitate_live_pipeline_bar`, exactly as the live pipeline's
contract says the fetcher writes it, with values from the simulator's ground truth.
"""

from __future__ import annotations

import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from urllib.request import urlopen

import pytest
from playwright.sync_api import sync_playwright

from common.candle import Market
from tests.conftest import service_env
from tests.support.backfill import day_aligned_range, run_job
from tests.support.services import free_port, stop_process, wait_for
from tests.support.web import http_get, imitate_live_pipeline_bar, web_process

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
BTC = Market("binance", "BTC", "USDT", "BTCUSDT")

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
    with web_process(env, tmp_path / "web.log") as base, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
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
            page.wait_for_function(
                f"() => window.cfrChart.lastBar().time === {end_ms // 1000}", timeout=30_000
            )
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
            assert "binance" in page.inner_text("#fetchers") and "ok" in page.inner_text("#stores")
            page.screenshot(path=str(tmp_path / "status.png"))

            page.goto(f"{base}/view/analytics/general")
            page.wait_for_function("() => window.cfrAnalytics !== undefined", timeout=15_000)
            counts = page.evaluate("() => window.cfrAnalytics")
            assert counts["geodr"] == len(http_get(f"{base}/api/analytics/geodr", limit=-1)[1])
            assert counts["top"] == len(http_get(f"{base}/api/analytics/top20qvlm")[1])
            page.screenshot(path=str(tmp_path / "analytics.png"))
            assert errors == [], errors
        finally:
            browser.close()


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
