"""Which minutes a websocket connection vouches for (pure: the tracker over connection states)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from fetchers.ws.coverage import CoverageTracker
from fetchers.ws.sink import MarketKeys
from fetchers.ws.updater import split_coverage

pytestmark = pytest.mark.unit

M = 60_000
T0 = 1_700_000_040_000


@dataclass(eq=False)
class Conn:
    """The state a LiveConnection exposes, as the connection loop sets it."""

    newest_ms: int | None = None
    up: bool = True
    subscribed: bool = True
    paused: bool = False
    gap_start_ms: int | None = None
    reconnects: int = 0
    markets: dict = field(
        default_factory=lambda: {
            s: MarketKeys.build("binance", b, "USDT", s, ";;")
            for s, b in (("BTCUSDT", "BTC"), ("ETHUSDT", "ETH"))
        }
    )
    seen: set = field(default_factory=lambda: {"BTCUSDT", "ETHUSDT"})


def ranges(records: list[str]) -> set[tuple[str, int, int]]:
    return {
        (r["base_id"], (r["start_ms"] - T0) // M, (r["end_ms"] - T0) // M) for r in map(json.loads, records)
    }


def test_a_whole_connection_covers_from_two_minutes_after_it_was_seen_whole_to_the_minute_before_its_newest():
    conn, tracker = Conn(newest_ms=T0), CoverageTracker()
    assert tracker.poll([conn]) == []
    conn.newest_ms = T0 + 3 * M
    assert tracker.poll([conn]) == []  # [2, 2): nothing yet
    conn.newest_ms = T0 + 5 * M
    assert ranges(tracker.poll([conn])) == {("BTC", 2, 4), ("ETH", 2, 4)}
    assert tracker.poll([conn]) == []
    conn.newest_ms = T0 + 9 * M + 30_000
    assert ranges(tracker.poll([conn])) == {("BTC", 4, 8), ("ETH", 4, 8)}


def test_a_reconnect_between_two_looks_ends_the_stretch_even_if_it_healed():
    conn, tracker = Conn(newest_ms=T0), CoverageTracker()
    tracker.poll([conn])
    conn.newest_ms = T0 + 10 * M
    assert ranges(tracker.poll([conn])) == {("BTC", 2, 9), ("ETH", 2, 9)}
    conn.reconnects += 1  # dropped and healed between looks
    conn.newest_ms = T0 + 20 * M
    assert tracker.poll([conn]) == []
    conn.newest_ms = T0 + 30 * M
    assert ranges(tracker.poll([conn])) == {("BTC", 22, 29), ("ETH", 22, 29)}


@pytest.mark.parametrize(
    "state", [{"up": False}, {"subscribed": False}, {"paused": True}, {"gap_start_ms": T0}]
)
def test_nothing_is_covered_while_the_connection_is_not_whole(state):
    conn, tracker = Conn(newest_ms=T0), CoverageTracker()
    tracker.poll([conn])
    for name, value in state.items():
        setattr(conn, name, value)
    conn.newest_ms = T0 + 10 * M
    assert tracker.poll([conn]) == []
    conn.__init__(newest_ms=T0 + 11 * M)  # whole again: a new stretch starts later
    assert tracker.poll([conn]) == []
    conn.newest_ms = T0 + 20 * M
    assert ranges(tracker.poll([conn])) == {("BTC", 13, 19), ("ETH", 13, 19)}


def test_a_market_vouches_only_once_a_bar_of_it_arrived_since_subscribing():
    """A refused subscription looks like a quiet market: without a bar of it, nothing is covered."""
    conn, tracker = Conn(newest_ms=T0, seen={"BTCUSDT"}), CoverageTracker()
    tracker.poll([conn])
    conn.newest_ms = T0 + 5 * M
    assert ranges(tracker.poll([conn])) == {("BTC", 2, 4)}
    conn.seen.add("ETHUSDT")  # its first bar (e.g. a late subscription) arrives
    assert tracker.poll([conn]) == []
    conn.newest_ms = T0 + 10 * M
    assert ranges(tracker.poll([conn])) == {("BTC", 4, 9), ("ETH", 7, 9)}


def test_the_updater_tells_coverage_records_from_outage_records():
    conn, tracker = Conn(newest_ms=T0), CoverageTracker()
    tracker.poll([conn])
    conn.newest_ms = T0 + 5 * M
    outage = json.dumps(
        {
            "exchange": "binance",
            "base_id": "BTC",
            "quote_id": "USDT",
            "start_ms": T0,
            "end_ms": T0 + M,
            "reason": "x",
        }
    )
    outages, covered = split_coverage([outage, *tracker.poll([conn])])
    assert outages == [outage]
    assert sorted((c.base_id, c.start_ms, c.end_ms, c.source) for c in covered) == [
        ("BTC", T0 + 2 * M, T0 + 4 * M, "ws"),
        ("ETH", T0 + 2 * M, T0 + 4 * M, "ws"),
    ]
