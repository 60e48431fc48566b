"""Redis key names. `ws_send_*` keys are a public promise to users; the rest are internal."""

from __future__ import annotations

from common.settings import get_settings

WS_SUB_LIST = "ws_sub_list"
WS_UPDATER_HEALTH = "ws_updater_health"
WS_OUTAGES = "ws_outages"
"""List of outage and coverage records (JSON) from the fetchers, moved into `ohlcvs_outages` and
`ohlcvs_coverage` by the updater."""
WS_SUB_REJECTED = "ws_sub_rejected"
"""List of stored bars the updater could not read (JSON: key, field, raw text, reason), moved aside
so they do not block the bars behind them (internal; for operators, see docs/operations.md)."""


def _join(*parts: str, delimiter: str | None = None) -> str:
    sep = delimiter if delimiter is not None else get_settings().redis_key_delimiter
    return sep.join(parts)


def ws_send_key(exchange: str, base_id: str, quote_id: str, delimiter: str | None = None) -> str:
    """Hash (and PUBLISH channel) holding the latest bar: `ws_send_{exchange};;{base};;{quote}`."""
    return "ws_send_" + _join(exchange, base_id, quote_id, delimiter=delimiter)


def ws_sub_key(exchange: str, base_id: str, quote_id: str, delimiter: str | None = None) -> str:
    """Hash of bars waiting for the database flush (internal)."""
    return "ws_sub_" + _join(exchange, base_id, quote_id, delimiter=delimiter)


def ws_health_key(exchange: str) -> str:
    """Hash of one exchange's fetcher health (connections, messages/s, clocks, reconnects)."""
    return f"ws_health_{exchange}"


def ws_progress_key(exchange: str) -> str:
    """Hash: fetcher (shard) label -> newest bar time it handed to Redis; tells a restarted
    fetcher since when it was away (internal)."""
    return f"ws_progress_{exchange}"


def rate_budget_key(exchange: str) -> str:
    """Shared REST rate budget of one exchange (internal)."""
    return f"cfr:rate:{exchange}"


METRICS_PROCESSES = "cfr:metrics:processes"
"""Sorted set: process label -> ms when its metrics snapshot goes stale (internal)."""


def metrics_process_key(process: str) -> str:
    """Hash of one process's last metrics snapshot: `role`, `updated_ms`, `families` (internal)."""
    return f"cfr:metrics:process:{process}"


def backfill_key(*parts: str) -> str:
    """Durable backfill job state (internal): `cfr:backfill:<parts>`."""
    return "cfr:backfill:" + ":".join(parts)


OHLCVS_VERSION_SUMMARIES = "ohlcvs_version_summaries"
"""List: one entry per aggregate refresh, `version:from_ms` newest first (internal; see
`common.ohlcvs_versions`)."""


def ohlcvs_version_key(exchange: str, base_id: str, quote_id: str, delimiter: str | None = None) -> str:
    """List: one entry per committed write to a market's `ohlcvs` rows, `version:from_ms` newest first;
    the web's history cache drops what it holds from `from_ms` on (internal)."""
    return _join("ohlcvs_version", exchange, base_id, quote_id, delimiter=delimiter)
