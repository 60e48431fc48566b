"""`GET /metrics` while the platform runs on the simulator, every part a process as users run it:
the three websocket fetchers, the updater, a Celery worker and the web app. One scrape shows every
process's counters moving, and a fault injected through the simulator's control API shows in its
counter: dropped websockets as reconnects, invalid frames as bad frames, a 429 storm as REST
answers with status 429 and as pause seconds."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from common.db import connection, load_markets
from common.exchanges import EXCHANGES
from common.timeutil import ms_to_datetime
from fetchers.rest.jobs import create_job
from tests.conftest import simulator_limits
from tests.support.backfill import day_aligned_range
from tests.support.live import LiveStack, refresh_all_markets, wait_for
from tests.support.metrics import Scrape, scrape
from tests.support.services import stop_process
from tests.support.simulator import running_simulator
from tests.support.web import web_process

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
FAST_METRICS = {"METRICS_PUBLISH_SECONDS": "0.5", "METRICS_STATE_SECONDS": "0.5"}
STORM_SECONDS = 8
"""Long enough to outlast `resume` finding the worker and the worker taking the job."""


@pytest.fixture
def logdir():
    path = Path(tempfile.mkdtemp(prefix="cfr-metrics-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def roles(found: Scrape) -> set[str]:
    return {s.labels["process"].split("@", 1)[0] for s in found.samples if "process" in s.labels}


def worker(stack: LiveStack, logdir: Path) -> subprocess.Popen:
    env = stack.env()
    env.update({key.upper(): str(value) for key, value in simulator_limits(stack.sim).items()})
    with open(logdir / "worker.out", "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "celery_app.celery_main", "worker", "-Q", "binance_rest",
             "--concurrency", "1", "--hostname", f"metrics-{time.time_ns()}@%h", "--loglevel", "INFO"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip


def resume_on_worker(stack: LiveStack, job_id: str) -> subprocess.CompletedProcess:
    """`rest resume --job ID --wait` once a worker answers on the queue."""
    env = stack.env()
    env.update({key.upper(): str(value) for key, value in simulator_limits(stack.sim).items()})
    deadline = time.monotonic() + 90
    while True:
        result = subprocess.run(
            [sys.executable, "-m", "scripts.fetchers.rest",
             "resume", "--exchange", "binance", "--job", job_id, "--wait"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        if "no Celery worker" not in result.stderr or time.monotonic() > deadline:
            return result
        time.sleep(1)


def test_one_scrape_sees_every_process_and_injected_faults_move_their_counters(settings, logdir):
    with running_simulator(speed=60.0, markets=4, ws_connections_window_seconds=3.0) as sim:
        live_settings = settings.model_copy(update=sim.settings_overrides())
        refresh_all_markets(live_settings, EXCHANGES)
        stack = LiveStack(live_settings, sim, logdir, extra_env=FAST_METRICS)
        celery = None
        try:
            stack.start_all(EXCHANGES)
            celery = worker(stack, logdir)
            with web_process(stack.env(), logdir / "web.out") as web:
                wanted = {*(f"fetch-{ex}" for ex in EXCHANGES), "updater", "worker"}
                seen: list[set[str]] = [set()]

                def every_role() -> bool:
                    seen[0] = roles(scrape(web))
                    return wanted <= seen[0]

                try:
                    wait_for(every_role, 60, f"snapshots of {sorted(wanted)}")
                except AssertionError as error:
                    log = (logdir / "worker.out").read_text()[-3000:]
                    raise AssertionError(f"{error}; only {sorted(seen[0])}\n{log}") from None

                first = scrape(web)
                for exchange in EXCHANGES:
                    assert first.total("cfr_ws_connections_up", exchange=exchange) > 0, exchange
                    assert first.total("cfr_ws_seconds_since_last_message", exchange=exchange) < 10, exchange
                wait_for(
                    lambda: all(
                        scrape(web).total("cfr_ws_messages_total", exchange=ex)
                        > first.total("cfr_ws_messages_total", exchange=ex)
                        for ex in EXCHANGES
                    ),
                    30,
                    "messages counted on every exchange",
                )
                wait_for(
                    lambda: (
                        scrape(web).total("cfr_updater_rows_flushed_total")
                        > first.total("cfr_updater_rows_flushed_total")
                    ),
                    60,
                    "rows flushed",
                )
                assert scrape(web).total("cfr_updater_seconds_since_flush") < 10

                # every websocket of binance dropped: its reconnects, and only its, go up
                before = scrape(web)
                sim.set_faults("binance", drop_ws=True)
                wait_for(
                    lambda: (
                        scrape(web).total("cfr_ws_reconnects_total", exchange="binance")
                        > before.total("cfr_ws_reconnects_total", exchange="binance")
                    ),
                    30,
                    "binance reconnects counted",
                )
                after = scrape(web)
                assert after.total("cfr_ws_reconnects_total", exchange="bittrex") == before.total(
                    "cfr_ws_reconnects_total", exchange="bittrex"
                )
                stack.wait_connected("binance")

                # invalid frames on bitfinex: counted as bad frames
                sim.set_faults("bitfinex", ws_malformed_rate=0.5)
                wait_for(
                    lambda: (
                        scrape(web).total("cfr_ws_bad_frames_total", exchange="bitfinex")
                        > before.total("cfr_ws_bad_frames_total", exchange="bitfinex")
                    ),
                    30,
                    "bitfinex bad frames counted",
                )
                sim.reset_faults("bitfinex")

                # a 429 storm while the worker backfills: the answers by status, and the pause
                with connection(live_settings) as conn:
                    symbols = [m.symbol for m in load_markets(conn, "binance", trading_only=True)[:2]]
                start_ms, end_ms = day_aligned_range(sim, days_back=2, days=1)
                now = ms_to_datetime(sim.clock()["current_minute_ms"])
                job = asyncio.run(
                    create_job(
                        live_settings,
                        "binance",
                        ms_to_datetime(start_ms),
                        ms_to_datetime(end_ms),
                        symbols,
                        now,
                    )
                )
                wait_for(
                    lambda: (
                        scrape(web).total("cfr_jobs", exchange="binance", kind="backfill", state="queued")
                        == 1
                    ),
                    10,
                    "the job queued",
                )
                assert scrape(web).total("cfr_rest_requests_total", status="429") == 0
                sim.set_faults("binance", storm_seconds=STORM_SECONDS)
                result = resume_on_worker(stack, job.id)
                assert result.returncode == 0, result.stderr + (logdir / "worker.out").read_text()[-3000:]

                counted: dict[str, float] = {}

                def storm_counted() -> bool:
                    found = scrape(web)
                    for status in ("200", "429"):
                        counted[status] = found.total(
                            "cfr_rest_requests_total", exchange="binance", status=status
                        )
                    return counted["429"] > 0 and counted["200"] >= job.total

                try:
                    wait_for(storm_counted, 15, "the storm's 429s and the job's 200s counted")
                except AssertionError as error:
                    raise AssertionError(f"{error}: {counted}, {job.total} requests planned") from None
                final = scrape(web)
                assert final.total("cfr_rest_pause_seconds_total", exchange="binance") > 0
                assert final.total("cfr_rest_request_weight_total", exchange="binance") > 0
                wait_for(
                    lambda: (
                        scrape(web).total("cfr_jobs", exchange="binance", kind="backfill", state="done") == 1
                    ),
                    10,
                    "the job done",
                )
                assert final.types["cfr_rest_requests"] == "counter"
        finally:
            if celery is not None:
                stop_process(celery, timeout=20)
            stack.stop_all()
