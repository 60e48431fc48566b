"""Rate limiters that behave like the exchanges' own, per client IP, on windows of real time.

Windows are aligned to the epoch like the exchanges' calendar minutes (a 60 s window resets at each
UTC minute; a 3 s test window every 3 s). Each limiter answers "allowed?" and, if not, how many
seconds the client must wait; the servers turn that into each exchange's own 429/418 reply.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

Now = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    retry_after: float = 0.0
    banned: bool = False

    @property
    def retry_after_header(self) -> str:
        return str(max(1, math.ceil(self.retry_after)))


ALLOWED = Verdict(True)


class _Window:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def index(self, at: float) -> int:
        return int(at // self.seconds)

    def end(self, at: float) -> float:
        return (self.index(at) + 1) * self.seconds


class CountLimiter:
    """At most `limit` hits per window per key; over it, refuse until the window ends, or, with
    `block_seconds`, block the key for that long (Bitfinex blocks the IP for 60 s)."""

    def __init__(
        self, limit: int, window_seconds: float, block_seconds: float = 0.0, now: Now = time.time
    ) -> None:
        self.limit = limit
        self.block_seconds = block_seconds
        self._window = _Window(window_seconds)
        self._now = now
        self._counts: dict[str, tuple[int, int]] = {}
        self._blocked_until: dict[str, float] = {}

    def blocked(self, key: str) -> Verdict | None:
        return self._blocked(key, self._now())

    def _blocked(self, key: str, at: float) -> Verdict | None:
        until = self._blocked_until.get(key, 0.0)
        return Verdict(False, until - at) if until > at else None

    def hit(self, key: str, bucket: str = "", limit: int | None = None) -> Verdict:
        at = self._now()
        blocked = self._blocked(key, at)
        if blocked is not None:
            return blocked
        index = self._window.index(at)
        counter = f"{key}|{bucket}"
        window, count = self._counts.get(counter, (index, 0))
        if window != index:
            count = 0
        if count >= (self.limit if limit is None else limit):
            if self.block_seconds > 0:
                self._blocked_until[key] = at + self.block_seconds
                return Verdict(False, self.block_seconds)
            return Verdict(False, self._window.end(at) - at)
        self._counts[counter] = (index, count + 1)
        return ALLOWED

    def used(self, key: str, bucket: str = "") -> int:
        window, count = self._counts.get(f"{key}|{bucket}", (-1, 0))
        return count if window == self._window.index(self._now()) else 0

    def reset(self) -> None:
        self._counts.clear()
        self._blocked_until.clear()


class WeightLimiter:
    """Binance's request weight: `limit` weight per window per IP.

    Over the limit: 429 with Retry-After = seconds to the window's end. A client that keeps sending
    while told to wait gets 418 (banned for `ban_seconds`) once it has sent more than `tolerance`
    such requests (some leeway for requests already in flight). A banned IP gets 418 with the
    remaining ban as Retry-After.
    """

    def __init__(
        self, limit: int, window_seconds: float, ban_seconds: float, tolerance: int = 2, now: Now = time.time
    ) -> None:
        self.limit = limit
        self.ban_seconds = ban_seconds
        self.tolerance = tolerance
        self._window = _Window(window_seconds)
        self._now = now
        self._state: dict[str, _WeightState] = {}

    def hit(self, key: str, weight: int) -> Verdict:
        at = self._now()
        state = self._state.setdefault(key, _WeightState())
        if state.banned_until > at:
            return Verdict(False, state.banned_until - at, banned=True)
        index = self._window.index(at)
        if state.window != index:
            state.window, state.used = index, 0
        if state.wait_until > at:
            state.violations += 1
            if state.violations > self.tolerance:
                state.banned_until = at + self.ban_seconds
                state.wait_until = 0.0
                return Verdict(False, self.ban_seconds, banned=True)
            return Verdict(False, state.wait_until - at)
        if state.used + weight > self.limit:
            state.wait_until = self._window.end(at)
            state.violations = 0
            return Verdict(False, state.wait_until - at)
        state.used += weight
        return ALLOWED

    def used(self, key: str) -> int:
        state = self._state.get(key)
        if state is None or state.window != self._window.index(self._now()):
            return 0
        return state.used

    def reset(self) -> None:
        self._state.clear()


@dataclass(slots=True)
class _WeightState:
    window: int = -1
    used: int = 0
    wait_until: float = 0.0
    violations: int = 0
    banned_until: float = 0.0
