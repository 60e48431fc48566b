"""Self-healing history end to end, as users run it: the simulator at an accelerated clock, the
websocket fetchers, the updater, a Celery worker and Celery beat as processes. Connections are
dropped for several simulated minutes and a fetcher is stopped for a while; with no user action the
beat's repair makes `ohlcvs` equal the ground truth again and coverage shows no gap."""

from __future__ import annotations

import ast
import json
import os
import shelve
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qs

import pytest
import redis

from common.completeness import missing_ranges
from common.coverage import load_evidence
from common.db import connection, load_markets
from common.exchanges import EXCHANGES
from common.timeutil import MINUTE_MS, ms_to_datetime
from tests.conftest import service_env, simulator_limits
from tests.support.backfill import RecordingProxy, day_aligned_range, stored_candles, truth_candles
from tests.support.live import LiveStack, coverage_mismatches, mismatches, refresh_all_markets, wait_for
from tests.support.services import stop_process
from tests.support.simulator import running_simulator

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
REPAIR_INTERVAL_SECONDS = 4
REPAIR_TASK = "celery_app.celery_tasks.repair_gaps"


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


def repair_runs(worker_log: Path, exchange: str) -> list[tuple[str, dict]]:
    """The worker's repair runs of `exchange` in order: ("planned" | "ended", the run's record)."""
    runs = []
    for line in worker_log.read_text().splitlines():
        for kind in ("planned", "ended"):
            _, marker, record = line.partition(f"repair run {kind}: ")
            if marker and (run := json.loads(record))["exchange"] == exchange:
                runs.append((kind, run))
    return runs


def healing_run(runs: list[tuple[str, dict]], end_ms: int) -> tuple[dict, dict | None] | None:
    """The promise: the first repair run that plans up to `end_ms` or later (the first to start once
    the faults are past the settle time, or the first after the repair job then unfinished) leaves
    no gap before `end_ms`: it finds none, or its job fills them all. Its (planned, ended) records
    once it has ended (ended is None when it found nothing to repair)."""
    planned = next(
        (run for kind, run in runs if kind == "planned" and (run["until_ms"] or 0) >= end_ms), None
    )
    if planned is None:
        return None
    if planned["job"] is None:
        return planned, None
    ended = next((run for kind, run in runs if kind == "ended" and run["job"] == planned["job"]), None)
    return None if ended is None else (planned, ended)


def test_dropped_connections_and_a_stopped_fetcher_heal_without_user_action(settings, logdir):
    with running_simulator(speed=60.0, markets=4, ws_connections_window_seconds=3.0) as sim:
        live_settings = settings.model_copy(update=sim.settings_overrides())
        refresh_all_markets(live_settings, EXCHANGES)
        stack = LiveStack(live_settings, sim, logdir)
        workers = []
        try:
            start = stack.start_all(EXCHANGES)
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

            worker_log = logdir / "celery-worker.out"
            for exchange in EXCHANGES:
                wait_for(
                    lambda ex=exchange: healing_run(repair_runs(worker_log, ex), end) is not None,
                    180,
                    f"{exchange}: a repair run planned past {end} to end",
                )
            for exchange in EXCHANGES:
                runs = repair_runs(worker_log, exchange)
                planned, ended = healing_run(runs, end)
                if ended is None:  # earlier runs had closed every gap: this one found nothing
                    assert planned["missing_minutes"] == 0, planned
                else:  # it found the gaps left and its job closed them all
                    assert planned["new"], planned
                    assert ended["left"] == 0 and ended["failed"] == 0 and not ended["yielded"], ended
                after = runs[runs.index(("planned", planned)) + 1 :]
                assert all(
                    run["oldest_gap_ms"] is None or run["oldest_gap_ms"] >= end
                    for kind, run in after
                    if kind == "planned"
                ), (exchange, after)
                assert not gaps_before(settings, exchange, end)
            for exchange in EXCHANGES:
                with connection(settings) as conn:
                    markets = load_markets(conn, exchange, trading_only=True)
                lies, covered = coverage_mismatches(settings, sim, exchange, markets)
                assert lies == [], lies[:5]
                assert covered > 0
                # once repaired, every closed minute equals the truth, those in outages included
                problems = mismatches(settings, sim, exchange, markets, start, end, repaired=True)
                assert problems == [], f"{len(problems)} differences, e.g. {problems[:5]}"
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


