"""The repair's planner (pure): the missing minutes of every market (`common.completeness`), and
the requests that fill them, newest first.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping

from common.candle import Market
from common.completeness import MarketEvidence, missing_ranges
from common.coverage import PairKey
from common.ranges import Range, coalesce, total
from common.timeutil import MINUTE_MS
from fetchers.exchanges.base import ExchangeAdapter, FetchTask
from fetchers.rest.sources import REST, plan_market


def plan_gaps(
    evidence: Mapping[PairKey, MarketEvidence], since_ms: int, until_ms: int
) -> dict[PairKey, list[Range]]:
    """Missing ranges per market (markets with none are left out)."""
    gaps = {key: missing_ranges(ev, since_ms, until_ms) for key, ev in evidence.items()}
    return {key: ranges for key, ranges in sorted(gaps.items()) if ranges}


def missing_minutes(gaps: Mapping[PairKey, list[Range]]) -> int:
    return sum(total(ranges) for ranges in gaps.values()) // MINUTE_MS


def plan_repair_tasks(
    adapter: ExchangeAdapter,
    markets: Mapping[PairKey, Market],
    gaps: Mapping[PairKey, list[Range]],
    max_requests: int,
    now_ms: int | None = None,
    source: str = REST,
) -> list[FetchTask]:
    """The requests that fill `gaps`, newest gaps first across markets (a recent hole matters most
    to live users), at most `max_requests` (the next run plans the rest). A market's gaps that one
    request can span together are fetched together (the minutes between them are written again,
    with the exchange's own values): a reconnect storm leaves every market many short gaps, and
    the budget is counted in requests. With `now_ms` and a source other than `rest`, closed days
    come from archive files (fetchers/rest/sources.py; a repair never stops at minutes no file
    holds: they go to REST)."""
    if now_ms is None:
        source = REST

    def requests(key: PairKey) -> Iterator[FetchTask]:
        market = markets[key]
        for start, end in reversed(coalesce(gaps[key], adapter.max_candles_per_request * MINUTE_MS)):
            tasks = list(plan_market(adapter, market, start, end, now_ms or 0, source))
            yield from reversed(tasks)

    streams = [requests(key) for key in gaps if key in markets]
    ordered = heapq.merge(*streams, key=lambda t: (-t.start_ms, t.symbol))
    planned: list[FetchTask] = []
    for task in ordered:
        if len(planned) >= max_requests:
            break
        planned.append(task)
    return planned
