"""Binance's public data archive (data.binance.vision): file layout, checksum files, kline CSV.

Pure, like the adapters: no I/O here. Wire facts this module relies on (docs/exchanges.md):

- one zip per market and period holding one CSV: `data/spot/monthly/klines/{SYMBOL}/1m/
  {SYMBOL}-1m-{YYYY-MM}.zip` for a month, `data/spot/daily/klines/{SYMBOL}/1m/
  {SYMBOL}-1m-{YYYY-MM-DD}.zip` for a day; beside each, `<name>.zip.CHECKSUM` holding
  `<sha256 hex>  <name>.zip`;
- spot CSVs have no header row; the columns are the REST kline's (open time, open, high, low,
  close, volume, close time, quote volume, trades, taker base, taker quote, ignore), values as
  the same decimal text;
- open times are epoch milliseconds up to 2024 and epoch microseconds from 2025-01-01 on: the
  unit is told by the number's size, never by the date, so a file of either kind reads right.
"""

from __future__ import annotations

import bisect
import calendar
import hashlib
import operator
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import repeat

from common.candle import CandleBlock
from common.timeutil import datetime_to_ms

DAY_MS = 86_400_000
MICROSECONDS_FROM = 10**14
"""An open time at or above this is in microseconds: epoch ms stay below it until the year 5138,
epoch µs have been above it since 1973."""
CHECKSUM_SUFFIX = ".CHECKSUM"
PERIOD_RE = re.compile(r"^(\d{4})-(\d{2})(?:-(\d{2}))?$")
CHECKSUM_RE = re.compile(r"^([0-9a-fA-F]{64})(?:\s+\*?(\S+))?\s*$")


@dataclass(frozen=True, slots=True)
class ArchivePeriod:
    """A month (`2024-12`) or a day (`2025-01-07`) of one archive file, and the minutes it holds."""

    text: str
    start_ms: int
    end_ms: int

    @property
    def monthly(self) -> bool:
        return len(self.text) == 7


def month_period(year: int, month: int) -> ArchivePeriod:
    start = datetime(year, month, 1, tzinfo=UTC)
    days = calendar.monthrange(year, month)[1]
    start_ms = datetime_to_ms(start)
    return ArchivePeriod(f"{year:04d}-{month:02d}", start_ms, start_ms + days * DAY_MS)


def month_of(ms: int) -> ArchivePeriod:
    """The month holding the minute `ms`."""
    when = datetime.fromtimestamp(ms / 1000, UTC)
    return month_period(when.year, when.month)


def day_period(day_ms: int) -> ArchivePeriod:
    day_ms -= day_ms % DAY_MS
    day = datetime.fromtimestamp(day_ms / 1000, UTC)
    return ArchivePeriod(f"{day:%Y-%m-%d}", day_ms, day_ms + DAY_MS)


def parse_period(text: str) -> ArchivePeriod:
    """`YYYY-MM` or `YYYY-MM-DD`; ValueError for anything else."""
    match = PERIOD_RE.match(text)
    if match is None:
        raise ValueError(f"not an archive period: {text!r}")
    year, month, day = match.groups()
    if day is None:
        return month_period(int(year), int(month))
    return day_period(datetime_to_ms(datetime(int(year), int(month), int(day), tzinfo=UTC)))


def file_name(symbol: str, period: str) -> str:
    return f"{symbol}-1m-{period}.zip"


def file_path(symbol: str, period: str) -> str:
    """The zip's path under the archive's base URL (no leading slash)."""
    kind = "monthly" if parse_period(period).monthly else "daily"
    return f"data/spot/{kind}/klines/{symbol}/1m/{file_name(symbol, period)}"


def parse_checksum(text: str, expected_name: str | None = None) -> str:
    """The lower-case SHA-256 hex of a `.CHECKSUM` file (`<hex>  <name>`, the name optional).
    ValueError if it holds no digest, or names another file than `expected_name`."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if len(lines) != 1:
        raise ValueError(f"a checksum file holds one line, got {len(lines)}")
    match = CHECKSUM_RE.match(lines[0].strip())
    if match is None:
        raise ValueError(f"not a SHA-256 checksum line: {lines[0][:100]!r}")
    digest, name = match.groups()
    if expected_name is not None and name is not None and name != expected_name:
        raise ValueError(f"the checksum is for {name!r}, not {expected_name!r}")
    return digest.lower()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


COLUMNS = 12
STRIDE = COLUMNS + 1
"""Fields per row once each newline became a field of its own (see `parse_klines_csv`)."""


def parse_klines_csv(
    text: str, exchange: str, base_id: str, quote_id: str, start_ms: int, end_ms: int
) -> CandleBlock:
    """The 1-minute klines of an archive CSV with open time in [start_ms, end_ms), as a block of
    the file's own decimal text (open times in ms or µs, see the module doc). A header row, if
    any, is skipped. ValueError for anything that is not a well-formed file of whole minutes.

    A file is a month of rows, so no Python code runs per row: the whole text is cut into one
    list of fields with every newline a field of its own, and columns are taken by stride. That
    every row has its twelve columns is proven by each newline sitting where twelve columns put
    it; the block's bulk check refuses any value that is not decimal text."""
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    text = text.strip("\n")
    if text.startswith("open_time,"):
        text = text.partition("\n")[2]
    if not text:
        return CandleBlock(exchange, base_id, quote_id, [], [])
    rows = text.count("\n") + 1
    fields = text.replace("\n", ",\n,").split(",")
    if len(fields) != rows * STRIDE - 1 or fields[COLUMNS::STRIDE].count("\n") != rows - 1:
        raise ValueError("malformed archive klines: a row has not the twelve kline columns")
    texts = fields[0::STRIDE]
    try:
        stamps = list(map(int, texts))
    except ValueError as error:
        raise ValueError(f"malformed archive klines: {error}") from None
    if stamps[0] >= MICROSECONDS_FROM:
        if not all(map(str.endswith, texts, repeat("000", rows))):
            raise ValueError("malformed archive klines: an open time in µs is not on a whole millisecond")
        texts = list(map(operator.itemgetter(slice(None, -3)), texts))
        times = list(map(operator.floordiv, stamps, repeat(1000, rows)))
    else:
        times = stamps
    t0 = times[0]
    regular = times == list(range(t0, t0 + rows * 60_000, 60_000))
    if not regular and not all(map(int.__lt__, times, times[1:])):
        raise ValueError("malformed archive klines: open times are not strictly ascending")
    lo = bisect.bisect_left(times, start_ms)
    hi = bisect.bisect_left(times, end_ms)
    columns = [texts[lo:hi], *(fields[c::STRIDE][lo:hi] for c in range(1, 6))]
    lines = list(map("\t".join, zip(*columns, strict=True)))
    try:
        return CandleBlock(exchange, base_id, quote_id, times[lo:hi], lines)
    except ValueError as error:
        raise ValueError(f"malformed archive klines: {error}") from None
