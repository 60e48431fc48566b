"""The Prometheus metrics of REST fetching, kept by whichever process sends the requests (a Celery
worker process publishes them through `common.metrics`; the CLI's `--local` runs keep them unseen).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from common.exchanges import EXCHANGES

REGISTRY = CollectorRegistry(auto_describe=True)
"""This process's REST metrics (one registry per process: Celery forks a fresh copy into each child)."""

REQUESTS = Counter(
    "cfr_rest_requests",
    "REST requests sent, by the answer: 200, 429, 418, 5xx, other 4xx, or error (no HTTP answer).",
    ["exchange", "status"],
    registry=REGISTRY,
)
WEIGHT = Counter(
    "cfr_rest_request_weight",
    "Rate-limit weight of the REST requests sent (compare with cfr_rest_weight_limit per window).",
    ["exchange"],
    registry=REGISTRY,
)
PAUSE_SECONDS = Counter(
    "cfr_rest_pause_seconds",
    "Seconds every worker of the exchange was told to pause (429, 418, used weight near the limit).",
    ["exchange"],
    registry=REGISTRY,
)
EXCHANGE_USED_WEIGHT = Gauge(
    "cfr_rest_exchange_used_weight",
    "The used weight the exchange last reported for this IP (Binance X-MBX-USED-WEIGHT-1M).",
    ["exchange"],
    registry=REGISTRY,
)

EXACT_STATUSES = frozenset({200, 418, 429})
STATUS_LABELS = ("200", "429", "418", "5xx", "4xx", "error")


def status_label(status: int | None) -> str:
    """The `status` label of an answer: the ones alerts look for exactly, the rest by class."""
    if status is None:
        return "error"
    if status in EXACT_STATUSES:
        return str(status)
    return f"{status // 100}xx"


def count_request(exchange: str, status: int | None, weight: int) -> None:
    REQUESTS.labels(exchange, status_label(status)).inc()
    WEIGHT.labels(exchange).inc(weight)


def _start_every_series() -> None:
    """Every exchange's series exist from the start at zero, so a first 418 is an increase an alert
    sees (a series born at 1 has no increase) and a worker that sent nothing yet still shows."""
    for exchange in EXCHANGES:
        for status in STATUS_LABELS:
            REQUESTS.labels(exchange, status)
        WEIGHT.labels(exchange)
        PAUSE_SECONDS.labels(exchange)


_start_every_series()
