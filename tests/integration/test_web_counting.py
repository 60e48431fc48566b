"""The web's counting process runs work outside the web's interpreter, outlives a dead child and
ends with a dead web."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.services import wait_for
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


PARENT = """
import asyncio, os, sys, time
from web.counting import CountingProcess

counting = CountingProcess()
print(asyncio.run(counting.run(os.getpid)), flush=True)
time.sleep(600)
"""


def test_the_child_ends_with_a_killed_web():
    """`kill -9` of the web leaves no counting process behind: the child holds both ends of its
    work queue's pipe, so without looking for its parent it would wait for work forever."""
    root = Path(__file__).resolve().parents[2]
    web = subprocess.Popen([sys.executable, "-c", PARENT], cwd=root, stdout=subprocess.PIPE, text=True)
    try:
        child = Path(f"/proc/{int(web.stdout.readline())}")
        assert child.exists()
    finally:
        web.kill()
        web.wait()
        web.stdout.close()
    wait_for(lambda: not child.exists(), 15, "the counting child to end with the web")
