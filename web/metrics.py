"""`GET /metrics`: every process's Prometheus metrics in one scrape (docs/operations.md "Metrics").

One answer holds three parts:

- the web's own: request latency by route template (`RequestMetrics`, an ASGI middleware) and
  websocket subscribers;
- every live fetcher's, updater's and Celery worker process's last snapshot (`common.metrics`),
  labelled with its `process`;
- gauges read at scrape time from state the platform keeps anyway: each fetcher's and the
  updater's health hash (seconds since the last message, since the last flush) and the REST rate
  budgets (limit, pause left); and, at most METRICS_STATE_SECONDS old (`StateGauges`), backfill and
  repair jobs by state and the coverage counts the status page shows (missing minutes, repair
  progress: `exchange_summaries`).

A part whose service is down is left out and `cfr_scrape_source_up` says which: the scrape still
answers, so the alerts on what it does hold keep working.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator

import redis.asyncio as aioredis
from fastapi import APIRouter, Request, Response
from prometheus_client import CollectorRegistry, Histogram, Metric, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from redis.exceptions import RedisError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.exchanges import EXCHANGES
from common.metrics import decode_rows
from common.redis_keys import METRICS_PROCESSES, WS_UPDATER_HEALTH, metrics_process_key, ws_health_key
from common.settings import Settings
from fetchers.exchanges import get_adapter
from fetchers.rest.job_store import JobState, JobStore, job_scope
from fetchers.rest.rate_limiter import LOW, SharedRateLimiter
from web.api.deps import CountingDep, HubDep, PoolDep, RedisDep, SettingsDep
from web.api.routes.coverage import exchange_summaries
from web.counting import CountingProcess
from web.database import DatabaseUnavailable

router = APIRouter(tags=["metrics"])

REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Seconds: the API answers in milliseconds, history pages in tens of them, a slow query in seconds."""
UNMATCHED_ROUTE = "<unmatched>"
"""The route label of a request no route took (404s, static files): raw paths would make a series
per URL anyone asks for."""
JOB_STATES = (
    JobState.QUEUED,
    JobState.RUNNING,
    JobState.INTERRUPTED,
    JobState.REFRESHING,
    JobState.DONE,
    JobState.CANCELLED,
)
JOB_KINDS = {"high": "backfill", LOW: "repair"}


