"""The web's counting process: pure-Python work too long to share the web's interpreter with its
requests.

The coverage counts of every market (`web.coverage_summary.summarise`, for the status page and
`GET /metrics`) take hundreds of milliseconds of Python per exchange with the full market lists.
On a thread they held the interpreter that long, and every request that met them waited (a
`/metrics` p95 of 430 ms where its median is 25 ms). One child process, started on first use and
stopped with the app, does them instead; a child that died is replaced on the next call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from common.child_processes import spawn_pool

T = TypeVar("T")


class CountingProcess:
    """Runs picklable pure functions in one child process (spawned: no copy of the web's threads,
    sockets or pools), one call at a time in call order. The child ends with the web, `kill -9`
    included."""

    def __init__(self) -> None:
        self._executor: ProcessPoolExecutor | None = None

    async def run(self, work: Callable[..., T], *args: Any) -> T:
        """`work(*args)` in the child; what it raises is raised here. A child that died is
        replaced and the call made once more."""
        try:
            return await self._submit(work, *args)
        except BrokenProcessPool:
            self.close()
            return await self._submit(work, *args)

    async def _submit(self, work: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._start(), work, *args)

    def _start(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = spawn_pool(1)
        return self._executor

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
