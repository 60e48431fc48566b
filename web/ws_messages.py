"""The client -> server messages of WS /api/ohlcvs, validated into subscriptions (pure)."""

from __future__ import annotations

import json
import re

from common.candle import MarketKey
from common.exchanges import EXCHANGES
from web.live import Subscription
from web.reads import INTERVALS

_ID = re.compile(r"[A-Za-z0-9._-]{1,40}")
EXAMPLE = (
    '{"event_type": "subscribe", "data_type": "ohlcv", "exchange": "binance", '
    '"base_id": "BTC", "quote_id": "USDT", "interval": "1m", "mls": true}'
)


class BadMessage(ValueError):
    """What was wrong with a client message and what to send instead."""


def parse_request(text: str | bytes | None) -> tuple[str, Subscription]:
    """`("subscribe" | "unsubscribe", subscription)` or BadMessage."""
    if text is None:
        raise BadMessage(f"send JSON text messages such as {EXAMPLE}")
    try:
        data = json.loads(text)
    except ValueError:
        raise BadMessage(f"not JSON: send a message such as {EXAMPLE}") from None
    if not isinstance(data, dict):
        raise BadMessage(f"send a JSON object such as {EXAMPLE}")
    event = data.get("event_type")
    if event not in ("subscribe", "unsubscribe"):
        raise BadMessage(f"event_type: send 'subscribe' or 'unsubscribe' (got {event!r})")
    if data.get("data_type", "ohlcv") != "ohlcv":
        raise BadMessage(f"data_type: send 'ohlcv' (got {data.get('data_type')!r})")
    exchange = data.get("exchange")
    if exchange not in EXCHANGES:
        raise BadMessage(f"exchange: send one of {', '.join(EXCHANGES)} (got {exchange!r})")
    for name in ("base_id", "quote_id"):
        value = data.get(name)
        if not isinstance(value, str) or not _ID.fullmatch(value):
            raise BadMessage(f"{name}: send the currency code, e.g. BTC (got {value!r})")
    interval = data.get("interval", "1m")
    if interval not in INTERVALS:
        raise BadMessage(f"interval: send one of {' '.join(INTERVALS)} (got {interval!r})")
    mls = data.get("mls", True)
    if not isinstance(mls, bool):
        raise BadMessage(f"mls: send true (time in ms) or false (ISO-8601 text) (got {mls!r})")
    market = MarketKey(exchange, data["base_id"], data["quote_id"])
    return event, Subscription(market, INTERVALS[interval], mls)
