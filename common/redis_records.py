"""What crosses Redis between the platform's processes, typed, with one encoder and one decoder each.

- The live bar (`common.candle.Bar`: open time in ms, then open, high, low, close, volume): a
  fetcher writes it as the `ws_send_*` hash (fields time, open, high, low, close, volume: public)
  and PUBLISHes it as compact JSON on the channel of that name (public); the same JSON, with
  `"closed":true` when the exchange said the bar is final, waits in the `ws_sub_*` hash for the
  updater. The web reads all three. Prices and volumes are the exchange's decimal text, checked
  before they are stored, so the JSON is written without an encoder. The fetcher's sink builds this
  JSON in its Lua script (fewer arguments to send); the tests hold the script to `encode_bar` and
  `encode_waiting_bar`.
- The outage and coverage records the fetchers queue on `ws_outages` for the updater
  (`OutageRecord`, and `common.coverage.CoverageRange` of source `ws`), and the record of a stored
  bar the updater could not read, moved aside to `ws_sub_rejected` (`RejectedBar`, for operators).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from common.candle import Bar
from common.coverage import WS, CoverageRange

BAR_FIELDS = ("open", "high", "low", "close", "volume")
BAR_JSON = '{"time":%d,"open":"%s","high":"%s","low":"%s","close":"%s","volume":"%s"}'
"""The public bar JSON: `BAR_JSON % (time_ms, open, high, low, close, volume)`."""
CLOSED_MARK = '"closed":true'
WAITING_CLOSED_JSON = BAR_JSON[:-1] + "," + CLOSED_MARK + "}"
"""A bar waiting in `ws_sub_*` that the exchange said is final: the public JSON plus the mark."""

_BAR_BYTES = BAR_JSON.encode()
_CLOSED_BYTES = WAITING_CLOSED_JSON.encode()
_CLOSED_MARK_BYTES = CLOSED_MARK.encode()


def encode_bar(bar: Bar) -> str:
    """The public JSON (the `ws_send_*` channel's message)."""
    return BAR_JSON % bar


def encode_waiting_bar(bar: Bar, closed: bool) -> str:
    """What waits in `ws_sub_*`: the public JSON, plus `"closed":true` when the exchange said so."""
    return (WAITING_CLOSED_JSON if closed else BAR_JSON) % bar


def decode_bar(raw: bytes | str) -> Bar:
    """A bar from its JSON (published or waiting; any key order or spacing): an integer time and
    five strings, else ValueError. Whether the strings are decimal numbers is the reader's check
    (`said_closed` reads the closed mark)."""
    try:
        data = json.loads(raw)
        bar = (data["time"], *(data[name] for name in BAR_FIELDS))
    except (ValueError, TypeError, KeyError):
        raise ValueError(f"not a bar: {raw[:200]!r}") from None
    if type(bar[0]) is not int or not all(type(v) is str for v in bar[1:]):
        raise ValueError(f"not a bar of an integer time and five strings: {raw[:200]!r}")
    return bar


def decode_latest_hash(fields: Mapping[bytes, bytes]) -> Bar:
    """The bar of a `ws_send_*` hash (field -> text as Redis returns it); ValueError if it is absent
    or malformed."""
    try:
        return (int(fields[b"time"]), *(fields[name.encode()].decode() for name in BAR_FIELDS))
    except (KeyError, ValueError, UnicodeDecodeError):
        raise ValueError(f"not a latest-bar hash: {dict(fields)!r:.200}") from None


def said_closed(raw: bytes | str) -> bool:
    """Whether a waiting bar carries the exchange's word that it is final (without parsing it)."""
    return (_CLOSED_MARK_BYTES in raw) if isinstance(raw, bytes) else (CLOSED_MARK in raw)


def waiting_bar_values(time_ms: int, raw: bytes) -> bytes:
    """A waiting bar's five values (open, high, low, close, volume), tab-joined, as the exchange sent
    them; ValueError if it is not a bar of strings for minute `time_ms`. The updater's hot path: a
    bar of exactly the encoder's shape is read by splitting on quotes, anything else is decoded."""
    parts = raw.split(b'"')
    if len(parts) in (23, 25):
        shape = _BAR_BYTES if len(parts) == 23 else _CLOSED_BYTES
        values = (parts[5], parts[9], parts[13], parts[17], parts[21])
        if raw == shape % (time_ms, *values):
            return b"\t".join(values)
    bar = decode_bar(raw)
    if bar[0] != time_ms:
        raise ValueError(f"not a bar of minute {time_ms}: {raw[:200]!r}")
    return "\t".join(bar[1:]).encode()


@dataclass(frozen=True, slots=True)
class OutageRecord:
    """Minutes [start_ms, end_ms) of a market the live feed may have lost, and why."""

    exchange: str
    base_id: str
    quote_id: str
    start_ms: int
    end_ms: int
    reason: str


@dataclass(frozen=True, slots=True)
class RejectedBar:
    """A waiting bar the updater could not read: its `ws_sub_*` key and field, its text, and why."""

    key: str
    field: str
    raw: str
    reason: str
    rejected_ms: int


_COVERAGE_KIND = "coverage"


def encode_record(record: OutageRecord | CoverageRange | RejectedBar) -> str:
    """The JSON of a record on `ws_outages` (outage, or websocket coverage) or `ws_sub_rejected`."""
    fields = asdict(record)
    if isinstance(record, CoverageRange):
        if fields.pop("source") != WS:
            raise ValueError(f"only websocket coverage travels through Redis, not {record.source!r}")
        fields = {"kind": _COVERAGE_KIND, **fields}
    return json.dumps(fields)


def decode_record(raw: bytes | str) -> OutageRecord | CoverageRange:
    """A record of `ws_outages`; ValueError (or KeyError for a missing field) if it is not one."""
    data = json.loads(raw)
    market = (data["exchange"], data["base_id"], data["quote_id"])
    if data.get("kind") == _COVERAGE_KIND:
        return CoverageRange(*market, int(data["start_ms"]), int(data["end_ms"]), WS)
    return OutageRecord(*market, int(data["start_ms"]), int(data["end_ms"]), data["reason"])
