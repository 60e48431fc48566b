"""What REST may serve: candles between the first simulated minute and "now", at any interval.

Promises: nothing before `first_ms`; nothing after the clock's current minute; the current minute
(or the current bucket of a longer interval) is the in-progress bar as of now; every other bar is
final and equal to the model's (and `/control/candles`'). Buckets of longer intervals are aligned to
the epoch (UTC) and aggregate the minute bars they contain.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from itertools import groupby

from common.timeutil import ceil_to, floor_to
from simulator.core import MINUTE_MS, CandleModel, SimCandle, SimClock, SimMarket

DAY_MS = 86_400_000


def aggregate(minutes: list[SimCandle], bucket_ms: int) -> SimCandle:
    """One bar from consecutive minute bars (all of them, quiet ones included)."""
    first, last = minutes[0], minutes[-1]
    if len(minutes) == 1:
        return first if first.time_ms == bucket_ms else dataclasses.replace(first, time_ms=bucket_ms)
    traded = [c for c in minutes if c.trades]
    return SimCandle(
        time_ms=bucket_ms,
        open=first.open,
        high=max(c.high for c in minutes),
        low=min(c.low for c in minutes),
        close=last.close,
        volume=sum((c.volume for c in minutes[1:]), minutes[0].volume),
        quote_volume=sum((c.quote_volume for c in minutes[1:]), minutes[0].quote_volume),
        trades=sum(c.trades for c in minutes),
        taker_buy_volume=sum((c.taker_buy_volume for c in minutes[1:]), minutes[0].taker_buy_volume),
        taker_buy_quote_volume=sum(
            (c.taker_buy_quote_volume for c in minutes[1:]), minutes[0].taker_buy_quote_volume
        ),
        first_trade_id=traded[0].first_trade_id if traded else -1,
        last_trade_id=traded[-1].last_trade_id if traded else -1,
    )


class History:
    """`cache_days` > 0 keeps that many (market, UTC day) blocks of final minute bars in memory
    (about 1.3 MB each): benchmarks warm it so the platform, not the candle model, is measured."""

    def __init__(self, clock: SimClock, model: CandleModel, first_ms: int, cache_days: int = 0) -> None:
        self.clock = clock
        self.model = model
        self.first_ms = floor_to(first_ms, MINUTE_MS)
        self.cache_days = cache_days
        self._days: OrderedDict[tuple[str, str, int], list[SimCandle]] = OrderedDict()
        self._days_lock = threading.Lock()
        self._traded: dict[tuple[str, str], tuple[int, int, list[SimCandle]]] = {}
        """Per market, the last `traded_before` answer: (its `before_ms`, its `count`, its bars)."""

    def _closed_minutes(
        self, market: SimMarket, lo: int, hi: int, traded_only: bool = False
    ) -> list[SimCandle]:
        """Final bars of [lo, hi] (all closed), from whole cached days when the cache is on;
        `traded_only` leaves out the quiet ones."""
        if self.cache_days <= 0:
            return list(self.model.candles(market, lo, hi, traded_only=traded_only))
        result: list[SimCandle] = []
        day = floor_to(lo, DAY_MS)
        while day <= hi:
            block = self._day_block(market, day)
            first = max(lo, day)
            last = min(hi, day + DAY_MS - MINUTE_MS)
            if block is None:
                result.extend(self.model.candles(market, first, last, traded_only=traded_only))
            else:
                part = block[(first - day) // MINUTE_MS : (last - day) // MINUTE_MS + 1]
                result.extend(c for c in part if c.trades) if traded_only else result.extend(part)
            day += DAY_MS
        return result

    def _day_block(self, market: SimMarket, day: int) -> list[SimCandle] | None:
        """A whole day of final bars, or None if the day is partly in the future or before history."""
        if day < self.first_ms or day + DAY_MS > self.now_minute():
            return None
        key = (market.exchange, market.symbol, day)
        with self._days_lock:
            block = self._days.get(key)
            if block is not None:
                self._days.move_to_end(key)
                return block
        block = list(self.model.candles(market, day, day + DAY_MS - MINUTE_MS))
        with self._days_lock:
            self._days[key] = block
            while len(self._days) > self.cache_days:
                self._days.popitem(last=False)
        return block

    def now_minute(self) -> int:
        return self.clock.current_minute_ms()

    def last_closed_minute(self) -> int:
        return self.now_minute() - MINUTE_MS

    def minute_candles(
        self,
        market: SimMarket,
        lo_ms: int,
        hi_ms: int,
        *,
        include_current: bool = True,
        traded_only: bool = False,
        now_ms: int | None = None,
    ) -> list[SimCandle]:
        """Minute bars with open time in [lo_ms, hi_ms], clipped to what exists at `now_ms` (the
        clock's now by default): the minute of `now_ms` is its in-progress bar as of then."""
        now = self.clock.now_ms() if now_ms is None else now_ms
        current = floor_to(now, MINUTE_MS)
        lo = max(self.first_ms, ceil_to(lo_ms, MINUTE_MS))
        hi = min(floor_to(hi_ms, MINUTE_MS), current if include_current else current - MINUTE_MS)
        if hi < lo:
            return []
        closed_hi = min(hi, current - MINUTE_MS)
        result = self._closed_minutes(market, lo, closed_hi, traded_only) if closed_hi >= lo else []
        if hi == current:
            partial = self.model.partial_candle(market, current, now)
            if partial.trades or not traded_only:
                result.append(partial)
        return result

    def interval_candles(
        self,
        market: SimMarket,
        interval_ms: int,
        lo_ms: int,
        hi_ms: int,
        *,
        traded_only: bool = False,
        include_current: bool = True,
        now_ms: int | None = None,
    ) -> list[SimCandle]:
        """Bars of `interval_ms` whose open time is in [lo_ms, hi_ms] (lo rounded up to a bucket),
        as they stand at `now_ms` (the clock's now by default).

        `traded_only` drops bars without any trade (Bitfinex); otherwise quiet bars are flat at the
        previous close with zero volume (Binance, Bittrex).
        """
        lo = ceil_to(lo_ms, interval_ms)
        hi = floor_to(hi_ms, interval_ms)
        if hi < lo:
            return []
        if interval_ms == MINUTE_MS:
            return self.minute_candles(
                market, lo, hi, include_current=include_current, traded_only=traded_only, now_ms=now_ms
            )
        minutes = self.minute_candles(
            market, lo, hi + interval_ms - MINUTE_MS, include_current=include_current, now_ms=now_ms
        )
        buckets = groupby(minutes, key=lambda c: floor_to(c.time_ms, interval_ms))
        bars = [aggregate(list(bucket), start) for start, bucket in buckets]
        return [b for b in bars if b.trades] if traded_only else bars

    def newest(
        self,
        market: SimMarket,
        interval_ms: int,
        end_ms: int,
        limit: int,
        *,
        lo_ms: int | None = None,
        traded_only: bool = False,
        now_ms: int | None = None,
    ) -> list[SimCandle]:
        """The newest `limit` bars with open time in [lo_ms, end_ms], oldest first, as they stand
        at `now_ms` (the clock's now by default)."""
        now = self.clock.now_ms() if now_ms is None else now_ms
        hi = min(floor_to(end_ms, interval_ms), floor_to(now, interval_ms))
        floor = floor_to(self.first_ms, interval_ms)
        if lo_ms is not None:
            floor = max(floor, ceil_to(lo_ms, interval_ms))
        result: list[SimCandle] = []
        chunk = max(limit, 1)
        while hi >= floor and len(result) < limit:
            start = max(floor, hi - (chunk - 1) * interval_ms)
            result = (
                self.interval_candles(market, interval_ms, start, hi, traded_only=traded_only, now_ms=now)
                + result
            )
            hi = start - interval_ms
            chunk *= 2
        return result[-limit:] if limit else []

    def traded_before(self, market: SimMarket, before_ms: int, count: int) -> list[SimCandle]:
        """The newest `count` closed minute bars with trades opening before minute `before_ms`,
        oldest first: a Bitfinex snapshot less its in-progress bar. The last answer per market is
        kept and extended by the minutes since, so the resubscriptions of a reconnect storm cost
        a few minutes each instead of hundreds (an illiquid market trades in one minute of six)."""
        before = floor_to(before_ms, MINUTE_MS)
        key = (market.exchange, market.symbol)
        kept = self._traded.get(key)
        if kept is not None and kept[0] <= before and kept[1] >= count and before - kept[0] <= DAY_MS:
            since, _, bars = kept
            lo = max(since, self.first_ms)
            bars = bars + list(self.model.candles(market, lo, before - MINUTE_MS, traded_only=True))
        else:
            bars = self.newest(market, MINUTE_MS, before - MINUTE_MS, count, traded_only=True, now_ms=before)
        bars = bars[-count:] if count else []
        self._traded[key] = (before, count, bars)
        return bars

    def oldest(
        self,
        market: SimMarket,
        interval_ms: int,
        start_ms: int,
        limit: int,
        *,
        hi_ms: int | None = None,
        traded_only: bool = False,
    ) -> list[SimCandle]:
        """The oldest `limit` bars with open time in [start_ms, hi_ms], oldest first."""
        lo = max(ceil_to(start_ms, interval_ms), floor_to(self.first_ms, interval_ms))
        ceiling = floor_to(self.clock.now_ms(), interval_ms)
        if hi_ms is not None:
            ceiling = min(ceiling, floor_to(hi_ms, interval_ms))
        result: list[SimCandle] = []
        chunk = max(limit, 1)
        while lo <= ceiling and len(result) < limit:
            end = min(ceiling, lo + (chunk - 1) * interval_ms)
            result += self.interval_candles(market, interval_ms, lo, end, traded_only=traded_only)
            lo = end + interval_ms
            chunk *= 2
        return result[:limit]
