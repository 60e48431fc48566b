"""`make demo` / `make status` / `make down` as a user runs them: the whole platform on this machine.

`python -m scripts.local.stack up --demo` must start PostgreSQL and Redis from the machine's
binaries, the simulator on its fixed ports, init, and every Procfile process under supervisord;
backfill the demo markets so the chart is full at once; stream live bars into Redis; serve the
chart. `down` must stop exactly what `up` started. Everything lives under the test's temp dir.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.request
import uuid
from pathlib import Path

import pytest
import redis

from common.exchanges import EXCHANGES
from common.redis_keys import ws_send_key
from common.settings import PROJECT_ROOT
from scripts.local.servers import postgres_root
from tests.support.services import free_port, wait_for

pytestmark = pytest.mark.e2e

PLATFORM_PROCESSES = {
    "simulator", "fetch-bitfinex", "fetch-binance", "fetch-bittrex",
    "updater", "worker", "beat", "flower", "web",
}  # fmt: skip


def stack(
    env: dict[str, str], *args: str, timeout: float = 300, cwd: Path = PROJECT_ROOT
) -> subprocess.CompletedProcess:
    env = {**env, "PYTHONPATH": str(PROJECT_ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "scripts.local.stack", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def get_json(url: str) -> tuple[int, object]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def running_pids(data: Path) -> list[int]:
    """Processes whose command line names this test's data folder or its PostgreSQL folder
    (supervisord, postgres, redis)."""
    names = {str(data).encode(), str(postgres_root(data)).encode()}
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if any(name in cmdline for name in names):
                pids.append(int(proc.name))
    return pids


@pytest.fixture
def data_dir():
    """A folder of the project's `local_data/`, named relative as in `.example_env` (as root, where
    the postgres account cannot reach the project, PostgreSQL's data goes to the fallback folder)."""
    relative = Path("local_data") / f"e2e-stack-{uuid.uuid4().hex[:8]}"
    path = PROJECT_ROOT / relative
    yield relative
    fallback = postgres_root(path)
    shutil.rmtree(path, ignore_errors=True)
    if not fallback.is_relative_to(path):
        shutil.rmtree(fallback.parent, ignore_errors=True)


def example_env() -> dict[str, str]:
    """The settings of `cp .example_env .env`, as a new user starts."""
    values = {}
    for line in (PROJECT_ROOT / ".example_env").read_text().splitlines():
        if line and not line.startswith("#"):
            name, value = line.split("=", 1)
            values[name] = value
    return values


def user_env(**overrides: str) -> dict[str, str]:
    """The environment of a user who copied .example_env and set the passwords (as Docker needs),
    with the test's own ports and folders on top."""
    env = {
        **os.environ,
        **example_env(),
        "POSTGRES_PASSWORD": "demo-secret",
        "REDIS_PASSWORD": "demo-redis-secret",
    }
    env.update(overrides)
    return env


@pytest.fixture
def demo_env(tmp_path, data_dir):
    env = user_env(
        LOCAL_DATA_DIR=str(data_dir),
        LOG_DIR=str(tmp_path / "logs"),
        POSTGRES_PORT=str(free_port()),
        POSTGRES_DB="coin_demo",
        REDIS_PORT=str(free_port()),
        WEB_PORT=str(free_port()),
        FLOWER_PORT=str(free_port()),
    )
    yield env
    stack(env, "down", timeout=120)
    for pid in running_pids(PROJECT_ROOT / data_dir):
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


def test_make_demo_runs_the_whole_platform_and_down_stops_it(demo_env, tmp_path, data_dir):
    started = stack(demo_env, "up", "--demo", cwd=tmp_path)  # relative paths are the project's anyway
    assert started.returncode == 0, started.stdout + started.stderr
    assert "9 of 9 processes running" in started.stdout, started.stdout + started.stderr
    web = f"http://127.0.0.1:{demo_env['WEB_PORT']}"
    assert f"open {web}/view/wschart?exchange=binance&base=BTC&quote=USDT&period=1D" in started.stdout

    log = (tmp_path / "logs" / "init.log").read_text().strip().splitlines()
    assert log[-1].endswith("Initialization complete")

    status = stack(demo_env, "status")
    assert status.returncode == 0
    lines = {line.split()[0]: line.split()[1] for line in status.stdout.splitlines() if len(line.split()) > 1}
    assert lines["postgres"] == "RUNNING" and lines["redis"] == "RUNNING"
    assert {name for name, state in lines.items() if state == "RUNNING"} >= PLATFORM_PROCESSES

    # the demo's backfill: a whole day of 1-minute bars for the market the printed address opens
    code, bars = get_json(
        f"{web}/api/ohlcvs?exchange=binance&base_id=BTC&quote_id=USDT&interval=1m&limit=5000"
    )
    assert code == 200 and len(bars) >= 1440, (code, str(bars)[:300])

    # live bars reach Redis from the fetcher, exactly as users read them
    client = redis.Redis(port=int(demo_env["REDIS_PORT"]), password=demo_env["REDIS_PASSWORD"])
    latest = wait_for(lambda: client.hgetall(ws_send_key("binance", "BTC", "USDT", ";;")), 120, "a live bar")
    assert set(latest) == {b"time", b"open", b"high", b"low", b"close", b"volume"}
    assert int(latest[b"time"]) % 60_000 == 0

    def healthy():
        code, report = get_json(f"{web}/api/health")
        return code == 200 and report["fetchers"]["binance"]["state"] == "ok" and report

    wait_for(healthy, 120, "/api/health reporting every part ok")

    # the first repair runs as the platform starts, not REPAIR_INTERVAL_SECONDS (300 s) later: the
    # beat sent one run per exchange, and the worker planned one
    logs = tmp_path / "logs"
    assert demo_env["REPAIR_INTERVAL_SECONDS"] == "300"
    wait_for(
        lambda: all(
            f"Sending due task repair-gaps-{exchange}" in (logs / "supervisor" / "beat.log").read_text()
            for exchange in EXCHANGES
        ),
        60,
        "the beat sending a repair run of every exchange",
    )
    wait_for(lambda: "repair run planned" in (logs / "celery_worker.log").read_text(), 60, "a repair run")

    with urllib.request.urlopen(f"{web}/view/wschart", timeout=10) as page:
        assert page.status == 200 and b"lightweight-charts" in page.read()

    stopped = stack(demo_env, "down", timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    assert running_pids(PROJECT_ROOT / data_dir) == []
    after = stack(demo_env, "status")
    assert "postgres        STOPPED" in after.stdout and "processes: not running" in after.stdout


def test_a_taken_port_stops_up_before_anything_starts(tmp_path):
    """A machine's own PostgreSQL or web server on the port: one line naming the setting, and
    nothing started (no half-running platform to clean up)."""
    data = Path(tempfile.mkdtemp(prefix="cfr-stack-"))
    with socket.socket() as postgres_squatter, socket.socket() as web_squatter:
        for squatter in (postgres_squatter, web_squatter):
            squatter.bind(("127.0.0.1", 0))
            squatter.listen()
        pg_port, web_port = postgres_squatter.getsockname()[1], web_squatter.getsockname()[1]
        env = user_env(
            LOCAL_DATA_DIR=str(data),
            LOG_DIR=str(tmp_path / "logs"),
            POSTGRES_PORT=str(pg_port),
            REDIS_PORT=str(free_port()),
            WEB_PORT=str(web_port),
            FLOWER_PORT=str(free_port()),
        )
        try:
            started = stack(env, "up", timeout=60)
        finally:
            shutil.rmtree(data, ignore_errors=True)
    assert started.returncode == 1
    line = started.stderr.strip()
    assert "\n" not in line and line.startswith("error: ")
    assert f"port {pg_port} for PostgreSQL is taken" in line and "set POSTGRES_PORT in .env" in line
    assert f"port {web_port} for the web app is taken" in line and "set WEB_PORT in .env" in line
    assert "nothing was started" in line
    assert not (data / "postgres").exists() and not (data / "supervisord.conf").exists()
