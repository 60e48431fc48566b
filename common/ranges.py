"""Half-open time ranges [start_ms, end_ms) as sorted, merged lists: the arithmetic of coverage.

Pure functions on plain tuples, so the planner and the coverage API share one tested definition of
"covered", "missing" and "merged". Every function returns a normalised list: sorted, no empty
range, and no two ranges overlapping or touching.
"""

from __future__ import annotations

from collections.abc import Iterable

Range = tuple[int, int]


def merge(ranges: Iterable[Range]) -> list[Range]:
    """The union of `ranges`, with overlapping or touching ranges joined."""
    merged: list[Range] = []
    for start, end in sorted(r for r in ranges if r[0] < r[1]):
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def coalesce(ranges: Iterable[Range], span: int) -> list[Range]:
    """`ranges` merged, then neighbours joined over the gaps between them while the joined range
    is at most `span` long (a range longer than `span` is left as it is): the fewest ranges that
    hold every minute of `ranges` where one request can carry `span`, for a planner that pays per
    request, not per row."""
    joined: list[Range] = []
    for start, end in merge(ranges):
        if joined and end - joined[-1][0] <= span:
            joined[-1] = (joined[-1][0], end)
        else:
            joined.append((start, end))
    return joined


def subtract(ranges: Iterable[Range], removed: Iterable[Range]) -> list[Range]:
    """What of `ranges` is outside every range of `removed`."""
    result: list[Range] = []
    cuts = merge(removed)
    for start, end in merge(ranges):
        current = start
        for cut_start, cut_end in cuts:
            if cut_end <= current:
                continue
            if cut_start >= end:
                break
            if cut_start > current:
                result.append((current, cut_start))
            current = max(current, cut_end)
            if current >= end:
                break
        if current < end:
            result.append((current, end))
    return result


def intersect(ranges: Iterable[Range], window: Iterable[Range]) -> list[Range]:
    """What of `ranges` lies inside `window`."""
    result: list[Range] = []
    others = merge(window)
    for start, end in merge(ranges):
        for other_start, other_end in others:
            low, high = max(start, other_start), min(end, other_end)
            if low < high:
                result.append((low, high))
    return merge(result)


def clip(ranges: Iterable[Range], start: int, end: int) -> list[Range]:
    """`ranges` cut to [start, end)."""
    return intersect(ranges, [(start, end)])


def total(ranges: Iterable[Range]) -> int:
    """Length of the union of `ranges`."""
    return sum(end - start for start, end in merge(ranges))
