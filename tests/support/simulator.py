"""The exchange simulator for tests: in-process on a background thread, or as a subprocess.

`running_simulator(**config)` starts one on free ports with `SimConfig.fast_test()` defaults and
yields a `SimHandle` with the URLs, the `.env`-style settings overrides, and small helpers for the
control port (ground truth, stats, faults) so tests read like what they check.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode
from urllib.request import Request, urlopen

from simulator.config import SimConfig
from simulator.server import Simulator, SimulatorThread
from tests.support.services import stop_process

ROOT = Path(__file__).resolve().parents[2]


def _http_json(url: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = Request(url, data=data, method="GET" if body is None else "POST")
    request.add_header("Content-Type", "application/json")
    with urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


def is_json_number(value: Any) -> bool:
    """A JSON number as read with parse_float=Decimal (booleans are not numbers)."""
    return isinstance(value, (int, Decimal)) and not isinstance(value, bool)


@dataclass
class SimHandle:
    urls: dict[str, Any]
    env_lines: list[str]
    """The simulator's own `.env` lines (`BITFINEX_REST_URL=...`) that point the platform at it."""
    simulator: Simulator | None = None
    pid: int | None = None
    """The simulator's process id when it runs as a child process."""

    @property
    def control(self) -> str:
        return self.urls["control"]

    def env(self) -> dict[str, str]:
        return dict(line.split("=", 1) for line in self.env_lines)

    def settings_overrides(self) -> dict[str, str]:
        """Settings fields (lower-case) that point the platform at this simulator."""
        return {key.lower(): value for key, value in self.env().items()}

    def clock(self) -> dict[str, Any]:
        return _http_json(f"{self.control}/control/clock")

    def markets(self, exchange: str) -> list[dict[str, Any]]:
        return _http_json(f"{self.control}/control/markets?" + urlencode({"exchange": exchange}))

    def truth(self, exchange: str, symbol: str, start_ms: int, end_ms: int) -> list[dict[str, Any]]:
        """Final candles with open time in [start_ms, end_ms) - half-open, like the platform's ranges."""
        query = urlencode({"exchange": exchange, "symbol": symbol, "start": start_ms, "end": end_ms - 1})
        return _http_json(f"{self.control}/control/candles?{query}")["candles"]

    def stats(self) -> dict[str, Any]:
        return _http_json(f"{self.control}/control/stats")

    def reset_stats(self) -> None:
        _http_json(f"{self.control}/control/stats/reset", {})

    def set_faults(self, exchange: str, **faults: Any) -> Any:
        return _http_json(f"{self.control}/control/faults", {"exchange": exchange, **faults})

    def reset_faults(self, exchange: str = "all") -> None:
        _http_json(f"{self.control}/control/faults/reset", {"exchange": exchange})

    def lose_frames(self, exchange: str, count: int) -> None:
        """The next `count` candle-data frames of `exchange` (any socket) are lost on the way."""
        self.set_faults(exchange, lose_ws_frames=count)

    def lose_closes(self, count: int) -> None:
        """The next `count` closing Binance kline updates (`"x": true`) are lost on the way."""
        self.set_faults("binance", lose_ws_closes=count)

    def freeze(self, seconds: float) -> None:
        """Block the in-process simulator's event loop for `seconds` real seconds, from now: a
        machine that did not keep up. Its live feed falls `seconds` x speed behind."""
        assert self.simulator is not None and self.simulator.loop is not None, "not an in-process simulator"
        self.simulator.loop.call_soon_threadsafe(time.sleep, seconds)

    def stop_feed(self) -> None:
        """Stop the in-process simulator's live feed while its sockets go on being served (beats,
        subscriptions, snapshots): a feed left behind the clock. Until the simulator stops."""
        sim = self.simulator
        assert sim is not None and sim.loop is not None, "not an in-process simulator"
        task = sim._feed_task
        assert task is not None, "the feed is not running"
        sim.loop.call_soon_threadsafe(task.cancel)

    def served(self) -> dict[str, list[dict[str, Any]]]:
        """Every Binance archive file request and klines request so far (`GET /control/served`)."""
        return _http_json(f"{self.control}/control/served")

    def dropped(self, exchange: str, closes: bool = False) -> dict[str, set[int]]:
        """Per market, the minutes (ms) whose candle updates a fault withheld or mangled on some
        socket (`closes`: only those whose closing update it took, for an exchange that marks it)."""
        reply = _http_json(f"{self.control}/control/dropped?" + urlencode({"exchange": exchange}))
        return {symbol: set(minutes) for symbol, minutes in reply["closes" if closes else "dropped"].items()}


@contextmanager
def running_simulator(**overrides: Any) -> Iterator[SimHandle]:
    """An in-process simulator (fast-test limits unless overridden) for the duration of the block."""
    with SimulatorThread(SimConfig.fast_test(**overrides)) as sim:
        yield SimHandle(urls=sim.urls, env_lines=sim.env_lines(), simulator=sim)


@contextmanager
def simulator_process(
    *args: str, python_args: Sequence[str] = (), log_path: Path | None = None
) -> Iterator[SimHandle]:
    """`python -m simulator --json ARGS` as a child process, the way users run it (`python_args`
    go before `-m`, e.g. a profiler). It listens on free ports unless ARGS hold `--ports`. Its
    stderr (warnings) goes to `log_path` when given, else to a temporary file."""
    if "--ports" not in args:
        args = ("--ports", "0,0,0,0", *args)
    # a file, not a pipe nobody drains
    errors = open(log_path, "w+") if log_path else tempfile.TemporaryFile(mode="w+")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, *python_args, "-m", "simulator", "--json", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=errors,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            proc.wait()
            errors.seek(0)
            raise RuntimeError(f"the simulator did not start: {errors.read().strip()}")
        started = json.loads(line)
        yield SimHandle(urls=started["urls"], env_lines=started["env"], pid=proc.pid)
    finally:
        stop_process(proc)
        errors.close()
