"""Pure bar arithmetic and encoding shared by the REST and websocket APIs.

Bars are `common.candle.Bar` tuples `(time_ms, open, high, low, close, volume)` with decimals as the
exchange's exact text. Comparing and summing go through `Decimal` (never float); highs, lows,
opens and closes keep their original text, volumes are summed exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from decimal import Context, Decimal

from common.candle import DECIMAL_TEXT, Bar
from common.redis_records import BAR_JSON, decode_bar, decode_latest_hash
from common.timeutil import isoformat_z, ms_to_datetime
from web.reads import Interval

_EXACT = Context(prec=200)


def _plain_decimals(values: Sequence[object]) -> tuple[str, ...] | None:
    """The values as plain decimal text (as PostgreSQL renders NUMERIC: `1e-8` -> `0.00000001`), or
    None unless every one is exact decimal text (`common.candle.DECIMAL_TEXT`)."""
    if not all(isinstance(v, str) and DECIMAL_TEXT.fullmatch(v) for v in values):
        return None
    return tuple(
        format(Decimal(v), "f") if "e" in v or "E" in v or v[0] in "+." else v  # type: ignore[index]
        for v in values
    )


def _sum_text(values: Iterable[str]) -> str:
    total = Decimal(0)
    for value in values:
        total = _EXACT.add(total, Decimal(value))
    return format(total, "f")


def combine(bars: Sequence[Bar], time_ms: int) -> Bar:
    """One bar opening at `time_ms` from consecutive bars in ascending time order."""
    return (
        time_ms,
        bars[0][1],
        max((b[2] for b in bars), key=Decimal),
        min((b[3] for b in bars), key=Decimal),
        bars[-1][4],
        _sum_text(b[5] for b in bars),
    )


def _plain_bar(bar: Bar) -> Bar | None:
    plain = _plain_decimals(bar[1:])
    return None if plain is None else (bar[0], *plain)


def parse_live_bar(raw: bytes | str) -> Bar | None:
    """A bar as the live pipeline publishes it or keeps it waiting (`common.redis_records`), or None
    when it is not one (every decimal must be plain decimal text, so it can go out unquoted-safe)."""
    try:
        return _plain_bar(decode_bar(raw))
    except ValueError:
        return None


def parse_latest_hash(fields: dict[bytes, bytes]) -> Bar | None:
    """The `ws_send_` hash (field -> text) as a bar, or None when it is absent or malformed."""
    try:
        return _plain_bar(decode_latest_hash(fields))
    except ValueError:
        return None


def merge_minutes(stored: list[Bar], live: Iterable[Bar], limit: int) -> list[Bar]:
    """1-minute bars: stored ones plus live minutes the database does not have yet (a stored
    minute always wins: the database holds the final word), the newest `limit`, ascending."""
    have = {bar[0] for bar in stored}
    extra = [bar for bar in live if bar[0] not in have]
    if not extra:
        return stored
    merged = sorted(stored + extra)
    return merged[-limit:]


def group_minutes(minutes: Iterable[Bar], interval: Interval) -> dict[int, list[Bar]]:
    """Minute bars grouped by the open time of the `interval` bar containing them, ascending."""
    groups: dict[int, list[Bar]] = {}
    for bar in sorted(minutes):
        groups.setdefault(interval.bucket_start(bar[0]), []).append(bar)
    return groups


def _gap_times(interval: Interval, after_ms: int, before_ms: int, most: int) -> list[int]:
    """Open times strictly between two bars, the newest `most` of them, newest first."""
    if interval.width_ms:
        times = []
        time_ms = before_ms - interval.width_ms
        while time_ms > after_ms and len(times) < most:
            times.append(time_ms)
            time_ms -= interval.width_ms
        return times
    times = []
    time_ms = interval.next_start(after_ms)
    while time_ms < before_ms:
        times.append(time_ms)
        time_ms = interval.next_start(time_ms)
    return times[::-1][:most]


def fill_empty(bars: list[Bar], interval: Interval, limit: int) -> list[Bar]:
    """Insert a flat bar at the previous close with zero volume for every interval without trades
    between the first and the last bar; keeps the newest `limit`, ascending."""
    out: list[Bar] = []
    for index in range(len(bars) - 1, -1, -1):
        bar = bars[index]
        out.append(bar)
        if len(out) >= limit or index == 0:
            break
        previous = bars[index - 1]
        close = previous[4]
        for time_ms in _gap_times(interval, previous[0], bar[0], limit - len(out)):
            out.append((time_ms, close, close, close, close, "0"))
    out.reverse()
    return out[-limit:]


_BAR_ISO = '{"time":"%s","open":"%s","high":"%s","low":"%s","close":"%s","volume":"%s"}'


def encode_bars(bars: Sequence[Bar], as_ms: bool) -> bytes:
    """A JSON array of `{"time","open","high","low","close","volume"}` objects, built directly:
    the decimals are already validated decimal text, so no general-purpose encoder is needed."""
    if as_ms:
        body = ",".join([BAR_JSON % bar for bar in bars])
    else:
        body = ",".join([_BAR_ISO % (isoformat_z(ms_to_datetime(bar[0])), *bar[1:]) for bar in bars])
    return ("[" + body + "]").encode()


CSV_HEADER = b"time,open,high,low,close,volume\n"


def encode_csv_rows(bars: Sequence[Bar], as_ms: bool) -> bytes:
    """CSV lines (no header: `CSV_HEADER`) of the same columns and text as `encode_bars`. Decimal
    text and ISO times hold no comma, quote or line break, so nothing needs quoting."""
    if as_ms:
        return "".join([f"{t},{o},{h},{low},{c},{v}\n" for t, o, h, low, c, v in bars]).encode()
    return "".join(
        [f"{isoformat_z(ms_to_datetime(t))},{o},{h},{low},{c},{v}\n" for t, o, h, low, c, v in bars]
    ).encode()


def bar_dict(bar: Bar, as_ms: bool = True) -> dict:
    t, o, h, low, c, v = bar
    return {
        "time": t if as_ms else isoformat_z(ms_to_datetime(t)),
        "open": o,
        "high": h,
        "low": low,
        "close": c,
        "volume": v,
    }
