"""Candle work in processes of its own answers exactly as on the simulator's own threads.

Two simulators on the same config and start minute, one with `compute_processes=1`: every compute
job, and the REST endpoints over real sockets, give byte-identical answers for closed periods; and
the process one really works elsewhere (its own `CandleWork` keeps nothing).
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.timeutil import ms_to_datetime
from simulator.binance import klines_body
from simulator.binance_archive import archive_file
from simulator.bitfinex import candles_body as bitfinex_body
from simulator.bitfinex import snapshot
from simulator.bittrex_rest import candles_body as bittrex_body
from simulator.control import truth_rows
from simulator.core import MINUTE_MS
from simulator.history import DAY_MS
from simulator.server import SimulatorThread
from tests.support.services import wait_for

pytestmark = pytest.mark.integration

START_MS = 1_765_000_000_000 - 1_765_000_000_000 % DAY_MS + 13 * 60 * MINUTE_MS + 17 * MINUTE_MS
CONFIG = {"markets": 4, "speed": 1.0, "start_ms": START_MS, "history_days": 3.0}


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[SimulatorThread, SimulatorThread]]:
    threads = SimulatorThread(**CONFIG)
    processes = SimulatorThread(**CONFIG, compute_processes=1)
    threads.start()
    try:
        processes.start()
        try:
            yield threads, processes
        finally:
            processes.stop()
    finally:
        threads.stop()


def run_job(sim: SimulatorThread, job, *args, prompt: bool = False):
    run = sim.simulator.compute_prompt if prompt else sim.simulator.compute
    return sim.call(lambda: run(job, *args), timeout=60)


def jobs(sim: SimulatorThread) -> list[tuple]:
    markets = {exchange: listed[0].symbol for exchange, listed in sim.simulator.markets.items()}
    yesterday = START_MS - START_MS % DAY_MS - DAY_MS
    return [
        (
            klines_body,
            markets["binance"],
            MINUTE_MS,
            yesterday + 7 * MINUTE_MS,
            yesterday + 900 * MINUTE_MS,
            1000,
        ),
        (klines_body, markets["binance"], 60 * MINUTE_MS, None, yesterday, 50),
        (bitfinex_body, markets["bitfinex"], "hist", MINUTE_MS, yesterday, yesterday + DAY_MS, 10_000, True),
        (bitfinex_body, markets["bitfinex"], "last", MINUTE_MS, None, yesterday + 30 * MINUTE_MS, 1, True),
        (snapshot, markets["bitfinex"], yesterday + 600 * MINUTE_MS + 1234, 240),
        (
            bittrex_body,
            markets["bittrex"],
            MINUTE_MS,
            yesterday,
            yesterday + DAY_MS - MINUTE_MS,
            False,
            False,
        ),
        (bittrex_body, markets["bittrex"], MINUTE_MS, yesterday, yesterday + DAY_MS - MINUTE_MS, False, True),
        (bittrex_body, markets["bittrex"], 60 * MINUTE_MS, yesterday - DAY_MS, yesterday, False, False),
        (truth_rows, "bittrex", markets["bittrex"], yesterday, yesterday + 300 * MINUTE_MS),
        (truth_rows, "bitfinex", markets["bitfinex"], yesterday, yesterday + 300 * MINUTE_MS),
        (archive_file, markets["binance"], "day.csv", yesterday, yesterday + DAY_MS, True),
    ]


def test_every_job_answers_the_same_in_a_process_of_its_own(pair):
    threads, processes = pair
    for job, *args in jobs(threads):
        expected = run_job(threads, job, *args)
        assert run_job(processes, job, *args) == expected, job.__name__
        assert run_job(processes, job, *args, prompt=True) == expected, f"{job.__name__}, prompt"
    assert threads.simulator.computer.work.kept, "on threads, the Bittrex days are kept in this process"
    assert not processes.simulator.computer.work.kept, "in processes, nothing is worked out here"


def test_rest_over_sockets_answers_the_same(pair):
    threads, processes = pair
    yesterday = START_MS - START_MS % DAY_MS - DAY_MS
    day = ms_to_datetime(yesterday)
    bittrex = threads.simulator.markets["bittrex"][0].symbol
    binance = threads.simulator.markets["binance"][0].symbol
    paths = {
        "bittrex": f"/v3/markets/{bittrex}/candles/MINUTE_1/historical/{day.year}/{day.month}/{day.day}",
        "binance": f"/api/v3/klines?symbol={binance}&interval=1m&startTime={yesterday}&limit=500",
    }
    for exchange, path in paths.items():
        answers = []
        for sim in (threads, processes):
            with urllib.request.urlopen(sim.simulator.urls[exchange]["rest"] + path, timeout=30) as reply:
                assert reply.status == 200
                answers.append(reply.read())
        assert answers[0] == answers[1] and len(answers[0]) > 1000, exchange


def test_compute_processes_end_with_a_killed_simulator():
    """`kill -9` of `python -m simulator --compute-processes 1` leaves no process behind."""
    simulator = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "simulator",
            "--json",
            "--ports",
            "0,0,0,0",
            "--markets",
            "3",
            "--compute-processes",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        urls = json.loads(simulator.stdout.readline())["urls"]
        with urllib.request.urlopen(
            f"{urls['binance']['rest']}/api/v3/klines?symbol=BTCUSDT&interval=1m", timeout=30
        ):
            pass  # the compute process now runs
        found = subprocess.run(["pgrep", "-P", str(simulator.pid)], capture_output=True, text=True)
        children = [Path(f"/proc/{pid}") for pid in found.stdout.split()]
        assert children, "the compute processes are the simulator's children"
    finally:
        simulator.kill()
        simulator.wait()
    wait_for(
        lambda: not any(child.exists() for child in children), 15, "the compute processes to end with it"
    )
