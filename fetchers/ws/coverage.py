"""Websocket coverage: the minutes each connection delivered without interruption, per market.

A task of the stream engine looks at every connection once a second. A connection is whole while
it is up, subscribed, not paused by maintenance and has no open outage. It vouches for a market
once a bar of that market arrived on the socket since it (re)subscribed (Bitfinex replays recent
candles on subscribe, the others send a bar every minute), so a subscription the exchange refused,
which looks like a quiet market, vouches for nothing. A market is covered from two minutes after
the connection's newest bar when it was first found so (its subscription was in by then), up to the
minute before the connection's newest bar (frames on one socket arrive in order, so every update
of those minutes has arrived; the updater's closure rule closes them too). A reconnect between two
looks ends every stretch of the connection, even if it already healed. Records travel through the
sink's outage list, after the bars they cover, and the updater stores them in the transaction that
holds those bars: coverage is never claimed for bars not yet in the database.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from common.timeutil import MINUTE_MS, floor_minute_ms

if TYPE_CHECKING:
    from fetchers.ws.connection import LiveConnection
    from fetchers.ws.sink import MarketKeys
    from fetchers.ws.stream import StreamEngine

POLL_SECONDS = 1.0
COVERAGE_KIND = "coverage"


@dataclass(slots=True)
class _Stretch:
    reconnects: int
    covered_until_ms: dict[str, int] = field(default_factory=dict)
    """Per market: end of what was recorded so far (absent while the market is not vouched for)."""


def is_whole(conn: LiveConnection) -> bool:
    """Up, subscribed, not paused by maintenance, and no open outage."""
    return (
        conn.up
        and conn.subscribed
        and not conn.paused
        and conn.gap_start_ms is None
        and conn.newest_ms is not None
    )


def coverage_record(market: MarketKeys, start_ms: int, end_ms: int) -> str:
    return json.dumps(
        {
            "kind": COVERAGE_KIND,
            "exchange": market.exchange,
            "base_id": market.base_id,
            "quote_id": market.quote_id,
            "start_ms": start_ms,
            "end_ms": end_ms,
        }
    )


class CoverageTracker:
    """Per connection, the stretch it has been whole; `poll` returns the records to queue."""

    def __init__(self) -> None:
        self._stretches: dict[LiveConnection, _Stretch] = {}

    def poll(self, connections: Sequence[LiveConnection]) -> list[str]:
        records: list[str] = []
        seen: dict[LiveConnection, _Stretch] = {}
        for conn in connections:
            stretch = self._stretches.get(conn)
            whole = is_whole(conn)
            if stretch is None or stretch.reconnects != conn.reconnects or not whole:
                stretch = _Stretch(conn.reconnects)
            if whole:
                assert conn.newest_ms is not None
                newest = floor_minute_ms(conn.newest_ms)
                end = newest - MINUTE_MS
                for symbol, market in conn.markets.items():
                    if symbol not in conn.seen:
                        continue
                    start = stretch.covered_until_ms.get(symbol)
                    if start is None:
                        stretch.covered_until_ms[symbol] = newest + 2 * MINUTE_MS
                    elif end > start:
                        records.append(coverage_record(market, start, end))
                        stretch.covered_until_ms[symbol] = end
            seen[conn] = stretch
        self._stretches = seen
        return records


async def track_coverage(engine: StreamEngine) -> None:
    """Run for the life of the engine: queue each connection's new coverage every second."""
    tracker = CoverageTracker()
    while True:
        await asyncio.sleep(POLL_SECONDS)
        records = tracker.poll(engine.connections)
        if records:
            engine.sink.add_outages(records)
