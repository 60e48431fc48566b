"""Retry delays shared by every loop that waits for an exchange, Redis or the database to return."""

from __future__ import annotations

import random


def backoff_seconds(attempt: int, base: float, cap: float) -> float:
    """Full-jitter exponential backoff, capped: attempt 0 waits up to `base`, each next attempt up
    to twice as long, never more than `cap`. The jitter spreads many clients' retries apart."""
    return random.uniform(0, min(cap, base * (2**attempt)))
