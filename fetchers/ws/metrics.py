"""The Prometheus metrics of a websocket fetcher and of the updater (`common.metrics` publishes them).

They are read from the counts the engine and the updater keep anyway, at collection time (a custom
collector), so the per-frame path pays nothing for them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from fetchers.ws.stream import StreamEngine
    from fetchers.ws.updater import Updater

FLUSH_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Seconds; a flush every UPDATER_FLUSH_SECONDS (5) should take well under one period."""


class StreamCollector(Collector):
    """One fetcher process (one exchange, one shard)."""

    def __init__(self, engine: StreamEngine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        engine = self.engine
        labels = ["exchange"]
        value = [engine.exchange]
        connections = list(engine.connections)

        def counter(name: str, text: str, count: float) -> CounterMetricFamily:
            family = CounterMetricFamily(name, text, labels=labels)
            family.add_metric(value, count)
            return family

        def gauge(name: str, text: str, amount: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, text, labels=labels)
            family.add_metric(value, amount)
            return family

        yield counter(
            "cfr_ws_messages", "Websocket frames received (data, heartbeats, pings).", engine.frames
        )
        yield counter("cfr_ws_bad_frames", "Websocket frames dropped as unreadable.", engine.bad_frames)
        yield counter("cfr_ws_reconnects", "Websocket connections lost and opened again.", engine.reconnects)
        yield counter(
            "cfr_ws_outages",
            "Market outages recorded (minutes the live feed could not vouch for, per market).",
            engine.outages_recorded,
        )
        yield gauge(
            "cfr_ws_connections_up", "Websocket connections receiving data.", sum(c.up for c in connections)
        )
        yield gauge("cfr_ws_connections", "Websocket connections planned.", len(connections))
        yield gauge("cfr_ws_markets", "Markets followed.", sum(len(c.markets) for c in connections))
        yield gauge(
            "cfr_ws_open_outages",
            "Markets whose live evidence broke and has not started again.",
            sum(c.evidence.open_outages() for c in connections),
        )
        yield gauge(
            "cfr_ws_last_message_timestamp_seconds",
            "Unix time of the newest frame (0: none yet).",
            engine.last_frame_ms / 1000,
        )


class UpdaterCollector(Collector):
    """The updater process: what it flushed and how long flushes took."""

    def __init__(self, updater: Updater) -> None:
        self.updater = updater

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        u = self.updater
        rows = CounterMetricFamily("cfr_updater_rows_flushed", "Closed bars written to ohlcvs.")
        rows.add_metric([], u.rows_flushed_total)
        yield rows
        flushes = CounterMetricFamily("cfr_updater_flushes", "Flushes by outcome.", labels=["status"])
        flushes.add_metric(["ok"], u.flushes_ok)
        flushes.add_metric(["failed"], u.flushes_failed)
        yield flushes
        backlog = GaugeMetricFamily("cfr_updater_backlog_bars", "Bars waiting in Redis after the last flush.")
        backlog.add_metric([], u.last_backlog)
        yield backlog


def updater_registry(updater: Updater) -> CollectorRegistry:
    """The updater's collector and its flush-time histogram."""
    registry = registry_of(UpdaterCollector(updater))
    updater.flush_seconds = Histogram(
        "cfr_updater_flush_duration_seconds",
        "How long one flush took (read, write, refresh the summaries).",
        buckets=FLUSH_BUCKETS,
        registry=registry,
    )
    return registry


def registry_of(collector: Collector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry
