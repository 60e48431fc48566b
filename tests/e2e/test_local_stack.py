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
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest
import redis

from common.redis_keys import ws_send_key
from common.settings import PROJECT_ROOT
from tests.support.services import free_port, wait_for

pytestmark = pytest.mark.e2e

PLATFORM_PROCESSES = {
    "simulator", "fetch-bitfinex", "fetch-binance", "fetch-bittrex",
    "updater", "worker", "beat", "flower", "web",
}  # fmt: skip


def stack(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "scripts.local.stack", *args],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def get_json(url: str) -> tuple[int, object]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def running_pids(data: Path) -> list[int]:
    """Processes whose command line names this test's data folder (supervisord, postgres, redis)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if str(data).encode() in cmdline:
                pids.append(int(proc.name))
    return pids


@pytest.fixture
def data_dir():
    """Outside pytest's private temp root: as root, PostgreSQL runs as `postgres` and must reach it."""
    path = Path(tempfile.mkdtemp(prefix="cfr-stack-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def demo_env(tmp_path, data_dir):
    env = {
        **os.environ,
        "LOCAL_DATA_DIR": str(data_dir),
        "LOG_DIR": str(tmp_path / "logs"),
        "POSTGRES_PORT": str(free_port()),
        "POSTGRES_PASSWORD": "demo-secret",
        "POSTGRES_DB": "coin_demo",
        "REDIS_PORT": str(free_port()),
        "REDIS_PASSWORD": "demo-redis-secret",
        "WEB_PORT": str(free_port()),
        "FLOWER_PORT": str(free_port()),
    }
    for name in ("SIMULATOR_HOST", "POSTGRES_HOST", "REDIS_HOST", "WEB_HOST", "POSTGRES_USER", "REDIS_DB"):
        env.pop(name, None)
    yield env
    stack(env, "down", timeout=120)
    for pid in running_pids(data_dir):
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


def test_make_demo_runs_the_whole_platform_and_down_stops_it(demo_env, tmp_path, data_dir):
    started = stack(demo_env, "up", "--demo")
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

    with urllib.request.urlopen(f"{web}/view/wschart", timeout=10) as page:
        assert page.status == 200 and b"lightweight-charts" in page.read()

    stopped = stack(demo_env, "down", timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    assert running_pids(data_dir) == []
    after = stack(demo_env, "status")
    assert "postgres        STOPPED" in after.stdout and "processes: not running" in after.stdout
