"""`python -m scripts.fetchers.rest` run the way users run it: as a process, configured by the
environment or `.env`, against the simulator, real PostgreSQL and Redis (and a Celery worker)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.timeutil import ms_to_datetime
from fetchers.rest.job_store import JobStore
from tests.conftest import SERVICE_ENV
from tests.support.backfill import assert_matches_truth, day_aligned_range
from tests.support.services import wait_for

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "scripts.fetchers.rest"]


def iso(ms: int) -> str:
    return ms_to_datetime(ms).strftime("%Y-%m-%dT%H:%M:%S")


def run_cli(*args: str, timeout: float = 120, cwd: Path = ROOT, env: dict | None = None):
    return subprocess.run(
        [*CLI, *args], cwd=cwd, env=env or os.environ.copy(), capture_output=True, text=True, timeout=timeout
    )


def job_progress(settings, exchange: str, with_in_flight: bool = False):
    async def read():
        import redis.asyncio as aioredis

        client = aioredis.from_url(settings.redis_url)
        try:
            store = JobStore(client)
            ids = await store.job_ids(exchange)
            if not ids:
                return (0, 0, 0) if with_in_flight else (0, 0)
            job = await store.info(ids[-1])
            return (job.done, job.total, job.in_flight) if with_in_flight else (job.done, job.total)
        finally:
            await client.aclose()

    return asyncio.run(read())


# ------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "args, fragment",
    [
        (
            ["fetch", "--exchange", "kraken", "--start", "2021-01-01", "--end", "2021-01-02"],
            "unknown exchange 'kraken'",
        ),
        (
            ["fetch", "--exchange", "binance", "--start", "yesterday", "--end", "2021-01-02"],
            "--start: not an ISO-8601",
        ),
        (
            ["fetch", "--exchange", "binance", "--start", "2021-01-03", "--end", "2021-01-02"],
            "must be after --start",
        ),
        (["fetch", "--exchange", "binance", "--start", "2099-01-01", "--end", "2099-01-02"], "future"),
        (
            [
                "fetch",
                "--exchange",
                "binance",
                "--start",
                "2021-01-01",
                "--end",
                "2021-01-02",
                "--symbols",
                "NOPE/USDT",
            ],
            "unknown symbol 'NOPE/USDT' on binance",
        ),
        (["status", "--exchange", "kraken"], "unknown exchange"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(args, fragment, platform_settings):
    extra = ["--local"] if args[0] == "fetch" else []
    result = run_cli(*args, *extra)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr


@pytest.mark.parametrize("command", ["fetch", "resume", "status", "cancel", "repair", "markets"])
def test_help_imports_no_client_library(command):
    """`--help` loads click and the settings only: the HTTP, Redis, PostgreSQL and Celery clients
    (most of a start-up's CPU) are imported by the commands that use them."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "scripts.fetchers.rest", command, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and "Usage:" in result.stdout, result.stderr
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert imported & {"asyncio", "click"}  # the import log is there to read
    heavy = {
        name
        for name in imported
        if name.split(".")[0] in {"aiohttp", "uvloop", "psycopg2", "celery", "redis"}
    }
    assert heavy == set()


@pytest.mark.parametrize(
    "start, end, fragment",
    [
        ("2021-01-02", "2021-01-01", "must be after --start"),
        (
            "2021-01-01T06:00:30",
            "2021-01-01T06:10:00",
            "--start (2021-01-01T06:00:30+00:00) is not on a whole minute",
        ),
        (
            "2021-01-01T06:00",
            "2021-01-01T06:10:30",
            "--end (2021-01-01T06:10:30+00:00) is not on a whole minute",
        ),
    ],
)
def test_input_is_checked_before_looking_for_a_worker(start, end, fragment, platform_settings):
    result = run_cli("fetch", "--exchange", "binance", "--start", start, "--end", end)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [f"error: {result.stderr.strip()[7:]}"]
    assert fragment in result.stderr


def unreachable_binance() -> tuple[str, dict[str, str]]:
    """A Binance REST URL nothing listens on, and the environment that points the CLI at it."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"  # closed once the block ends
    return url, {**os.environ, "BINANCE_REST_URL": url, "REST_MAX_RETRIES": "0"}


def test_bad_range_is_exit_2_even_when_the_exchange_is_unreachable(settings):
    """Input checks come before any service: the exchange's clock is not asked for a range that
    can never be valid."""
    _, env = unreachable_binance()
    result = run_cli(
        "fetch", "--exchange", "binance", "--start", "2021-01-02", "--end", "2021-01-01", "--local", env=env
    )
    assert result.returncode == 2, result.stderr
    assert "must be after --start" in result.stderr


def test_an_exchange_that_cannot_tell_its_time_is_one_line_and_exit_1(settings):
    """The range is cut at the exchange's present, so an unreachable exchange stops the fetch at once."""
    url, env = unreachable_binance()
    result = run_cli(
        "fetch", "--exchange", "binance", "--start", "2021-01-01", "--end", "2021-01-02", "--local", env=env
    )
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot ask binance for its time at {url}"), lines
    assert "BINANCE_REST_URL" in lines[0]


def test_requests_that_fail_for_good_exit_1_and_name_the_incomplete_ranges(platform_settings, simulator):
    from fetchers.rest.jobs import create_job
    from fetchers.rest.markets import refresh_markets

    start_ms, end_ms = day_aligned_range(simulator, days_back=3, days=1)
    asyncio.run(refresh_markets(platform_settings, "bitfinex"))
    job = asyncio.run(
        create_job(
            platform_settings, "bitfinex", ms_to_datetime(start_ms), ms_to_datetime(end_ms), ["BTC/USD"]
        )
    )  # planned while the exchange answers (planning asks its clock)
    simulator.set_faults("bitfinex", http_5xx_rate=1.0)
    env = {**os.environ, "REST_MAX_RETRIES": "0"}
    result = run_cli("resume", "--exchange", "bitfinex", "--job", job.id, "--local", env=env)
    assert result.returncode == 1, result.stderr
    assert "1 request(s) failed for good" in result.stderr
    assert (
        f"tBTCUSD  {ms_to_datetime(start_ms):%Y-%m-%d %H:%M} .. {ms_to_datetime(end_ms):%Y-%m-%d %H:%M} UTC"
        in (result.stderr)
    )


def test_cancel_and_resume_one_job_by_id(platform_settings, simulator):
    start_ms, end_ms = day_aligned_range(simulator, days_back=3, days=1)
    queued = asyncio.run(_queue_job(platform_settings, start_ms, end_ms))
    other = asyncio.run(_queue_job(platform_settings, start_ms, end_ms))

    cancelled = run_cli("cancel", "--job", queued)
    assert cancelled.returncode == 0 and f"job {queued}: cancelled" in cancelled.stdout
    resumed = run_cli("resume", "--exchange", "bittrex", "--job", other, "--local")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming job {other}" in resumed.stderr and queued not in resumed.stderr
    status = run_cli("status", "--exchange", "bittrex").stdout
    states = {line.split()[0]: line.split()[-1] for line in status.strip().splitlines()[1:]}
    assert states[queued] == "cancelled" and states[other] == "done"
    assert run_cli("status", "--job", "nosuchjob").returncode == 2


async def _queue_job(settings, start_ms: int, end_ms: int) -> str:
    from fetchers.rest.jobs import create_job

    job = await create_job(settings, "bittrex", ms_to_datetime(start_ms), ms_to_datetime(end_ms), ["BTC-USD"])
    return job.id


def test_fetch_without_a_worker_says_how_to_start_one(platform_settings, simulator):
    start_ms, end_ms = day_aligned_range(simulator, days_back=3, days=1)
    result = run_cli("fetch", "--exchange", "bittrex", "--start", iso(start_ms), "--end", iso(end_ms))
    assert result.returncode == 1
    assert "no Celery worker is consuming the bittrex_rest queue" in result.stderr
    assert "celery -A celery_app.celery_main worker -Q bittrex_rest" in result.stderr
    assert job_progress(platform_settings, "bittrex") == (0, 0), "no job may be left behind"


# ---------------------------------------------------------------------------------- happy paths


def test_seed_command_with_dot_env_fills_ohlcvs_exactly(platform_settings, simulator, tmp_path):
    """The README's command, configured only by a `.env` file in the working directory."""
    values = {
        **{k: os.environ[k] for k in SERVICE_ENV},
        **simulator.env(),
        "REST_RATE_WINDOW_SECONDS": os.environ["REST_RATE_WINDOW_SECONDS"],
        "BITFINEX_REST_REQUESTS_PER_MINUTE": os.environ["BITFINEX_REST_REQUESTS_PER_MINUTE"],
        "LOG_DIR": str(tmp_path / "logs"),
    }
    (tmp_path / ".env").write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    env = {k: v for k, v in os.environ.items() if k not in values}
    env["PYTHONPATH"] = str(ROOT)
    start_ms, end_ms = day_aligned_range(simulator, days_back=4, days=2)

    result = run_cli(
        "fetch",
        "--exchange",
        "bitfinex",
        "--start",
        iso(start_ms),
        "--end",
        iso(end_ms),
        "--symbols",
        "BTC/USD,tETHBTC",
        "--local",
        cwd=tmp_path,
        env=env,
    )

    assert result.returncode == 0, result.stderr
    assert "candles written, aggregates refreshed" in result.stdout
    last_progress = [line for line in result.stderr.splitlines() if " requests | " in line][-1]
    assert " 100% " in last_progress and last_progress.endswith("| done"), result.stderr
    assert_matches_truth(platform_settings, simulator, "bitfinex", ["tBTCUSD", "tETHBTC"], start_ms, end_ms)
    assert list((tmp_path / "logs").glob("*.log")), "the run leaves a log file"


def test_kill_9_then_resume_is_exact_and_repeats_only_what_was_in_flight(platform_settings, simulator):
    exchange = "binance"
    start_ms, end_ms = day_aligned_range(simulator, days_back=5, days=3)
    proc = subprocess.Popen(
        [*CLI, "fetch", "--exchange", exchange, "--start", iso(start_ms), "--end", iso(end_ms), "--local"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 60
    while time.time() < deadline:
        done, total = job_progress(platform_settings, exchange)
        if total and done >= total // 3:
            break
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_at_kill, total, in_flight_at_kill = job_progress(platform_settings, exchange, with_in_flight=True)
    assert 0 < done_at_kill < total, "the kill must land mid-job"
    status = run_cli("status", "--exchange", exchange)
    job_line = status.stdout.strip().splitlines()[-1]
    deadline = time.time() + 30  # the dead run's heartbeat expires within seconds
    while "interrupted" not in job_line and time.time() < deadline:
        time.sleep(0.5)
        job_line = run_cli("status", "--exchange", exchange).stdout.strip().splitlines()[-1]
    assert job_line.endswith("interrupted") and f"{total - done_at_kill:,}" in job_line.split(), job_line

    result = run_cli("resume", "--exchange", exchange, "--local")

    assert result.returncode == 0, result.stderr
    assert f"{total - done_at_kill:,} request(s) left" in result.stderr
    done, total = job_progress(platform_settings, exchange)
    assert done == total
    symbols = [m["symbol"] for m in simulator.markets(exchange) if m["status"] == "TRADING"]
    assert_matches_truth(platform_settings, simulator, exchange, symbols, start_ms, end_ms)
    sent = simulator.stats()[exchange]["rest_requests"] - 2  # minus the market list and the clock
    assert total <= sent <= total + in_flight_at_kill, "only requests in flight at the kill may be repeated"
    assert simulator.stats()[exchange]["over_limit"] == 0


def test_celery_worker_runs_the_queued_job(platform_settings, simulator, tmp_path):
    exchange = "binance"
    worker = start_worker(exchange, "test", tmp_path / "worker.log")
    try:
        start_ms, end_ms = day_aligned_range(simulator, days_back=3, days=1)
        result = fetch_when_workers_answer(
            exchange, start_ms, end_ms, "--symbols", "BTCUSDT,ETH/BTC", "--wait"
        )
        assert result.returncode == 0, result.stderr + (tmp_path / "worker.log").read_text()
        job_id = result.stdout.strip().splitlines()[0]
        assert len(job_id) == 12
        assert "requests done, 0 failed" in result.stdout
        assert_matches_truth(platform_settings, simulator, exchange, ["BTCUSDT", "ETHBTC"], start_ms, end_ms)
        status = run_cli("status", "--exchange", exchange)
        assert status.returncode == 0 and job_id in status.stdout and "done" in status.stdout
        log = (tmp_path / "worker.log").read_text()
        finished = [line for line in log.splitlines() if "aggregates refreshed" in line]
        assert len(finished) == 1, "every log line once (no celery.redirected copy)"
    finally:
        stop_worker(worker)


def test_a_database_without_the_schema_is_one_line(postgres_server, platform_settings):
    admin = postgres_server.connect("postgres")
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute("DROP DATABASE IF EXISTS cfr_no_schema")
        cur.execute("CREATE DATABASE cfr_no_schema")
    try:
        env = {**os.environ, "POSTGRES_DB": "cfr_no_schema"}
        result = run_cli(
            "fetch",
            "--exchange",
            "binance",
            "--start",
            "2021-01-01",
            "--end",
            "2021-01-02",
            "--local",
            env=env,
        )
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "python -m scripts.database init" in lines[0], result.stderr
    finally:
        with admin.cursor() as cur:
            cur.execute("DROP DATABASE IF EXISTS cfr_no_schema WITH (FORCE)")
        admin.close()


# ------------------------------------------------------------------------------- Celery workers


def start_worker(exchange: str, name: str, log_path: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "celery_app.celery_main", "worker", "-Q", f"{exchange}_rest",
         "--concurrency", "1", "--hostname", f"{name}-{os.getpid()}@%h", "--loglevel", "INFO"],
        cwd=ROOT,
        stdout=open(log_path, "wb"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip


def stop_worker(worker: subprocess.Popen) -> None:
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(timeout=20)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


def fetch_when_workers_answer(exchange: str, start_ms: int, end_ms: int, *extra: str):
    deadline = time.time() + 90
    while time.time() < deadline:
        result = run_cli(
            "fetch", "--exchange", exchange, "--start", iso(start_ms), "--end", iso(end_ms), *extra
        )
        if "no Celery worker" not in result.stderr:
            return result
        time.sleep(1)
    raise AssertionError("no Celery worker answered")


def job_info(settings, job_id: str):
    async def read():
        import redis.asyncio as aioredis

        client = aioredis.from_url(settings.redis_url)
        try:
            return await JobStore(client).info(job_id)
        finally:
            await client.aclose()

    return asyncio.run(read())


def test_two_celery_workers_share_one_job(platform_settings, simulator, tmp_path):
    exchange = "binance"
    workers = [start_worker(exchange, f"w{i}", tmp_path / f"w{i}.log") for i in range(2)]
    try:
        start_ms, end_ms = day_aligned_range(simulator, days_back=6, days=4)
        wait_for(
            lambda: (
                len(__import__("scripts.fetchers.rest", fromlist=["queue_workers"]).queue_workers(exchange))
                == 2
            ),
            90,
            "two workers",
        )
        result = fetch_when_workers_answer(exchange, start_ms, end_ms, "--wait")
        assert result.returncode == 0, result.stderr
        job = job_info(platform_settings, result.stdout.strip().splitlines()[0])
        assert job.finished and job.workers_seen == 2, "both workers worked on the job"
        symbols = [m["symbol"] for m in simulator.markets(exchange) if m["status"] == "TRADING"]
        assert_matches_truth(platform_settings, simulator, exchange, symbols, start_ms, end_ms)
        assert simulator.stats()[exchange]["over_limit"] == 0
    finally:
        for worker in workers:
            stop_worker(worker)


def test_a_new_worker_takes_over_the_job_of_a_killed_one(platform_settings, simulator, tmp_path):
    exchange = "binance"
    first = start_worker(exchange, "first", tmp_path / "first.log")
    second = None
    try:
        start_ms, end_ms = day_aligned_range(simulator, days_back=6, days=4)
        result = fetch_when_workers_answer(exchange, start_ms, end_ms)
        job_id = result.stdout.strip().splitlines()[0]
        wait_for(
            lambda: (
                job_info(platform_settings, job_id).done >= job_info(platform_settings, job_id).total // 3
            ),
            90,
            "progress",
        )
        first.kill()
        first.wait()
        second = start_worker(exchange, "second", tmp_path / "second.log")
        wait_for(lambda: job_info(platform_settings, job_id).complete, 90, "the new worker to finish the job")
        symbols = [m["symbol"] for m in simulator.markets(exchange) if m["status"] == "TRADING"]
        assert_matches_truth(platform_settings, simulator, exchange, symbols, start_ms, end_ms)
    finally:
        if first.poll() is None:
            stop_worker(first)
        if second is not None:
            stop_worker(second)


# ------------------------------------------------------------------------------------- repair


def test_repair_fills_the_gap_between_two_backfills_then_finds_nothing(platform_settings, simulator):
    exchange = "binance"
    start_ms, end_ms = day_aligned_range(simulator, days_back=3, days=1)
    middle = start_ms + (end_ms - start_ms) // 2
    gap_end = middle + 90 * 60_000
    for begin, finish in ((start_ms, middle), (gap_end, end_ms)):
        result = run_cli(
            "fetch", "--exchange", exchange, "--start", iso(begin), "--end", iso(finish),
            "--symbols", "BTCUSDT", "--local",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr

    result = run_cli("repair", "--exchange", exchange, "--local")
    assert result.returncode == 0, result.stderr
    assert f"{exchange}: 90 missing minute(s) in 1 market(s)" in result.stderr
    assert "repair requests planned (low priority)" in result.stderr
    assert "requests done, 0 failed" in result.stdout
    assert_matches_truth(platform_settings, simulator, exchange, ["BTCUSDT"], start_ms, end_ms)

    again = run_cli("repair", "--exchange", exchange, "--since", iso(start_ms), "--local")
    assert again.returncode == 0 and f"{exchange}: nothing to repair" in again.stdout, again.stderr

    status = run_cli("status", "--exchange", exchange)
    assert status.returncode == 0, status.stderr
    lines = status.stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["job", "exchange", "kind"]
    kinds = [line.split()[2] for line in lines[1:]]
    assert kinds == ["backfill", "backfill", "repair"], status.stdout  # oldest first


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["repair", "--exchange", "kraken"], "unknown exchange 'kraken'"),
        (["repair", "--since", "last week", "--local"], "--since: not an ISO-8601"),
    ],
)
def test_repair_bad_input_is_one_line_and_exit_code_2(args, fragment, platform_settings):
    result = run_cli(*args)
    assert result.returncode == 2 and fragment in result.stderr, result.stderr
