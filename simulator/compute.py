"""Where the simulator's candle work runs: on threads of its own process, or in processes of its own.

Working out candles (the model, then the exchange's wire format) is what REST requests, snapshots,
archive files and the control port's truth cost. On threads it shares the interpreter lock with
the live feed and every socket: with the full market lists at 60x the feed alone keeps most of a
core busy, a repair's requests then wait seconds for the loop, and frames go out late. With
`compute_processes` >= 1 the work runs in that many processes, and work a socket waits on (a
snapshot) in one more of its own, each holding its own `CandleWork` built from the same config and
clock; the model is deterministic, so the answers are the same.

A job is a module-level function `job(work, *args)`: its arguments and result cross a process
boundary, so they must pickle (symbols, times, strings, `SimCandle`s), and whatever it keeps from
one call to the next lives in `work.kept` of the process it ran in.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Concatenate, ParamSpec, TypeVar

from common.child_processes import spawn_pool
from common.exchanges import EXCHANGES
from simulator.config import SimConfig
from simulator.core import CandleModel, MarketCatalog, SimClock, SimMarket
from simulator.history import History

T = TypeVar("T")
P = ParamSpec("P")
COMPUTE_THREADS = 2


@dataclass
class CandleWork:
    """What a job may use: the history, the listed markets, and caches of its own."""

    history: History
    markets: dict[str, dict[str, SimMarket]]
    """Per exchange, the listed markets by their own symbol (`SimMarket.symbol`)."""
    kept: dict[Any, Any] = field(default_factory=dict)
    """Caches jobs keep between calls in this process, each under a key of its own."""

    @classmethod
    def build(cls, config: SimConfig, clock: SimClock, first_ms: int) -> CandleWork:
        """What the config simulates, on `clock`, with history from `first_ms`: the simulator's
        own, and each compute process's (from the simulator's clock, so both run in step: the
        monotonic clock it counts from is the machine's)."""
        markets = {
            exchange: MarketCatalog.load(exchange, config.markets, config.seed) for exchange in EXCHANGES
        }
        return cls(
            History(clock, CandleModel(config.seed), first_ms, config.history_cache_days),
            {exchange: {m.symbol: m for m in listed} for exchange, listed in markets.items()},
        )

    def market(self, exchange: str, symbol: str) -> SimMarket:
        return self.markets[exchange][symbol]


Job = Callable[Concatenate[CandleWork, P], T]
"""A compute job: a module-level function of a `CandleWork` and picklable arguments."""


class Compute:
    """Runs jobs off the event loop: on `COMPUTE_THREADS` threads with the simulator's own
    `CandleWork`, or in `config.compute_processes` processes plus one for `run_prompt` jobs.

    With processes, nothing CPU-bound stays in the simulator's own process: a busy thread there
    takes the interpreter lock each time the loop gives it up for a socket write, and a loop
    writing thousands of frames a second then falls seconds behind."""

    def __init__(self, config: SimConfig, work: CandleWork) -> None:
        self.config = config
        self.work = work
        self._bulk: Executor | None = None
        """Threads, or `compute_processes` processes."""
        self._prompt: Executor | None = None
        """With processes: one more, for `run_prompt` jobs."""

    def start(self) -> None:
        if self.config.compute_processes <= 0:
            self._bulk = ThreadPoolExecutor(max_workers=COMPUTE_THREADS, thread_name_prefix="sim-compute")
            return
        self._bulk = self._processes(self.config.compute_processes)
        self._prompt = self._processes(1)

    def _processes(self, count: int) -> Executor:
        initargs = (self.config, self.work.history.clock, self.work.history.first_ms)
        return spawn_pool(count, _start_worker, initargs)

    def stop(self) -> None:
        for executor in (self._bulk, self._prompt):
            if executor is not None:
                executor.shutdown(wait=False, cancel_futures=True)
        self._bulk = self._prompt = None

    async def run(self, job: Job[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`job(work, *args, **kwargs)` off the loop (inline before `start`)."""
        return await self._submit(self._bulk, job, args, kwargs)

    async def run_prompt(self, job: Job[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`run` for work a socket waits on (a snapshot), which with processes has one of its
        own: queued behind a repair's requests, its channel would fall silent meanwhile."""
        executor = self._prompt if self._prompt is not None else self._bulk
        return await self._submit(executor, job, args, kwargs)

    async def _submit(
        self, executor: Executor | None, job: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> T:
        if executor is None:
            return job(self.work, *args, **kwargs)
        loop = asyncio.get_running_loop()
        if isinstance(executor, ProcessPoolExecutor):
            return await loop.run_in_executor(executor, _run_in_worker, job, args, kwargs)
        return await loop.run_in_executor(executor, lambda: job(self.work, *args, **kwargs))


_WORK: CandleWork | None = None
"""In a compute process: its own `CandleWork`."""


def _start_worker(config: SimConfig, clock: SimClock, first_ms: int) -> None:
    """Build the process's `CandleWork` as the simulator built its own. The process ends with the
    simulator, however that ends (a `kill -9` included: `common.child_processes`)."""
    global _WORK
    _WORK = CandleWork.build(config, clock, first_ms)


def _run_in_worker(job: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
    assert _WORK is not None, "a compute process runs jobs only after its initializer"
    return job(_WORK, *args, **kwargs)
