"""Coverage arithmetic and gap planning (pure): what is missing, and the requests that fill it."""

from __future__ import annotations

import pytest

from common.candle import Market
from common.completeness import MarketEvidence, before_first_bar_ranges, missing_ranges
from common.ranges import clip, coalesce, intersect, merge, subtract, total
from fetchers.exchanges import get_adapter
from fetchers.rest.gaps import missing_minutes, plan_gaps, plan_repair_tasks
from web.coverage_summary import summarise

pytestmark = pytest.mark.unit

M = 60_000
T0 = 1_622_505_600_000  # 2021-06-01T00:00Z


def at(minute: int) -> int:
    return T0 + minute * M


def span(a: int, b: int) -> tuple[int, int]:
    return at(a), at(b)


def test_merge_joins_overlapping_and_touching_ranges_and_drops_empty_ones():
    assert merge([span(5, 7), span(0, 2), span(2, 3), span(6, 9), span(4, 4)]) == [span(0, 3), span(5, 9)]


def test_subtract_cuts_holes_and_edges():
    assert subtract([span(0, 10)], [span(2, 3), span(5, 6), span(9, 12)]) == [
        span(0, 2),
        span(3, 5),
        span(6, 9),
    ]
    assert subtract([span(0, 10)], [span(-5, 20)]) == []
    assert subtract([span(0, 3), span(5, 8)], []) == [span(0, 3), span(5, 8)]


def test_intersect_clip_and_total():
    assert intersect([span(0, 4), span(6, 10)], [span(3, 7)]) == [span(3, 4), span(6, 7)]
    assert clip([span(0, 10)], at(2), at(4)) == [span(2, 4)]
    assert total([span(0, 4), span(2, 6)]) == 6 * M


def test_nothing_is_missing_when_rest_covers_the_whole_history():
    evidence = MarketEvidence(bounds=span(0, 100), rest=[span(0, 60), span(60, 100)])
    assert missing_ranges(evidence, 0, at(200)) == []


def test_minutes_without_rows_inside_covered_ranges_are_not_gaps():
    # Bitfinex: a quiet market whose last trade was long ago, followed live ever since.
    evidence = MarketEvidence(bounds=span(0, 10), rest=[span(0, 10)], ws=[span(10, 500)])
    assert missing_ranges(evidence, 0, at(500)) == []


def test_holes_between_covered_ranges_are_missing_even_after_the_last_bar():
    evidence = MarketEvidence(bounds=span(0, 10), rest=[span(0, 10)], ws=[span(10, 50), span(70, 120)])
    assert missing_ranges(evidence, 0, at(200)) == [span(50, 70)]


def test_outages_and_failed_requests_undo_websocket_coverage_but_not_rest_coverage():
    evidence = MarketEvidence(
        bounds=span(0, 100),
        rest=[span(0, 40)],
        ws=[span(40, 100)],
        outages=[span(30, 45), span(60, 62)],
        failed=[span(80, 81)],
    )
    assert missing_ranges(evidence, 0, at(100)) == [span(40, 45), span(60, 62), span(80, 81)]


def test_failed_requests_before_the_first_bar_are_missing_until_rest_covers_them():
    evidence = MarketEvidence(bounds=span(100, 110), rest=[span(100, 110)], failed=[span(0, 50)])
    assert missing_ranges(evidence, 0, at(200)) == [span(0, 50)]
    repaired = MarketEvidence(bounds=span(100, 110), rest=[span(0, 50), span(100, 110)], failed=[span(0, 50)])
    assert missing_ranges(repaired, 0, at(200)) == []


def test_since_and_until_clip_the_search_to_whole_minutes():
    evidence = MarketEvidence(bounds=span(0, 100))
    assert missing_ranges(evidence, at(20) + 30_000, at(90) + 59_999) == [span(20, 90)]
    assert missing_ranges(evidence, at(90), at(90)) == []


def test_a_market_without_rows_or_evidence_has_nothing_to_repair():
    assert missing_ranges(MarketEvidence(), 0, at(100)) == []


def test_before_the_first_bar_is_what_nothing_vouches_for_and_the_repair_leaves_alone():
    evidence = MarketEvidence(
        bounds=span(100, 110), rest=[span(20, 30), span(100, 110)], outages=[span(50, 60)]
    )
    # covered (a backfill found no trades) and missing (an outage: the repair fetches it) are not
    # counted; neither is anything from the first bar on
    assert before_first_bar_ranges(evidence, at(0), at(200)) == [span(0, 20), span(30, 50), span(60, 100)]
    assert before_first_bar_ranges(evidence, at(100), at(200)) == []
    assert before_first_bar_ranges(evidence, at(0), at(40)) == [span(0, 20), span(30, 40)]
    # a market without rows: every minute nothing vouches for, up to the end
    quiet = MarketEvidence(ws=[span(150, 200)])
    assert before_first_bar_ranges(quiet, at(100), at(200)) == [span(100, 150)]


