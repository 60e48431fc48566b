"""Prometheus metrics of the platform's long-running processes, gathered through Redis.

Each fetcher, the updater and every Celery worker process keeps its own `prometheus_client`
registry. A `SnapshotPublisher` thread writes that registry's samples every
`METRICS_PUBLISH_SECONDS` (and once more on a clean exit) into one Redis hash per process
(`metrics_process_key`), which expires `METRICS_SNAPSHOT_TTL_SECONDS` after the last write, and
lists the process in the `METRICS_PROCESSES` sorted set (score: when the snapshot goes stale). The
web's `GET /metrics` renders its own registry, every live process's last snapshot (each sample
labelled with its `process`), and gauges it reads at scrape time: one scrape target sees all.

A process's label is `<role>@<host>:<pid>`: a restarted process starts a new series at zero (a
counter reset, which Prometheus' `rate` and `increase` handle); the old series ends when its
snapshot expires. Sum over `process` to see an exchange's total.

The snapshot record (`encode_snapshot` / `decode_snapshot`) is JSON: a list of metric families,
each `{"name", "type", "help", "samples": [[sample name, {labels}, value], ...]}`. The `_created`
samples of counters and histograms are left out: they say when a process's series began, which the
`process` label already tells, and would double the size of every snapshot.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Iterable, Mapping

import redis
import redis.exceptions
from prometheus_client import CollectorRegistry, Metric

from common.redis_clients import sync_client
from common.redis_keys import METRICS_PROCESSES, metrics_process_key
from common.settings import Settings

log = logging.getLogger(__name__)

PROCESS_LABEL = "process"
_SKIPPED_SUFFIX = "_created"


def process_label(role: str) -> str:
    """`role@host:pid`: unique among live processes, new after a restart."""
    return f"{role}@{socket.gethostname()}:{os.getpid()}"


def encode_snapshot(families: Iterable[Metric]) -> str:
    """The JSON of a registry's collected families (see the module docstring)."""
    out = []
    for family in families:
        samples = [
            [s.name, s.labels, _number(s.value)]
            for s in family.samples
            if not s.name.endswith(_SKIPPED_SUFFIX) or family.type in ("gauge", "unknown")
        ]
        out.append(
            {"name": family.name, "type": family.type, "help": family.documentation, "samples": samples}
        )
    return json.dumps(out, separators=(",", ":"))


def decode_snapshot(raw: bytes | str, labels: Mapping[str, str]) -> list[Metric]:
    """The families of a snapshot, every sample given `labels` too; ValueError if it is not one."""
    try:
        data = json.loads(raw)
        if not isinstance(data, list):
            raise TypeError("not a list of families")
        families = []
        for entry in data:
            family = Metric(entry["name"], entry["help"], entry["type"])
            for name, sample_labels, value in entry["samples"]:
                if not isinstance(sample_labels, dict):
                    raise TypeError("labels are not an object")
                family.add_sample(name, {**sample_labels, **labels}, float(value))
            families.append(family)
    except (TypeError, KeyError, ValueError) as error:
        raise ValueError(f"not a metrics snapshot: {error}: {str(raw)[:200]!r}") from None
    return families


def _number(value: float) -> float | str:
    """JSON has no infinity or NaN (a histogram's +Inf bucket bound is a label, not a value)."""
    return value if math.isfinite(value) else str(value)


def merge_families(groups: Iterable[Iterable[Metric]]) -> list[Metric]:
    """One family per name, holding the samples of every group (several processes export the same
    metric); a family whose type disagrees with the first of its name is dropped (a process of
    another version), so the exposition stays valid."""
    merged: dict[str, Metric] = {}
    for families in groups:
        for family in families:
            into = merged.get(family.name)
            if into is None:
                merged[family.name] = into = Metric(family.name, family.documentation, family.type)
            elif into.type != family.type:
                continue
            into.samples.extend(family.samples)
    return list(merged.values())


def publish_snapshot(
    client: redis.Redis, process: str, role: str, registry: CollectorRegistry, ttl_seconds: float
) -> None:
    """Write `registry`'s samples as `process`'s snapshot, live for `ttl_seconds`."""
    now_ms = int(time.time() * 1000)
    ttl_ms = int(ttl_seconds * 1000)
    key = metrics_process_key(process)
    with client.pipeline(transaction=True) as pipe:
        pipe.hset(
            key, mapping={"role": role, "updated_ms": now_ms, "families": encode_snapshot(registry.collect())}
        )
        pipe.pexpire(key, ttl_ms)
        pipe.zadd(METRICS_PROCESSES, {process: now_ms + ttl_ms})
        pipe.execute()


class SnapshotPublisher:
    """A daemon thread publishing one registry every `metrics_publish_seconds` until `stop`, which
    publishes once more (a clean exit leaves its final counts). Redis being away only delays it."""

    def __init__(self, settings: Settings, role: str, registry: CollectorRegistry) -> None:
        self.settings = settings
        self.role = role
        self.registry = registry
        self.process = process_label(role)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: redis.Redis | None = None

    def start(self) -> SnapshotPublisher:
        self._client = sync_client(self.settings)
        self._thread = threading.Thread(target=self._run, name=f"metrics-{self.role}", daemon=True)
        self._thread.start()
        return self

    def publish(self) -> bool:
        """One snapshot now; False (logged once per outage) if Redis did not take it."""
        assert self._client is not None
        try:
            publish_snapshot(
                self._client,
                self.process,
                self.role,
                self.registry,
                self.settings.metrics_snapshot_ttl_seconds,
            )
        except (redis.exceptions.RedisError, OSError) as error:
            log.debug("metrics snapshot of %s not published: %s", self.process, error)
            return False
        return True

    def _run(self) -> None:
        while True:
            try:
                self.publish()
            except Exception:  # noqa: BLE001 - a collector raced its process (a dict resized): next time
                log.warning("metrics snapshot of %s failed", self.process, exc_info=True)
            if self._stop.wait(self.settings.metrics_publish_seconds):
                return

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=self.settings.metrics_publish_seconds + 5)
        self.publish()
        assert self._client is not None
        self._client.close()
        self._thread = None


def decode_rows(processes: list[str], rows: list[bytes | None]) -> list[Metric]:
    """The merged families of the snapshots `rows` of `processes` (expired or unreadable ones
    are skipped: a process of another version must not break the scrape)."""
    groups = []
    for process, raw in zip(processes, rows, strict=True):
        if raw is None:
            continue
        try:
            groups.append(decode_snapshot(raw, {PROCESS_LABEL: process}))
        except ValueError as error:
            log.warning("skipping the metrics of %s: %s", process, error)
    return merge_families(groups)
