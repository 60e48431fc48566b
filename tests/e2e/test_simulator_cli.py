"""`python -m simulator` run the way users run it: a child process, its JSON line, its exit codes."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any

import pytest

from common.exchanges import SIMULATOR_PORTS
from common.settings import PROJECT_ROOT
from simulator.faults import ACTION_ARGUMENTS, ACTIONS, SETTABLE
from tests.support.simulator import simulator_process

pytestmark = pytest.mark.e2e


def fetch(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_json_mode_serves_all_three_rest_apis_and_the_control_port() -> None:
    with simulator_process(
        "--markets", "6", "--speed", "120", "--seed", "4", "--fault", "bittrex:http_5xx_rate=1"
    ) as sim:
        assert set(sim.urls) == {"bitfinex", "binance", "bittrex", "control"}
        clock = sim.clock()
        assert clock["speed"] == 120 and clock["now_ms"] >= clock["start_ms"]
        status, pairs = fetch(sim.urls["bitfinex"]["rest"] + "/v2/conf/pub:list:pair:exchange")
        assert status == 200 and len(pairs[0]) == 6 and "BTCUSD" in pairs[0]
        status, candles = fetch(sim.urls["bitfinex"]["rest"] + "/v2/candles/trade:1m:tBTCUSD/hist?limit=3")
        assert status == 200 and len(candles) == 3 and isinstance(candles[0][1], (int, float))
        status, info = fetch(sim.urls["binance"]["rest"] + "/api/v3/exchangeInfo")
        assert status == 200 and len(info["symbols"]) == 6
        status, klines = fetch(
            sim.urls["binance"]["rest"] + "/api/v3/klines?symbol=BTCUSDT&interval=1m&limit=2"
        )
        assert status == 200 and len(klines) == 2 and isinstance(klines[0][1], str)
        status, body = fetch(sim.urls["bittrex"]["rest"] + "/v3/markets")
        assert (status, body) == (503, {"code": "SERVICE_UNAVAILABLE"}), "--fault is active from the start"
        sim.reset_faults()
        status, markets = fetch(sim.urls["bittrex"]["rest"] + "/v3/markets")
        assert status == 200 and len(markets) == 6 and isinstance(markets[0]["minTradeSize"], str)
        assert sim.stats()["bittrex"]["fault_5xx"] == 1


def test_sigterm_stops_it_cleanly() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulator", "--json", "--markets", "3", "--ports", "0,0,0,0"],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = json.loads(proc.stdout.readline())
        assert line["pid"] == proc.pid and any(e.startswith("BINANCE_REST_URL=http://") for e in line["env"])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert proc.stderr is not None and "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(
    "args",
    [
        ["--bogus"],
        ["--speed", "fast"],
        ["--speed", "0"],
        ["--markets", "0"],
        ["--ports", "1,2"],
        ["--fault", "kraken:http_5xx_rate=1"],
        ["--fault", "binance:lightning=1"],
        ["--fault", "binance:http_5xx_rate=2"],
        ["--fault", "binance:lose_ws_frames=0"],
        ["--fault", "bitfinex:lose_ws_closes=1"],
        ["--start", "yesterday-ish"],
    ],
)
def test_a_bad_flag_exits_2_with_one_line_on_stderr(args: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "simulator", "--json", *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        check=False,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr.endswith("\n") and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("python -m simulator: error: ") and "Traceback" not in result.stderr


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "simulator", *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        check=False,
        text=True,
        timeout=30,
    )


def test_help_lists_every_fault_name_with_its_meaning_and_the_default_ports() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for name in (*SETTABLE, *ACTIONS, *ACTION_ARGUMENTS):
        assert re.search(rf"^ +{name} +\S.{{20,}}$", result.stdout, re.M), f"{name} is not explained"
    shown = ",".join(str(SIMULATOR_PORTS[name]) for name in ("bitfinex", "binance", "bittrex", "control"))
    assert f"(default: {shown})" in " ".join(result.stdout.split())


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def test_given_ports_stay_the_same_across_restarts() -> None:
    ports = ",".join(map(str, free_ports(4)))
    seen = []
    for _ in range(2):
        with simulator_process("--markets", "3", "--ports", ports) as sim:
            seen.append(sim.env_lines)
            assert fetch(sim.urls["binance"]["rest"] + "/api/v3/ping") == (200, {})
    assert seen[0] == seen[1], "the .env lines stay valid across restarts"
    assert f"BINANCE_REST_URL=http://127.0.0.1:{ports.split(',')[1]}" in seen[0]


def test_a_taken_port_exits_3_with_one_line_naming_it() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("--json", "--markets", "3", "--ports", f"0,0,{port},0")
    assert result.returncode == 3 and result.stdout == ""
    assert result.stderr == (
        f"python -m simulator: error: bittrex port 127.0.0.1:{port} is already in use (--ports changes it)\n"
    )
