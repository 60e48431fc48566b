"""Reading `GET /metrics` in tests and benchmarks: the text parsed by prometheus_client's own parser."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.request import urlopen

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


@dataclass(frozen=True)
class Scrape:
    samples: list[Sample]
    types: dict[str, str]
    """Family name -> its declared type."""

    def total(self, name: str, **labels: str) -> float:
        """The sum of every sample `name` whose labels include `labels` (e.g. over processes)."""
        return sum(s.value for s in self.select(name, **labels))

    def select(self, name: str, **labels: str) -> list[Sample]:
        return [s for s in self.samples if s.name == name and labels.items() <= s.labels.items()]

    def has(self, name: str, **labels: str) -> bool:
        return bool(self.select(name, **labels))


def parse(text: str) -> Scrape:
    samples, types = [], {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        samples.extend(family.samples)
    return Scrape(samples, types)


def scrape(base_url: str) -> Scrape:
    with urlopen(f"{base_url}/metrics", timeout=30) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return parse(response.read().decode())