def queued_repairs(settings) -> dict[str, list[list]]:
    """Per exchange queue, the arguments of the `repair_gaps` messages waiting in it (the broker is
    the platform's Redis: one list per queue, kombu's JSON envelope with the task in its headers)."""
    client = redis.Redis.from_url(settings.redis_url)
    try:
        queued = {}
        for exchange in EXCHANGES:
            headers = [json.loads(raw)["headers"] for raw in client.lrange(f"{exchange}_rest", 0, -1)]
            queued[exchange] = [
                list(ast.literal_eval(h["argsrepr"])) for h in headers if h["task"] == REPAIR_TASK
            ]
        return queued
    finally:
        client.close()


def test_the_beat_sends_the_first_repair_of_every_exchange_as_it_starts(settings, tmp_path):
    """Right after the platform starts its gaps show as missing; the repair must not wait one
    REPAIR_INTERVAL_SECONDS (here an hour) for its first run. The beat started as the Procfile and
    compose start it sends one run per exchange at once, to the exchange's queue; started again
    after the platform was down for longer than an interval (its stored schedule has the repair
    overdue), it does so again, once."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "REDIS_"))},
        **service_env(settings),
        "REPAIR_INTERVAL_SECONDS": "3600",
        "LOG_DIR": str(tmp_path),
    }
    expected = {exchange: [[exchange]] for exchange in EXCHANGES}
    for start in range(2):
        with open(tmp_path / "beat.out", "ab") as log:
            beat = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "celery_app.celery_main", "beat",
                 "-s", str(tmp_path / "beat-schedule"), "--loglevel", "INFO"],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            wait_for(
                lambda: all(queued_repairs(settings).values()),
                30,
                f"start {start + 1}: a repair run queued for every exchange",
            )
        finally:
            stop_process(beat)
        queued = queued_repairs(settings)  # all the beat sent, once it has stopped
        assert queued == expected, (queued, (tmp_path / "beat.out").read_text()[-2000:])
        with redis.Redis.from_url(settings.redis_url) as client:
            client.delete(*(f"{exchange}_rest" for exchange in EXCHANGES))
        with shelve.open(str(tmp_path / "beat-schedule"), writeback=True) as schedule:
            for entry in schedule["entries"].values():  # two hours down
                entry.last_run_at -= timedelta(hours=2)


def cli(env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "scripts.fetchers.rest", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finished(proc: subprocess.Popen, timeout: float = 180) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def klines(proxy: RecordingProxy, since: int = 0) -> list[tuple[float, str]]:
    """(arrival, symbol) of every candle request the platform sent through the proxy."""
    return [
        (entry.arrived, parse_qs(entry.query)["symbol"][0])
        for entry in proxy.log[since:]
        if entry.path == "/api/v3/klines"
    ]


def iso(ms: int) -> str:
    return ms_to_datetime(ms).strftime("%Y-%m-%dT%H:%M:%S")


def test_a_celery_backfill_keeps_90_percent_of_the_budget_and_gets_the_repairs_worker(
    platform_settings, simulator, tmp_path
):
    """A repair started through Celery, then a user backfill on the same worker (two processes): the
    backfill's requests are at least 90% of all sent while it runs (the repair only takes what it
    leaves free), and a second backfill queued while both processes are busy gets the repair's
    process: the repair stops sending until a later repair run carries it on."""
    exchange = "binance"
    repaired, user, other = "BTCUSDT", "ETHBTC", None
    trading = [m["symbol"] for m in simulator.markets(exchange) if m["status"] == "TRADING"]
    other = next(s for s in trading if s not in (repaired, user))
    with RecordingProxy(simulator.urls[exchange]["rest"]) as proxy:
        env = {
            **os.environ,
            "BINANCE_REST_URL": proxy.url,
            "BINANCE_REST_WEIGHT_PER_MINUTE": "40",  # about 10 candle requests per 3-second window
            "LOG_DIR": str(tmp_path),
        }
        old_start, old_end = day_aligned_range(simulator, days_back=28, days=1 / 24)
        new_start, new_end = day_aligned_range(simulator, days_back=1, days=1 / 24)
        for begin, end in ((old_start, old_end), (new_start, new_end)):
            code, _, err = finished(
                cli(env, "fetch", "--exchange", exchange, "--start", iso(begin), "--end", iso(end),
                    "--symbols", repaired, "--local")
            )  # fmt: skip
            assert code == 0, err
        log = open(tmp_path / "worker.out", "wb")  # noqa: SIM115 - closed below
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "celery_app.celery_main", "worker",
             "-Q", f"{exchange}_rest", "--concurrency", "2", "--hostname", f"heal-{os.getpid()}@%h",
             "--loglevel", "INFO"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        try:
            mark = len(proxy.log)
            while True:
                code, out, err = finished(cli(env, "repair", "--exchange", exchange))
                if "no Celery worker" not in err:
                    break
                time.sleep(1)
            assert code == 0 and "repair requests planned (low priority)" in err, err
            wait_for(lambda: len(klines(proxy, mark)) >= 3, 60, "the repair to start sending")

            user_start, user_end = day_aligned_range(simulator, days_back=27, days=25)
            first = cli(env, "fetch", "--exchange", exchange, "--start", iso(user_start), "--end",
                        iso(user_end), "--symbols", user, "--wait")  # fmt: skip
            wait_for(lambda: sum(s == user for _, s in klines(proxy, mark)) >= 3, 60, "the backfill to start")
            other_start, other_end = day_aligned_range(simulator, days_back=3, days=1)
            second = cli(env, "fetch", "--exchange", exchange, "--start", iso(other_start), "--end",
                         iso(other_end), "--symbols", other, "--wait")  # fmt: skip
            for proc in (first, second):
                code, out, err = finished(proc)
                assert code == 0 and "requests done, 0 failed" in out, err
            handed_back = len(proxy.log)
            code, out, err = finished(cli(env, "repair", "--exchange", exchange, "--wait"))
            assert code == 0 and "the repair under way goes on" in err, err
            assert "requests done, 0 failed" in out, out
        finally:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()

        sent = klines(proxy, mark)
        users = [t for t, s in sent if s == user]
        during = [s for t, s in sent if users[0] <= t <= users[-1]]
        window = float(env["REST_RATE_WINDOW_SECONDS"])
        per_window: dict[int, Counter] = {}
        for t, s in sent:
            per_window.setdefault(int((t - sent[0][0]) // window), Counter())[s] += 1
        table = "\n".join(f"{w:3d} {dict(c)}" for w, c in sorted(per_window.items()))
        mine = sum(s != repaired for s in during)
        assert mine >= 0.9 * len(during), (mine, len(during), table)
        # the second backfill got the repair's process: no repair request from its first request on
        # until the repair was carried on
        others = [t for t, s in sent if s == other]
        assert others[0] < users[-1], "the second backfill ran beside the first: on the repair's process"
        until = proxy.log[handed_back].arrived if handed_back < len(proxy.log) else float("inf")
        assert not [t for t, s in sent if s == repaired and others[0] <= t < until], table
        assert (
            "gave the worker to a backfill waiting in binance_rest" in (tmp_path / "worker.out").read_text()
        )
    assert simulator.stats()[exchange]["over_limit"] == 0
    for symbol, begin, end in (
        (repaired, old_start, new_end),
        (user, user_start, user_end),
        (other, other_start, other_end),
    ):
        stored = stored_candles(platform_settings, exchange, symbol, begin, end)
        assert stored == truth_candles(simulator, exchange, symbol, begin, end), symbol
