"""Process pools whose workers end with the process that started them.

A `ProcessPoolExecutor` worker waits for work on a queue whose pipe it holds both ends of, so it
never sees its parent die: after a `kill -9` of the parent it would wait forever. The workers of
`spawn_pool` look every `PARENT_CHECK_SECONDS` whether their parent is still there, and exit when
it is not. They are spawned, not forked: no copy of the parent's threads, sockets or pools.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

PARENT_CHECK_SECONDS = 1.0


def spawn_pool(
    max_workers: int, initializer: Callable[..., None] | None = None, initargs: tuple[Any, ...] = ()
) -> ProcessPoolExecutor:
    """A pool of `max_workers` spawned processes that end with this one, `kill -9` included;
    `initializer(*initargs)` (module-level, picklable) runs in each as it starts."""
    return ProcessPoolExecutor(
        max_workers=max_workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_child,
        initargs=(os.getpid(), initializer, initargs),
    )


def _start_child(parent: int, initializer: Callable[..., None] | None, initargs: tuple[Any, ...]) -> None:
    threading.Thread(target=_exit_with_parent, args=(parent,), name="exit-with-parent", daemon=True).start()
    if initializer is not None:
        initializer(*initargs)


def _exit_with_parent(parent: int) -> None:
    """Exit once the parent is gone (the child is then someone else's, or was before it looked)."""
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_SECONDS)
    os._exit(0)
