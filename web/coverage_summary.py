"""How complete one exchange's history is, in the three counts the status page shows.

Every minute of every market the database knows, from the exchange's oldest bar up to its present
less the settle time, is either covered (known complete) or in exactly one of:

- before the market's first bar: nothing vouches for it and the repair does not look there — the
  market had not traded yet, or that part of its history was never backfilled;
- missing, awaiting repair: inside the market's history (or a recorded outage or failed request),
  not known complete, and not in the repair job under way — the next repair run plans it;
- being repaired: missing, and in the ranges the exchange's repair job is fetching.

Pure: the route reads the evidence and the repair's ranges, this counts them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from common.completeness import MarketEvidence, before_first_bar_ranges, missing_ranges
from common.coverage import PairKey
from common.ranges import Range, intersect, total
from common.timeutil import MINUTE_MS


@dataclass(frozen=True, slots=True)
class ExchangeCoverage:
    exchange: str
    markets_known: int
    """Markets with bars, coverage, outages or failed requests."""
    history_start: int | None
    """The exchange's oldest bar (ms), where "before the first bar" starts counting; None without bars."""
    end: int
    """Counts run up to here (ms, exclusive): the exchange's present less REPAIR_SETTLE_MINUTES."""
    before_first_bar_minutes: int
    markets_before_first_bar: int
    missing_minutes: int
    """Every missing minute, being repaired or not (as `GET /api/coverage` counts them)."""
    markets_with_gaps: int
    repairing_minutes: int
    markets_repairing: int
    awaiting_repair_minutes: int
    """`missing_minutes` less `repairing_minutes`."""
    markets_awaiting_repair: int


def summarise(
    exchange: str,
    evidence: Mapping[PairKey, MarketEvidence],
    end_ms: int,
    repairing: Mapping[PairKey, list[Range]],
) -> ExchangeCoverage:
    """Count the three kinds of unvouched minutes of every market of `evidence` before `end_ms`;
    `repairing` holds the ranges of the exchange's repair job under way, per market."""
    starts = [ev.bounds[0] for ev in evidence.values() if ev.bounds is not None]
    history_start = min(starts) if starts else None
    before: dict[PairKey, int] = {}
    missing: dict[PairKey, int] = {}
    fixing: dict[PairKey, int] = {}
    for key, ev in evidence.items():
        gaps = missing_ranges(ev, 0, end_ms)
        missing[key] = total(gaps)
        fixing[key] = total(intersect(gaps, repairing.get(key, [])))
        if history_start is not None:
            before[key] = total(before_first_bar_ranges(ev, history_start, end_ms))

    def minutes(counts: Mapping[PairKey, int]) -> int:
        return sum(counts.values()) // MINUTE_MS

    def markets(counts: Mapping[PairKey, int]) -> int:
        return sum(1 for value in counts.values() if value)

    waiting = {key: missing[key] - fixing[key] for key in missing}
    return ExchangeCoverage(
        exchange=exchange,
        markets_known=len(evidence),
        history_start=history_start,
        end=end_ms,
        before_first_bar_minutes=minutes(before),
        markets_before_first_bar=markets(before),
        missing_minutes=minutes(missing),
        markets_with_gaps=markets(missing),
        repairing_minutes=minutes(fixing),
        markets_repairing=markets(fixing),
        awaiting_repair_minutes=minutes(waiting),
        markets_awaiting_repair=markets(waiting),
    )