class RequestMetrics:
    """Times every HTTP request into `cfr_web_request_duration_seconds{method, route, status}`; the
    route is the template that matched (`/api/ohlcvs`, `/view/{page}`), known once routing ran."""

    def __init__(self, app: ASGIApp, registry: CollectorRegistry) -> None:
        self.app = app
        self.histogram = Histogram(
            "cfr_web_request_duration_seconds",
            "Web request latency, from the request to the end of the answer, by route template.",
            ["method", "route", "status"],
            buckets=REQUEST_BUCKETS,
            registry=registry,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            self.histogram.labels(scope["method"], route_template(scope), f"{status // 100}xx").observe(
                time.perf_counter() - started
            )


def route_template(scope: Scope) -> str:
    """The full path template of the route that took the request. FastAPI keeps an included
    router's routes with their own paths (without the `/api` prefix) and puts the effective one,
    prefix and all, in `scope["fastapi"]`; routes of the app itself carry it in `scope["route"]`."""
    context = scope.get("fastapi", {}).get("effective_route_context")
    template = getattr(context, "path_format", None) or getattr(scope.get("route"), "path_format", None)
    return template or UNMATCHED_ROUTE


class _Families:
    """What `generate_latest` reads: families gathered before it runs (it cannot await)."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def _gauge(
    name: str, text: str, labels: list[str], rows: Iterable[tuple[list[str], float]]
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, text, labels=labels)
    for values, value in rows:
        family.add_metric(values, value)
    return family


async def process_families(redis: aioredis.Redis) -> list[Metric]:
    """Every live process's last snapshot, merged; stale entries leave the index."""
    now_ms = int(time.time() * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zremrangebyscore(METRICS_PROCESSES, "-inf", now_ms)
        pipe.zrange(METRICS_PROCESSES, 0, -1)
        _, members = await pipe.execute()
    processes = [m.decode() for m in members]
    async with redis.pipeline(transaction=False) as pipe:
        for process in processes:
            pipe.hget(metrics_process_key(process), "families")
        rows = await pipe.execute()
    return decode_rows(processes, rows)


async def health_families(redis: aioredis.Redis, settings: Settings) -> list[Metric]:
    """Silence and lag from the health hashes (what `/api/health` judges), and the rate budgets."""
    now_ms = int(time.time() * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        for exchange in EXCHANGES:
            pipe.hget(ws_health_key(exchange), "last_message_ms")
        pipe.hget(WS_UPDATER_HEALTH, "last_flush_ms")
        answers = await pipe.execute()
    silent = [
        ([exchange], max(0, now_ms - int(raw)) / 1000)
        for exchange, raw in zip(EXCHANGES, answers[:-1], strict=True)
        if raw is not None and int(raw) > 0
    ]
    families = [
        _gauge(
            "cfr_ws_seconds_since_last_message",
            "Seconds since the exchange's fetchers last received a frame (absent: never reported).",
            ["exchange"],
            silent,
        )
    ]
    if answers[-1] is not None:
        families.append(
            _gauge(
                "cfr_updater_seconds_since_flush",
                "Seconds since the updater last finished a flush (its lag behind the live feed).",
                [],
                [([], max(0, now_ms - int(answers[-1])) / 1000)],
            )
        )
    limits, pauses = [], []
    for exchange in EXCHANGES:
        limit = get_adapter(exchange).rate_limit(settings)
        limits.append(([exchange], limit.capacity))
        pauses.append(([exchange], await SharedRateLimiter(redis, exchange, limit).blocked_seconds()))
    families.append(
        _gauge(
            "cfr_rest_weight_limit",
            "The REST rate limit: weight allowed per REST_RATE_WINDOW_SECONDS (cfr_rest_window_seconds).",
            ["exchange"],
            limits,
        )
    )
    families.append(
        _gauge(
            "cfr_rest_window_seconds",
            "The window of cfr_rest_weight_limit.",
            [],
            [([], settings.rest_rate_window_seconds)],
        )
    )
    families.append(
        _gauge(
            "cfr_rest_pause_remaining_seconds",
            "Seconds left of the exchange's REST pause (0: none).",
            ["exchange"],
            pauses,
        )
    )
    return families


async def job_families(redis: aioredis.Redis, settings: Settings) -> list[Metric]:
    """Backfill (user) and repair jobs of this database, by exchange and state."""
    store = JobStore(redis, job_scope(settings))
    counts = {(ex, kind, state): 0 for ex in EXCHANGES for kind in JOB_KINDS.values() for state in JOB_STATES}
    for exchange in EXCHANGES:
        for job in await store.jobs(exchange):
            key = (exchange, JOB_KINDS.get(job.priority, "backfill"), job.state)
            counts[key] = counts.get(key, 0) + 1
    return [
        _gauge(
            "cfr_jobs",
            "Backfill jobs by kind (backfill: a user's; repair: the automatic one) and state.",
            ["exchange", "kind", "state"],
            ((list(key), value) for key, value in counts.items()),
        )
    ]


async def coverage_families(
    settings: Settings, pool, redis: aioredis.Redis, counting: CountingProcess
) -> list[Metric]:
    """The status page's counts per exchange, and the progress of its repair job under way."""
    rows = await exchange_summaries(settings, pool, redis, counting)
    fields = {
        "cfr_missing_minutes": (
            "missing_minutes",
            "Market-minutes not known complete (awaiting or in repair).",
        ),
        "cfr_repairing_minutes": ("repairing_minutes", "Missing market-minutes in the repair job under way."),
        "cfr_awaiting_repair_minutes": (
            "awaiting_repair_minutes",
            "Missing market-minutes the next repair run takes.",
        ),
        "cfr_before_first_bar_minutes": (
            "before_first_bar_minutes",
            "Market-minutes before markets' first bars (not backfilled, or not traded yet).",
        ),
    }
    families = [
        _gauge(name, text, ["exchange"], (([c.exchange], getattr(c, attr)) for c, _ in rows))
        for name, (attr, text) in fields.items()
    ]
    families.append(
        _gauge(
            "cfr_repair_requests_left",
            "Requests left in the exchange's repair job under way (0: none under way).",
            ["exchange"],
            (([c.exchange], job.left if job is not None else 0) for c, job in rows),
        )
    )
    families.append(
        _gauge(
            "cfr_repair_requests_done",
            "Requests done (or failed for good) in the exchange's repair job under way.",
            ["exchange"],
            (([c.exchange], job.done + job.failed if job is not None else 0) for c, job in rows),
        )
    )
    return families


def web_families(registry: CollectorRegistry, subscribers: int) -> list[Metric]:
    return [
        *registry.collect(),
        _gauge(
            "cfr_web_ws_subscribers", "Live-bar subscriptions of websocket clients.", [], [([], subscribers)]
        ),
    ]


class StateGauges:
    """Jobs by state and the coverage counts, read at most every `max_age` seconds and served from
    the last reading in between: they take a pass over every market's coverage and every job, tens
    of milliseconds and growing with the history, while a scrape must stay fast. A scrape that finds
    the reading older than `max_age` starts the next one in the background and answers with the
    last (only the first scrape waits); `cfr_scrape_state_age_seconds` says how old it is."""

    def __init__(self, max_age: float) -> None:
        self.max_age = max_age
        self.families: list[Metric] = []
        self.read_at: float | None = None
        self.up = {"redis": 1, "database": 1}
        self.task: asyncio.Task[None] | None = None

    async def current(
        self, settings: Settings, pool, redis: aioredis.Redis, counting: CountingProcess
    ) -> list[Metric]:
        stale = self.read_at is None or time.monotonic() - self.read_at > self.max_age
        if stale and self.task is None:
            self.task = asyncio.create_task(self._read(settings, pool, redis, counting), name="metrics-state")
        if self.read_at is None and self.task is not None:
            await asyncio.shield(self.task)
        age = 0.0 if self.read_at is None else time.monotonic() - self.read_at
        return [
            *self.families,
            _gauge("cfr_scrape_state_age_seconds", "Age of the jobs and coverage figures.", [], [([], age)]),
        ]

    async def _read(self, settings: Settings, pool, redis: aioredis.Redis, counting: CountingProcess) -> None:
        up = {"redis": 1, "database": 1}
        families: list[Metric] = []
        try:
            families = await job_families(redis, settings)
            families += await coverage_families(settings, pool, redis, counting)
        except DatabaseUnavailable:
            up["database"] = 0
        except (RedisError, OSError):
            up["redis"] = 0
        finally:
            self.families = families if all(up.values()) else []
            self.up = up
            self.read_at = time.monotonic()
            self.task = None

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


@router.get("/metrics", summary="Prometheus metrics of every process", include_in_schema=False)
async def metrics(
    request: Request,
    settings: SettingsDep,
    pool: PoolDep,
    redis: RedisDep,
    hub: HubDep,
    counting: CountingDep,
) -> Response:
    """The Prometheus text format; `cfr_scrape_source_up{source}` says which parts could be read."""
    families = web_families(request.app.state.metrics_registry, hub.subscriber_count)
    up = {"redis": 1}
    try:
        families += await process_families(redis)
        families += await health_families(redis, settings)
    except (RedisError, OSError):
        up["redis"] = 0
    state: StateGauges = request.app.state.metrics_state
    families += await state.current(settings, pool, redis, counting)
    up = {"redis": min(up["redis"], state.up["redis"]), "database": state.up["database"]}
    families.append(
        _gauge(
            "cfr_scrape_source_up",
            "Whether this scrape could read the source (0: its metrics are missing from it).",
            ["source"],
            (([source], value) for source, value in up.items()),
        )
    )
    return Response(generate_latest(_Families(families)), media_type=CONTENT_TYPE_PLAIN_0_0_4)
