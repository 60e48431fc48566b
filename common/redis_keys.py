"""Redis key names. `ws_send_*` keys are a public promise to users; the rest are internal."""

from __future__ import annotations

from common.settings import get_settings

WS_SUB_LIST = "ws_sub_list"


def _join(*parts: str, delimiter: str | None = None) -> str:
    sep = delimiter if delimiter is not None else get_settings().redis_key_delimiter
    return sep.join(parts)


def ws_send_key(exchange: str, base_id: str, quote_id: str, delimiter: str | None = None) -> str:
    """Hash (and PUBLISH channel) holding the latest bar: `ws_send_{exchange};;{base};;{quote}`."""
    return "ws_send_" + _join(exchange, base_id, quote_id, delimiter=delimiter)


def ws_sub_key(exchange: str, base_id: str, quote_id: str, delimiter: str | None = None) -> str:
    """Hash of bars waiting for the database flush (internal)."""
    return "ws_sub_" + _join(exchange, base_id, quote_id, delimiter=delimiter)


def rate_budget_key(exchange: str) -> str:
    """Shared REST rate budget of one exchange (internal)."""
    return f"cfr:rate:{exchange}"


def backfill_key(*parts: str) -> str:
    """Durable backfill job state (internal): `cfr:backfill:<parts>`."""
    return "cfr:backfill:" + ":".join(parts)
