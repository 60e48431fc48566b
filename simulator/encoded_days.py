"""Closed minute bars kept as wire text per (market, UTC day), for a server that answers in days.

Bittrex serves minute bars a day at a time (`historical/Y/M/D`, and `recent`: the last 24 hours),
so a client mending one minute asks for 1,440 of them, and a repair asks for the same market's day
again after every outage that touches it. Working each out anew costs the candle model and the
encoder about 90 ms a request, on the process that also feeds every websocket. Closed bars are
final (the model is deterministic), so each is worked out and encoded once: a day's text starts
with the first minutes asked for, grows on either side as later requests need (forwards as minutes
close), and a request takes a slice of it.

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

from common.timeutil import ceil_to, floor_to
from simulator.core import MINUTE_MS, SimCandle, SimMarket
from simulator.history import DAY_MS, History


@dataclass
class _DayText:
    """Consecutive minutes from `start_ms` on, each encoded and followed by ","; `offsets[i]` is
    where minute i begins in `text` and the last offset is `len(text)`."""

    start_ms: int
    text: str = ""
    offsets: array = field(default_factory=lambda: array("Q", [0]))

    @property
    def end_ms(self) -> int:
        """The open time of the first minute after those held."""
        return self.start_ms + (len(self.offsets) - 1) * MINUTE_MS

    def extend(self, encoded: list[str]) -> None:
        """Append the minutes from `end_ms` on."""
        self.offsets.extend(_offsets(encoded, self.offsets[-1])[1:])
        self.text += "".join(piece + "," for piece in encoded)

    def prepend(self, encoded: list[str]) -> None:
        """Put the minutes just before `start_ms` in front."""
        head = "".join(piece + "," for piece in encoded)
        offsets = _offsets(encoded, 0)
        offsets.extend(offset + len(head) for offset in self.offsets[1:])
        self.text, self.offsets = head + self.text, offsets
        self.start_ms -= len(encoded) * MINUTE_MS

    def slice(self, lo_ms: int, hi_ms: int) -> str:
        first = (lo_ms - self.start_ms) // MINUTE_MS
        last = (hi_ms - self.start_ms) // MINUTE_MS
        return self.text[self.offsets[first] : self.offsets[last + 1] - 1]


def _offsets(encoded: list[str], start: int) -> array:
    offsets = array("Q", [start])
    for piece in encoded:
        offsets.append(offsets[-1] + len(piece) + 1)
    return offsets


class EncodedDays:
    def __init__(self, history: History, encode: Callable[[SimCandle], str], days_kept: int) -> None:
        self.history = history
        self.encode = encode
        self.days_kept = days_kept
        self._days: OrderedDict[tuple[str, int], _DayText] = OrderedDict()
        self._market_locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        """Guards the two dicts; a market's own lock guards its texts while they grow, so requests
        for other markets go on meanwhile."""

    def closed_text(self, market: SimMarket, lo_ms: int, hi_ms: int) -> str:
        """The closed minute bars with open time in [lo_ms, hi_ms] (clipped to the history and the
        last closed minute), encoded and joined by ","; "" if there are none."""
        lo = max(ceil_to(lo_ms, MINUTE_MS), self.history.first_ms)
        hi = min(floor_to(hi_ms, MINUTE_MS), self.history.last_closed_minute())
        pieces = []
        with self._lock:
            market_lock = self._market_locks.setdefault(market.symbol, threading.Lock())
        with market_lock:
            day = floor_to(lo, DAY_MS)
            while day <= hi:
                first, last = max(lo, day), min(hi, day + DAY_MS - MINUTE_MS)
                if first <= last:
                    pieces.append(self._day_text(market, day, first, last).slice(first, last))
                day += DAY_MS
        return ",".join(pieces)

    def _day_text(self, market: SimMarket, day: int, first: int, last: int) -> _DayText:
        """The day's text, holding at least the closed minutes `first` .. `last`."""
        key = (market.symbol, day)
        with self._lock:
            kept = self._days.get(key)
            if kept is None:
                kept = self._days[key] = _DayText(first)
                while len(self._days) > self.days_kept:
                    self._days.popitem(last=False)
            else:
                self._days.move_to_end(key)
        if first < kept.start_ms:
            kept.prepend(self._encoded(market, first, kept.start_ms - MINUTE_MS))
        if kept.end_ms <= last:
            kept.extend(self._encoded(market, kept.end_ms, last))
        return kept

    def _encoded(self, market: SimMarket, first: int, last: int) -> list[str]:
        bars = self.history.minute_candles(market, first, last, include_current=False)
        if len(bars) != (last - first) // MINUTE_MS + 1:
            raise RuntimeError(f"{market.symbol}: minutes missing in {first}..{last}")
        return [self.encode(bar) for bar in bars]
