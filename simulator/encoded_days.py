"""Closed minute bars kept as wire text per (market, UTC day), for a server that answers in days.

Bittrex serves minute bars a day at a time (`historical/Y/M/D`, and `recent`: the last 24 hours),
so a client mending one minute asks for 1,440 of them, and a repair asks for the same market's day
again after every outage that touches it. Working each out anew costs the candle model and the
encoder about 90 ms a request, on the process that also feeds every websocket. Closed bars are
final (the model is deterministic), so each is worked out and encoded once: a day's text grows as
its minutes close, and a request takes a slice of it.

Promises: `closed_text` equals the encoded bars `History.minute_candles` gives for the same closed
minutes, joined by ","; at most `days_kept` (market, day) texts are kept, the least recently used
dropped first (a whole day is about 250 KB).
"""

from __future__ import annotations

import threading
from array import array
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from simulator.core import MINUTE_MS, SimCandle, SimMarket
from simulator.history import DAY_MS, History, floor_to


@dataclass
class _DayText:
    """Minutes from `start_ms` on, each encoded and followed by ","; `offsets[i]` is where minute i
    begins in `text` and the last offset is `len(text)`."""

    start_ms: int
    text: str = ""
    offsets: array = field(default_factory=lambda: array("Q", [0]))

    @property
    def end_ms(self) -> int:
        """The open time of the first minute not held yet."""
        return self.start_ms + (len(self.offsets) - 1) * MINUTE_MS

    def extend(self, encoded: list[str]) -> None:
        position = self.offsets[-1]
        for piece in encoded:
            position += len(piece) + 1
            self.offsets.append(position)
        self.text += "".join(piece + "," for piece in encoded)

    def slice(self, lo_ms: int, hi_ms: int) -> str:
        first = (lo_ms - self.start_ms) // MINUTE_MS
        last = (hi_ms - self.start_ms) // MINUTE_MS
        return self.text[self.offsets[first] : self.offsets[last + 1] - 1]


class EncodedDays:
    def __init__(self, history: History, encode: Callable[[SimCandle], str], days_kept: int) -> None:
        self.history = history
        self.encode = encode
        self.days_kept = days_kept
        self._days: OrderedDict[tuple[str, int], _DayText] = OrderedDict()
        self._lock = threading.Lock()

    def closed_text(self, market: SimMarket, lo_ms: int, hi_ms: int) -> str:
        """The closed minute bars with open time in [lo_ms, hi_ms] (clipped to the history and the
        last closed minute), encoded and joined by ","; "" if there are none."""
        lo = max(-(-lo_ms // MINUTE_MS) * MINUTE_MS, self.history.first_ms)
        hi = min(floor_to(hi_ms, MINUTE_MS), self.history.last_closed_minute())
        pieces = []
        with self._lock:
            day = floor_to(lo, DAY_MS)
            while day <= hi:
                first, last = max(lo, day), min(hi, day + DAY_MS - MINUTE_MS)
                if first <= last:
                    pieces.append(self._day_text(market, day, last).slice(first, last))
                day += DAY_MS
        return ",".join(pieces)

    def _day_text(self, market: SimMarket, day: int, upto_ms: int) -> _DayText:
        """The day's text, holding at least the minutes up to `upto_ms` (a closed minute)."""
        key = (market.symbol, day)
        kept = self._days.get(key)
        if kept is None:
            kept = _DayText(max(day, self.history.first_ms))
            self._days[key] = kept
            while len(self._days) > self.days_kept:
                self._days.popitem(last=False)
        else:
            self._days.move_to_end(key)
        if kept.end_ms <= upto_ms:
            bars = self.history.minute_candles(market, kept.end_ms, upto_ms, include_current=False)
            if len(bars) != (upto_ms - kept.end_ms) // MINUTE_MS + 1:
                raise RuntimeError(
                    f"{market.symbol}: the history skipped minutes of {kept.end_ms}..{upto_ms}"
                )
            kept.extend([self.encode(bar) for bar in bars])
        return kept
