"""Progress of a backfill job as one line: done/total, candles, requests/min vs the limit, errors, ETA."""

from __future__ import annotations

import time
from collections import deque
from datetime import timedelta

from fetchers.rest.job_store import JobInfo

RATE_WINDOW_SECONDS = 20.0
BAR_WIDTH = 24


class ProgressMeter:
    """Turns successive JobInfo snapshots into a progress line with a smoothed request rate."""

    def __init__(self) -> None:
        self._samples: deque[tuple[float, int]] = deque()

    def line(self, job: JobInfo, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        finished = job.done + job.failed
        self._samples.append((now, finished))
        while len(self._samples) > 2 and now - self._samples[0][0] > RATE_WINDOW_SECONDS:
            self._samples.popleft()
        first_t, first_n = self._samples[0]
        per_minute = (finished - first_n) * 60 / (now - first_t) if now > first_t else 0.0
        fraction = finished / job.total if job.total else 1.0
        filled = int(BAR_WIDTH * fraction)
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        remaining = job.total - finished
        if remaining == 0:
            eta = "done"
        elif per_minute > 0:
            eta = "ETA " + str(timedelta(seconds=int(remaining * 60 / per_minute)))
        else:
            eta = "ETA --:--"
        limit = f" (limit {job.limit_per_minute:,.0f})" if job.limit_per_minute else ""
        return (
            f"[{bar}] {fraction:4.0%} {finished:,}/{job.total:,} requests | {job.candles:,} candles | "
            f"{per_minute:,.0f} req/min{limit} | {job.failed:,} errors | {eta}"
        )
