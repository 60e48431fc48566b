"""Time helpers: everything is UTC, candle times are interval open times, wire times are epoch ms."""

from __future__ import annotations

from datetime import UTC, datetime

MINUTE_MS = 60_000


def ms_to_datetime(ms: int) -> datetime:
    """Exact (integer arithmetic, no float); on the hot path of every parsed candle."""
    seconds, millis = divmod(ms, 1000)
    value = datetime.fromtimestamp(seconds, UTC)
    return value.replace(microsecond=millis * 1000) if millis else value


def datetime_to_ms(value: datetime) -> int:
    value = ensure_utc(value)
    delta = value - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def ensure_utc(value: datetime) -> datetime:
    """Naive datetimes are taken as UTC; aware ones are converted to UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def parse_utc(text: str) -> datetime:
    """Parse an ISO-8601 date or datetime; no zone means UTC. Raises ValueError with a clear message."""
    cleaned = text.strip()
    if cleaned.endswith(("Z", "z")):
        cleaned = cleaned[:-1] + "+00:00"
    try:
        return ensure_utc(datetime.fromisoformat(cleaned))
    except ValueError:
        raise ValueError(f"not an ISO-8601 date/time: {text!r} (example: 2021-01-01T00:00:00)") from None


def floor_to(ms: int, interval_ms: int) -> int:
    """The start of the interval holding `ms` (intervals counted from the epoch)."""
    return ms - ms % interval_ms


def ceil_to(ms: int, interval_ms: int) -> int:
    """The first interval start at or after `ms`."""
    return -((-ms) // interval_ms) * interval_ms


def floor_minute_ms(ms: int) -> int:
    """`floor_to(ms, MINUTE_MS)`, spelled out: the live feed and the parsers call it per bar."""
    return ms - ms % MINUTE_MS


def ceil_minute_ms(ms: int) -> int:
    return -((-ms) // MINUTE_MS) * MINUTE_MS


def isoformat_z(value: datetime) -> str:
    """`2021-06-13T00:01:00Z`: the form Bittrex and our logs use."""
    return ensure_utc(value).strftime("%Y-%m-%dT%H:%M:%SZ")
