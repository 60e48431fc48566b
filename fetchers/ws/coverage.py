"""Websocket coverage: the minutes each connection delivered without interruption, per market.

A task of the stream engine looks at every connection once a second. A connection is whole while
it is up, subscribed, not paused by maintenance and has no open outage; it covers its markets from
two minutes after the newest bar it had seen when it was first found whole (its subscriptions were
all in by then), up to the minute before its own newest bar (frames on one socket arrive in order,
so every update of those minutes has arrived; the updater's closure rule closes them too). A
reconnect between two looks ends the stretch, even if it already healed. Records travel through
the sink's outage list, after the bars they cover, and the updater stores them in the transaction
that holds those bars: coverage is never claimed for bars not yet in the database.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from common.timeutil import MINUTE_MS, floor_minute_ms

if TYPE_CHECKING:
    from fetchers.ws.connection import LiveConnection
    from fetchers.ws.stream import StreamEngine

POLL_SECONDS = 1.0
COVERAGE_KIND = "coverage"


@dataclass(slots=True)
class _Stretch:
    reconnects: int
    covered_until_ms: int | None = None
    """End of what was recorded so far; None while the connection is not whole."""


def is_whole(conn: LiveConnection) -> bool:
    """Up, subscribed, not paused by maintenance, and no open outage."""
    return (
        conn.up
        and conn.subscribed
        and not conn.paused
        and conn.gap_start_ms is None
        and conn.newest_ms is not None
    )


def coverage_records(conn: LiveConnection, start_ms: int, end_ms: int) -> list[str]:
    return [
        json.dumps(
            {
                "kind": COVERAGE_KIND,
                "exchange": m.exchange,
                "base_id": m.base_id,
                "quote_id": m.quote_id,
                "start_ms": start_ms,
                "end_ms": end_ms,
            }
        )
        for m in conn.markets.values()
    ]


class CoverageTracker:
    """Per connection, the stretch it has been whole; `poll` returns the records to queue."""

    def __init__(self) -> None:
        self._stretches: dict[LiveConnection, _Stretch] = {}

    def poll(self, connections: Sequence[LiveConnection]) -> list[str]:
        records: list[str] = []
        seen: dict[LiveConnection, _Stretch] = {}
        for conn in connections:
            stretch = self._stretches.get(conn)
            if stretch is None or stretch.reconnects != conn.reconnects or not is_whole(conn):
                stretch = _Stretch(conn.reconnects)
            if is_whole(conn):
                assert conn.newest_ms is not None
                if stretch.covered_until_ms is None:
                    stretch.covered_until_ms = floor_minute_ms(conn.newest_ms) + 2 * MINUTE_MS
                end = floor_minute_ms(conn.newest_ms) - MINUTE_MS
                if end > stretch.covered_until_ms:
                    records += coverage_records(conn, stretch.covered_until_ms, end)
                    stretch.covered_until_ms = end
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
