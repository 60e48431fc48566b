"""Progress of a backfill job: one line (done/total, candles, request rate vs the limit, errors,
ETA), and a stream that keeps that line at the bottom of a terminal while log lines go above it."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TextIO

from fetchers.rest.job_store import JobInfo

BAR_WIDTH = 24
CLEAR_LINE = "\r\x1b[K"


class ProgressMeter:
    """Turns successive JobInfo snapshots into a progress line. The rate counts every request sent
    (retries too) over the same window the exchange's limit uses, so it is comparable with it."""

    def __init__(self, window_seconds: float = 60.0) -> None:
        self.window_seconds = window_seconds
        self._samples: deque[tuple[float, int, int]] = deque()

    def line(self, job: JobInfo, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        finished = job.done + job.failed
        self._samples.append((now, job.sent, finished))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window_seconds:
            self._samples.popleft()
        first_t, first_sent, first_finished = self._samples[0]
        elapsed = now - first_t
        per_minute = (job.sent - first_sent) * 60 / elapsed if elapsed > 0 else 0.0
        done_per_second = (finished - first_finished) / elapsed if elapsed > 0 else 0.0
        fraction = finished / job.total if job.total else 1.0
        filled = int(BAR_WIDTH * fraction)
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        remaining = job.total - finished
        if remaining == 0:
            eta = "done" if job.refreshed else "refreshing aggregates"
        elif done_per_second > 0:
            eta = "ETA " + str(timedelta(seconds=int(remaining / done_per_second)))
        else:
            eta = "ETA --:--"
        limit = f", limit {job.limit_per_minute:,.0f}" if job.limit_per_minute else ""
        return (
            f"[{bar}] {fraction:4.0%} {finished:,}/{job.total:,} requests | {job.candles:,} candles | "
            f"{per_minute:,.0f} req/min over {min(elapsed, self.window_seconds):.0f}s{limit} | "
            f"{job.failed:,} errors | {eta}"
        )


class ProgressStream:
    """Writes to `stream`; on a terminal `show` keeps one progress line redrawn in place, and
    anything else written (log records included, see `capturing_logs`) appears above it."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self._line = ""

    def show(self, line: str) -> None:
        self._line = line
        self.stream.write(CLEAR_LINE + line)
        self.stream.flush()

    def write(self, text: str) -> int:
        if self.tty and self._line:
            self.stream.write(CLEAR_LINE + text)
            if text.endswith("\n"):
                self.stream.write(self._line)
        else:
            self.stream.write(text)
        self.stream.flush()
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def done(self) -> None:
        """Leave the last progress line in place and move below it."""
        if self.tty and self._line:
            self.stream.write("\n")
            self.stream.flush()
        self._line = ""

    @contextmanager
    def capturing_logs(self) -> Iterator[None]:
        """Route the console log handlers that write to our stream through this one meanwhile."""
        handlers = [
            h
            for h in logging.getLogger().handlers
            if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) is self.stream
        ]
        for handler in handlers:
            handler.setStream(self)  # type: ignore[arg-type]
        try:
            yield
        finally:
            for handler in handlers:
                handler.setStream(self.stream)
