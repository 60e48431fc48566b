"""Websocket coverage and outages: what each connection's evidence proved, queued for the updater.

A task of the stream engine takes, once a second, every connection's newly proven minutes and
newly found outages (`fetchers.exchanges.evidence`: a minute is covered only on the exchange's own
evidence that every update of it arrived). Proven minutes are handed out only up to the minute
before the newest bar the fetcher saw, so the updater's closure rule has closed their bars by the
time it stores the record. Records travel through the sink's outage list, after the bars they
cover, and the updater stores them in the transaction that holds those bars: coverage is never
claimed for bars not yet in the database.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

from common.coverage import WS, CoverageRange
from common.redis_records import OutageRecord
from common.timeutil import MINUTE_MS, floor_minute_ms

if TYPE_CHECKING:
    from fetchers.ws.connection import LiveConnection
    from fetchers.ws.stream import StreamEngine

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0


def take_records(connections: Sequence[LiveConnection], clock_ms: int) -> list[OutageRecord | CoverageRange]:
    """Every connection's new outages, then its new coverage before the minute before `clock_ms`."""
    until_ms = floor_minute_ms(clock_ms) - MINUTE_MS
    records: list[OutageRecord | CoverageRange] = []
    for conn in connections:
        proven, outages = conn.evidence.take(until_ms)
        for reason, count in Counter(span.reason for span in outages).items():
            log.warning("%s: outage of %d markets recorded: %s", conn.name, count, reason)
        for span in outages:
            if (m := conn.markets.get(span.symbol)) is not None:
                records.append(
                    OutageRecord(m.exchange, m.base_id, m.quote_id, span.start_ms, span.end_ms, span.reason)
                )
        for span in proven:
            if (m := conn.markets.get(span.symbol)) is not None:
                records.append(
                    CoverageRange(m.exchange, m.base_id, m.quote_id, span.start_ms, span.end_ms, WS)
                )
    return records


async def track_coverage(engine: StreamEngine) -> None:
    """Run for the life of the engine: queue each connection's new records every second."""
    while True:
        await asyncio.sleep(POLL_SECONDS)
        if engine.clock_ms:
            records = take_records(engine.connections, engine.clock_ms)
            if records:
                engine.outages_recorded += sum(type(r) is OutageRecord for r in records)
                engine.sink.add_records(records)