def test_the_summary_counts_each_unvouched_minute_once_in_one_of_three_kinds():
    evidence = {
        # history from minute 0: 10 missing minutes, the repair job fetches 4 of them
        ("BTC", "USD"): MarketEvidence(bounds=span(0, 100), rest=[span(0, 90)]),
        # first bar at minute 60: 50 minutes before it (10 covered), 40 missing, none being repaired
        ("ETH", "USD"): MarketEvidence(bounds=span(60, 100), rest=[span(20, 30)]),
        # complete from its first bar on
        ("XRP", "USD"): MarketEvidence(bounds=span(0, 100), rest=[span(0, 100)]),
    }
    repairing = {("BTC", "USD"): [span(85, 94)], ("ETH", "USD"): [span(0, 10)]}
    counts = summarise("bitfinex", evidence, at(100), repairing)
    assert (counts.history_start, counts.end, counts.markets_known) == (at(0), at(100), 3)
    assert (counts.before_first_bar_minutes, counts.markets_before_first_bar) == (50, 1)
    assert (counts.missing_minutes, counts.markets_with_gaps) == (50, 2)
    assert (counts.repairing_minutes, counts.markets_repairing) == (4, 1)
    assert (counts.awaiting_repair_minutes, counts.markets_awaiting_repair) == (46, 2)
    nothing = summarise("bittrex", {}, at(100), {})
    assert nothing.history_start is None and nothing.before_first_bar_minutes == 0


def test_plan_gaps_leaves_out_complete_markets_and_counts_minutes():
    gaps = plan_gaps(
        {
            ("BTC", "USD"): MarketEvidence(bounds=span(0, 10), rest=[span(0, 4)]),
            ("ETH", "USD"): MarketEvidence(bounds=span(0, 10), rest=[span(0, 10)]),
        },
        0,
        at(10),
    )
    assert gaps == {("BTC", "USD"): [span(4, 10)]}
    assert missing_minutes(gaps) == 6


def test_repair_requests_fill_every_gap_newest_first_and_stop_at_the_cap():
    adapter = get_adapter("binance")  # at most 1000 minutes per request
    markets = {
        ("BTC", "USDT"): Market("binance", "BTC", "USDT", "BTCUSDT"),
        ("ETH", "USDT"): Market("binance", "ETH", "USDT", "ETHUSDT"),
    }
    gaps = {("BTC", "USDT"): [span(0, 1500), span(3000, 3010)], ("ETH", "USDT"): [span(2000, 2001)]}
    tasks = plan_repair_tasks(adapter, markets, gaps, max_requests=100)
    assert [(t.symbol, t.start_ms, t.end_ms) for t in tasks] == [
        ("BTCUSDT", *span(3000, 3010)),
        ("ETHUSDT", *span(2000, 2001)),
        ("BTCUSDT", *span(1000, 1500)),
        ("BTCUSDT", *span(0, 1000)),
    ]
    covered = merge((t.start_ms, t.end_ms) for t in tasks if t.symbol == "BTCUSDT")
    assert covered == gaps[("BTC", "USDT")]
    assert len(plan_repair_tasks(adapter, markets, gaps, max_requests=2)) == 2


def test_repair_takes_closed_days_from_archive_files_and_the_rest_over_rest():
    """With the exchange's present, a day-long gap of a closed day is one archive file; a gap of
    minutes and a gap in the current day are REST requests (T0 is 2021-06-01)."""
    adapter = get_adapter("binance")
    markets = {("BTC", "USDT"): Market("binance", "BTC", "USDT", "BTCUSDT")}
    day = 1440
    gaps = {("BTC", "USDT"): [span(0, day), span(day + 10, day + 20), span(3 * day, 3 * day + 30)]}
    now = at(3 * day + 60)
    tasks = plan_repair_tasks(adapter, markets, gaps, max_requests=100, now_ms=now, source="auto")
    assert [(t.archive, t.start_ms, t.end_ms) for t in tasks] == [
        ("", *span(3 * day, 3 * day + 30)),
        ("", *span(day + 10, day + 20)),
        ("2021-06-01", *span(0, day)),
    ]
    rest_only = plan_repair_tasks(adapter, markets, gaps, max_requests=100, now_ms=now, source="rest")
    assert all(t.archive == "" for t in rest_only) and len(rest_only) == 4


def test_a_markets_short_gaps_within_one_requests_reach_are_fetched_together():
    """A reconnect storm leaves every market a gap per reconnect; the repair pays per request, so
    gaps one request can span go together, and a longer span stays apart."""
    adapter = get_adapter("binance")  # at most 1000 minutes per request
    markets = {("BTC", "USDT"): Market("binance", "BTC", "USDT", "BTCUSDT")}
    storm = [span(100 + 50 * k, 102 + 50 * k) for k in range(19)]  # 19 gaps of 2 minutes over 902
    gaps = {("BTC", "USDT"): [*storm, span(1200, 1201), span(2500, 3600)]}
    tasks = plan_repair_tasks(adapter, markets, gaps, max_requests=100)
    assert [(t.start_ms, t.end_ms) for t in tasks] == [
        span(3500, 3600),
        span(2500, 3500),
        span(1200, 1201),  # 1,101 minutes from the storm's first: a request apart
        span(100, 1002),
    ]
    filled = merge((t.start_ms, t.end_ms) for t in tasks)
    assert subtract(gaps[("BTC", "USDT")], filled) == []


def test_coalesce_joins_neighbours_only_while_the_joined_range_fits():
    assert coalesce([(0, 2), (10, 12), (20, 30), (5, 6)], 12) == [(0, 12), (20, 30)]
    assert coalesce([(0, 2), (10, 12)], 11) == [(0, 2), (10, 12)]
    assert coalesce([(0, 50), (60, 61)], 10) == [(0, 50), (60, 61)]
    assert coalesce([], 10) == []
