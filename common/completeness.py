"""Which minutes of a market are known complete, missing, or before its first bar: the pure rules the
repair plans from and the web reports.

A minute is known complete when a REST request that succeeded covered it (the exchange's final
word), or when a websocket connection delivered it without interruption — unless the live pipeline
recorded an outage over it or a REST request for it failed for good (`ohlcvs_errors`). A market's
history runs from its first bar to the later of its last bar and its last covered minute; every
minute in it that is not known complete is missing, and so is every outage or failed request that
no REST request has covered since. A minute without a row inside a covered range is not missing:
Bitfinex sends no candle for a minute without trades. Minutes before a market's first bar are not
its history: the repair leaves them alone (the market may not have traded yet), and
`before_first_bar_ranges` tells them apart for whoever shows how complete the database is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common.ranges import Range, clip, merge, subtract
from common.timeutil import floor_minute_ms


@dataclass(frozen=True, slots=True)
class MarketEvidence:
    """Everything the database says about one market's completeness."""

    bounds: Range | None = None
    """(first bar time, last bar time + 1 minute), None when the market has no rows."""
    rest: list[Range] = field(default_factory=list)
    """Final coverage: REST requests and archive files (both the exchange's final word)."""
    ws: list[Range] = field(default_factory=list)
    outages: list[Range] = field(default_factory=list)
    failed: list[Range] = field(default_factory=list)


def covered_ranges(evidence: MarketEvidence) -> list[Range]:
    """Minutes known complete: REST coverage, plus websocket coverage outside outages and failures."""
    return merge(evidence.rest + subtract(evidence.ws, evidence.outages + evidence.failed))


def missing_ranges(evidence: MarketEvidence, since_ms: int, until_ms: int) -> list[Range]:
    """Minutes of [since_ms, until_ms) the market is missing (minute-aligned, merged)."""
    since_ms = floor_minute_ms(since_ms)
    until_ms = floor_minute_ms(until_ms)
    if until_ms <= since_ms:
        return []
    history: list[Range] = []
    if evidence.bounds is not None:
        known_end = max((end for _, end in evidence.rest + evidence.ws), default=evidence.bounds[1])
        history.append((evidence.bounds[0], max(evidence.bounds[1], known_end)))
    wanted = merge(history + evidence.outages + evidence.failed)
    return clip(subtract(wanted, covered_ranges(evidence)), since_ms, until_ms)


def before_first_bar_ranges(evidence: MarketEvidence, since_ms: int, until_ms: int) -> list[Range]:
    """Minutes of [since_ms, until_ms) before the market's first bar (all of them for a market
    without rows) that are neither covered nor missing: the repair never plans them, because only
    the exchange can say whether the market traded then — a backfill asks it, and its coverage
    settles them either way. Outages and failed requests there are missing, not counted here."""
    since_ms = floor_minute_ms(since_ms)
    until_ms = floor_minute_ms(until_ms)
    first = evidence.bounds[0] if evidence.bounds is not None else until_ms
    if min(first, until_ms) <= since_ms:
        return []
    known = covered_ranges(evidence) + missing_ranges(evidence, since_ms, until_ms)
    return subtract([(since_ms, min(first, until_ms))], known)
