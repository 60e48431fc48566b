"""`GET /metrics` on a real server, PostgreSQL and Redis: the web's own metrics, the snapshots other
processes publish, and the gauges read at scrape time."""

from __future__ import annotations

import asyncio
import json
import re
import time

import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from common.metrics import SnapshotPublisher, process_label, publish_snapshot
from common.redis_clients import async_client, sync_client
from common.redis_keys import METRICS_PROCESSES, WS_UPDATER_HEALTH, metrics_process_key, ws_health_key
from common.settings import PROJECT_ROOT
from fetchers.rest.metrics import REGISTRY as REST_METRICS
from fetchers.ws.metrics import StreamCollector, registry_of, updater_registry
from fetchers.ws.stream import StreamEngine
from fetchers.ws.updater import Updater
from tests.support.metrics import scrape
from tests.support.services import wait_for
from tests.support.web import BTC, ETH, http_get, running_web, seed_known_data
from web.metrics import process_families

pytestmark = pytest.mark.integration


@pytest.fixture
def web(settings):
    seed_known_data(settings, [BTC, ETH], list(range(60)))
    with running_web(settings) as base:
        yield base


def test_requests_are_timed_by_route_template_not_raw_path(web):
    for _ in range(3):
        status, _ = http_get(f"{web}/api/ohlcvs", exchange="binance", base_id="BTC", quote_id="USDT", limit=5)
        assert status == 200
    assert http_get(f"{web}/api/no-such-thing-{time.time_ns()}")[0] == 404

    found = scrape(web)

    assert found.types["cfr_web_request_duration_seconds"] == "histogram"
    ok = found.select(
        "cfr_web_request_duration_seconds_count", route="/api/ohlcvs", method="GET", status="2xx"
    )
    assert [s.value for s in ok] == [3], found.select("cfr_web_request_duration_seconds_count")
    assert found.total("cfr_web_request_duration_seconds_count", route="<unmatched>", status="4xx") == 1
    assert not any("no-such-thing" in s.labels.get("route", "") for s in found.samples)
    assert found.total("cfr_web_ws_subscribers") == 0
    assert found.select("cfr_scrape_source_up", source="redis")[0].value == 1
    assert found.select("cfr_scrape_source_up", source="database")[0].value == 1


def test_a_process_snapshot_shows_with_its_process_label_until_it_expires(web, settings):
    registry = CollectorRegistry()
    counter = Counter("cfr_test_events", "events of a test process", ["exchange"], registry=registry)
    short = settings.model_copy(update={"metrics_publish_seconds": 0.2, "metrics_snapshot_ttl_seconds": 2.0})
    publisher = SnapshotPublisher(short, "tester", registry).start()
    try:
        counter.labels("binance").inc(4)
        wait_for(
            lambda: scrape(web).total("cfr_test_events_total", exchange="binance") == 4, 10, "first snapshot"
        )
        counter.labels("binance").inc(3)
        wait_for(
            lambda: scrape(web).total("cfr_test_events_total", exchange="binance") == 7, 10, "counter moved"
        )
        sample = scrape(web).select("cfr_test_events_total")[0]
        assert sample.labels["process"] == publisher.process
    finally:
        counter.labels("binance").inc(1)
        publisher.stop()
    assert scrape(web).total("cfr_test_events_total") == 8, "the final snapshot of a clean exit"
    wait_for(lambda: not scrape(web).has("cfr_test_events_total"), 10, "the snapshot expired")
    assert sync_client(settings).zscore(METRICS_PROCESSES, publisher.process) is None
    assert not sync_client(settings).exists(metrics_process_key(publisher.process))


