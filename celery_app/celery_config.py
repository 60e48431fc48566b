"""Celery configuration: one queue per exchange for REST work, Redis as broker."""

from __future__ import annotations

from kombu import Queue

from celery_app.queue_messages import REPAIR_TASK
from common.exchanges import EXCHANGES
from common.settings import get_settings

REST_QUEUES: dict[str, str] = {exchange: f"{exchange}_rest" for exchange in EXCHANGES}

task_queues = tuple(Queue(name) for name in REST_QUEUES.values())
task_default_queue = REST_QUEUES["binance"]
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
timezone = "UTC"
enable_utc = True
# A backfill message is acknowledged only when its task returns, and a worker takes one at a time:
# the job's requests live in Redis, so a redelivered message just helps drain the same job.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
broker_connection_retry_on_startup = True
result_expires = 24 * 3600
# Our own logging setup (common.logging_setup) owns the root logger and writes to stderr; Celery
# redirecting stdout/stderr into its `celery.redirected` logger would print every line twice.
worker_hijack_root_logger = False
worker_redirect_stdouts = False

beat_schedule = {
    f"refresh-markets-{exchange}": {
        "task": "celery_app.celery_tasks.refresh_markets",
        "schedule": 24 * 3600.0,
        "args": (exchange,),
        "options": {"queue": queue},
    }
    for exchange, queue in REST_QUEUES.items()
}
# Self-healing history: every REPAIR_INTERVAL_SECONDS each exchange's gaps are planned and repaired
# at low priority, on the exchange's own queue (the task yields to backfills waiting there).
beat_schedule.update(
    {
        f"repair-gaps-{exchange}": {
            "task": REPAIR_TASK,
            "schedule": get_settings().repair_interval_seconds,
            "args": (exchange,),
            "options": {"queue": queue, "expires": get_settings().repair_interval_seconds},
        }
        for exchange, queue in REST_QUEUES.items()
    }
)
