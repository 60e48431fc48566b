"""Interval arithmetic on epoch milliseconds, shared by the fetchers and the simulator."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from common.timeutil import (
    MINUTE_MS,
    ceil_minute_ms,
    ceil_to,
    datetime_to_ms,
    floor_minute_ms,
    floor_to,
    ms_to_datetime,
)

pytestmark = pytest.mark.unit

DAY_MS = 86_400_000


@pytest.mark.parametrize("interval", [1, MINUTE_MS, 5 * MINUTE_MS, DAY_MS])
def test_floor_and_ceil_are_the_interval_starts_around_a_time(interval: int) -> None:
    rng = random.Random(interval)
    edges = [0, interval, interval - 1, interval + 1]
    for ms in edges + [rng.randrange(-(10**13), 10**13) for _ in range(500)]:
        low, high = floor_to(ms, interval), ceil_to(ms, interval)
        assert low % interval == 0 and high % interval == 0
        assert low <= ms <= high and high - low == (0 if ms % interval == 0 else interval)


def test_minute_helpers_and_exact_conversions() -> None:
    at = datetime(2021, 6, 13, 0, 1, 2, 345_000, tzinfo=UTC)
    ms = datetime_to_ms(at)
    assert ms_to_datetime(ms) == at
    assert floor_minute_ms(ms) == datetime_to_ms(at.replace(second=0, microsecond=0))
    assert ceil_minute_ms(ms) == floor_minute_ms(ms) + MINUTE_MS
    assert ceil_minute_ms(floor_minute_ms(ms)) == floor_minute_ms(ms), "a minute start is its own ceiling"
    rng = random.Random(7)
    for t in [0, -1, MINUTE_MS - 1, *(rng.randrange(-(10**13), 10**13) for _ in range(500))]:
        assert (floor_minute_ms(t), ceil_minute_ms(t)) == (floor_to(t, MINUTE_MS), ceil_to(t, MINUTE_MS)), t
