"""Pure parts of the history cache: version lists, block bounds, slicing a block."""

from __future__ import annotations

from array import array
from datetime import UTC, datetime

from common.ohlcvs_versions import EARLIEST_MS, parse_entry
from common.timeutil import datetime_to_ms
from web.history_cache import Block, block_bars, block_bounds, changed_from
from web.reads import BUCKET_ORIGIN_MS, INTERVALS

MIN = 60_000


def test_changed_from_names_the_oldest_time_written_since_the_version_seen():
    entries = [b"107:5000", b"106:9000", b"105:3000", b"104:1"]
    assert changed_from(entries, 105) == (107, 5000)
    assert changed_from(entries, 104) == (107, 3000)
    assert changed_from(entries, 107) == (107, None)


def test_changed_from_drops_everything_when_writes_were_missed_or_the_list_is_new():
    entries = [b"107:5000", b"106:9000"]
    assert changed_from(entries, 100) == (107, EARLIEST_MS)  # more writes than the list keeps
    assert changed_from([b"42:5000"], 107) == (42, EARLIEST_MS)  # Redis lost the list: a new start
    assert changed_from([], 107) == (None, EARLIEST_MS)
    assert changed_from([b"107:5000", b"105:1"], 105) == (107, EARLIEST_MS)  # a gap in the chain
    assert parse_entry(b"garbage") is None and parse_entry(b"3:-62135596800000") == (3, EARLIEST_MS)


def test_blocks_are_aligned_like_the_buckets_and_hold_whole_bars():
    for name, interval in INTERVALS.items():
        bar = interval.bucket_start(datetime_to_ms(datetime(2025, 2, 17, 13, 5, tzinfo=UTC)))
        start, end = block_bounds(interval, bar)
        assert start <= bar < end
        assert interval.bucket_start(start) == start and block_bounds(interval, end - 1) == (start, end)
        assert block_bounds(interval, end)[0] == end, name
        if interval.width_ms:
            assert (start - BUCKET_ORIGIN_MS) % interval.width_ms == 0
            assert (end - start) // interval.width_ms == block_bars(interval)
    assert block_bars(INTERVALS["1m"]) == 1000 and block_bars(INTERVALS["7D"]) == 6


def test_a_window_is_the_newest_bars_in_range_joined_by_commas():
    objects = [b'{"time":%d}' % (i * MIN) for i in (1, 2, 4, 7)]
    offsets = array("q", [0])
    for text in objects:
        offsets.append(offsets[-1] + len(text) + 1)
    block = Block(array("q", [MIN, 2 * MIN, 4 * MIN, 7 * MIN]), offsets, b",".join(objects), 10 * MIN, 0.0)
    assert block.window(0, 10 * MIN, 10) == (b",".join(objects), 4)
    assert block.window(2 * MIN, 6 * MIN, 10) == (b'{"time":120000},{"time":240000}', 2)
    assert block.window(2 * MIN, 7 * MIN, 1) == (b'{"time":420000}', 1)
    assert block.window(5 * MIN, 6 * MIN, 3) == (b"", 0)
