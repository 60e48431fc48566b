"""The metrics snapshot record: what a process writes to Redis is what `GET /metrics` renders."""

from __future__ import annotations

import json

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from common.metrics import PROCESS_LABEL, decode_snapshot, encode_snapshot, merge_families, process_label


class Families:
    def __init__(self, families):
        self.families = families

    def collect(self):
        return iter(self.families)


def sample_registry(requests: int, weight: float) -> CollectorRegistry:
    registry = CollectorRegistry()
    counter = Counter("cfr_rest_requests", "requests", ["exchange", "status"], registry=registry)
    counter.labels("binance", "200").inc(requests)
    counter.labels("binance", "429").inc()
    Gauge("cfr_rest_exchange_used_weight", "used", ["exchange"], registry=registry).labels("binance").set(
        weight
    )
    histogram = Histogram("cfr_flush_seconds", "flush", buckets=(0.5, 1.0), registry=registry)
    histogram.observe(0.2)
    histogram.observe(3.0)
    return registry


def rendered(families) -> dict[tuple[str, tuple], float]:
    text = generate_latest(Families(families)).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_a_snapshot_renders_the_registry_it_was_taken_of_with_the_process_label():
    registry = sample_registry(7, 1234.5)
    direct = rendered(registry.collect())
    via_redis = rendered(decode_snapshot(encode_snapshot(registry.collect()), {PROCESS_LABEL: "worker@h:1"}))
    expected = {
        (name, tuple(sorted((*labels, (PROCESS_LABEL, "worker@h:1"))))): value
        for (name, labels), value in direct.items()
        if not name.endswith("_created")
    }
    assert via_redis == expected
    assert (
        via_redis[
            (
                "cfr_rest_requests_total",
                (("exchange", "binance"), ("process", "worker@h:1"), ("status", "200")),
            )
        ]
        == 7
    )
    assert via_redis[("cfr_flush_seconds_bucket", (("le", "+Inf"), ("process", "worker@h:1")))] == 2
    assert via_redis[("cfr_flush_seconds_bucket", (("le", "0.5"), ("process", "worker@h:1")))] == 1


def test_created_samples_stay_out_of_the_snapshot():
    raw = encode_snapshot(sample_registry(1, 1).collect())
    names = {sample[0] for family in json.loads(raw) for sample in family["samples"]}
    assert "cfr_rest_requests_total" in names
    assert not any(name.endswith("_created") for name in names)


def test_the_same_metric_of_several_processes_is_one_family_with_every_series():
    first = decode_snapshot(encode_snapshot(sample_registry(3, 10).collect()), {PROCESS_LABEL: "a"})
    second = decode_snapshot(encode_snapshot(sample_registry(5, 20).collect()), {PROCESS_LABEL: "b"})
    merged = merge_families([first, second])
    assert sorted(f.name for f in merged) == [
        "cfr_flush_seconds",
        "cfr_rest_exchange_used_weight",
        "cfr_rest_requests",
    ]
    text = generate_latest(Families(merged)).decode()
    assert text.count("# TYPE cfr_rest_requests_total counter") == 1
    values = rendered(merged)
    assert (
        values[("cfr_rest_requests_total", (("exchange", "binance"), ("process", "a"), ("status", "200")))]
        == 3
    )
    assert (
        values[("cfr_rest_requests_total", (("exchange", "binance"), ("process", "b"), ("status", "200")))]
        == 5
    )


def test_a_family_whose_type_disagrees_is_dropped_not_rendered_twice():
    counter = decode_snapshot(encode_snapshot(sample_registry(1, 1).collect()), {PROCESS_LABEL: "a"})
    registry = CollectorRegistry()
    Gauge("cfr_rest_requests", "a gauge of an older version", registry=registry).set(9)
    gauge = decode_snapshot(encode_snapshot(registry.collect()), {PROCESS_LABEL: "b"})
    merged = merge_families([counter, gauge])
    family = next(f for f in merged if f.name == "cfr_rest_requests")
    assert family.type == "counter"
    assert {s.labels[PROCESS_LABEL] for s in family.samples} == {"a"}


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{}",
        b"[1]",
        b'[{"name":"x"}]',
        b'[{"name":"x","help":"","type":"gauge","samples":[["x",[],1]]}]',
    ],
)
def test_what_is_not_a_snapshot_is_a_value_error(raw):
    with pytest.raises(ValueError, match="not a metrics snapshot"):
        decode_snapshot(raw, {})


def test_a_process_label_names_the_role_and_this_process():
    import os

    label = process_label("fetch-binance")
    assert label.startswith("fetch-binance@") and label.endswith(f":{os.getpid()}")