def test_scrape_time_gauges_come_from_health_jobs_and_coverage(web, settings):
    client = sync_client(settings)
    now_ms = int(time.time() * 1000)
    client.hset(ws_health_key("binance"), mapping={"last_message_ms": now_ms - 42_000})
    client.hset(WS_UPDATER_HEALTH, mapping={"last_flush_ms": now_ms - 7_000, "backlog": 3})

    found = scrape(web)

    assert 41 <= found.total("cfr_ws_seconds_since_last_message", exchange="binance") < 60
    assert not found.has("cfr_ws_seconds_since_last_message", exchange="bittrex"), "never reported"
    assert 6 <= found.total("cfr_updater_seconds_since_flush") < 30
    assert found.total("cfr_rest_weight_limit", exchange="binance") == settings.binance_rest_weight_per_minute
    assert found.total("cfr_rest_pause_remaining_seconds", exchange="binance") == 0
    assert found.total("cfr_jobs") == 0 and found.has(
        "cfr_jobs", exchange="bittrex", kind="repair", state="running"
    )
    status, summary = http_get(f"{web}/api/coverage/summary")
    assert status == 200
    for row in summary:
        assert found.total("cfr_missing_minutes", exchange=row["exchange"]) == row["missing_minutes"]
        assert found.total("cfr_repair_requests_left", exchange=row["exchange"]) == row["repair_left"]
    assert found.total("cfr_missing_minutes", exchange="binance") > 0, "the seeded hour has no coverage"
    assert 0 <= found.total("cfr_scrape_state_age_seconds") < settings.metrics_state_seconds


def test_every_metric_the_alerts_and_the_dashboard_use_is_exposed(web, settings):
    """The processes' real registries (a fetcher's engine, the updater, the REST metrics), published
    as those processes do, plus the web's: every name deploy/ queries is in the scrape."""
    client = sync_client(settings)
    engine = StreamEngine(settings, "binance", async_client(settings))
    registries = {
        "fetch-binance": registry_of(StreamCollector(engine)),
        "updater": updater_registry(Updater(settings, client)),
        "worker": REST_METRICS,
    }
    for role, registry in registries.items():
        publish_snapshot(client, process_label(role), role, registry, settings.metrics_snapshot_ttl_seconds)
    now_ms = int(time.time() * 1000)
    client.hset(ws_health_key("binance"), mapping={"last_message_ms": now_ms})
    client.hset(WS_UPDATER_HEALTH, mapping={"last_flush_ms": now_ms})
    deploy = PROJECT_ROOT / "deploy"
    panels = json.loads((deploy / "grafana" / "dashboards" / "coin-for-rich.json").read_text())["panels"]
    queries = (deploy / "prometheus" / "alerts.yml").read_text()
    queries += " ".join(t["expr"] for p in panels for t in p.get("targets", []))
    used = set(re.findall(r"\bcfr_[a-z0-9_]+", queries))
    http_get(f"{web}/api/health")  # the request histogram has series once a request was timed

    exposed = {sample.name for sample in scrape(web).samples}

    assert len(used) > 15
    assert used - exposed == set()


class FirstCollectionFails(Collector):
    """A collector whose first collection races its process, as reading a dict the event loop
    resizes can."""

    def __init__(self) -> None:
        self.calls = 0

    def collect(self):
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("dictionary changed size during iteration")
        yield GaugeMetricFamily("cfr_test_collections", "collections so far", value=self.calls)


def test_a_failed_collection_does_not_stop_the_publisher(settings):
    registry = CollectorRegistry()
    registry.register(FirstCollectionFails())
    fast = settings.model_copy(update={"metrics_publish_seconds": 0.1})
    publisher = SnapshotPublisher(fast, "tester", registry).start()

    def published() -> list:
        async def read() -> list:
            client = async_client(settings)
            try:
                return await process_families(client)
            finally:
                await client.aclose()

        return [f for f in asyncio.run(read()) if f.name == "cfr_test_collections"]

    try:
        found = wait_for(published, 10, "a snapshot after the failed one")
    finally:
        publisher.stop()
    (family,) = found
    assert family.samples[0].value >= 2
    assert family.samples[0].labels == {"process": publisher.process}
