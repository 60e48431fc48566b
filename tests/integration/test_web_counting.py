"""The web's counting process runs work outside the web's interpreter and outlives a dead child."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from web.counting import CountingProcess


def test_work_runs_in_a_child_that_is_replaced_when_it_dies():
    async def scenario() -> tuple[int, int, int]:
        counting = CountingProcess()
        try:
            first = await counting.run(os.getpid)
            os.kill(first, signal.SIGKILL)  # the next call meets the dead child, whenever it notices
            second = await counting.run(os.getpid)
            again = await counting.run(os.getpid)
            return first, second, again
        finally:
            counting.close()

    first, second, again = asyncio.run(scenario())
    assert os.getpid() not in (first, second)
    assert second != first, "the killed child was replaced"
    assert again == second, "one child serves call after call"


def test_what_the_work_raises_is_raised_to_the_caller():
    async def scenario() -> None:
        counting = CountingProcess()
        try:
            await counting.run(int, "not a number")
        finally:
            counting.close()

    with pytest.raises(ValueError, match="not a number"):
        asyncio.run(scenario())
