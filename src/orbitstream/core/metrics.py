"""Counters kept as plain integers on the hot path, exposed in Prometheus text format.

Incrementing a ``prometheus_client.Counter`` takes a lock; at 100k points/s that shows.
Here the hot path bumps dict entries and a collector reads them at scrape time.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["Metrics"]

_Labels = tuple[str, ...]

_COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "received": ("Points received by sources (valid or not).", ("pipeline",)),
    "accepted": ("Points accepted into the pipeline.", ("pipeline",)),
    "rejected": ("Points rejected by validation.", ("pipeline",)),
    "backpressure": ("Requests refused with 503 because buffers were full.", ("pipeline",)),
    "http_requests": ("HTTP requests answered.", ("route", "status")),
    "written_rows": ("Rows committed by a sink.", ("pipeline", "sink", "table")),
    "batches": (
        "Batches finished by a sink, by final status.",
        ("pipeline", "sink", "table", "status"),
    ),
    "sink_errors": ("Failed write attempts, by kind.", ("pipeline", "sink", "kind")),
    "dead_letters": ("Rows sent to the dead-letter store.", ("pipeline", "sink", "table")),
    "source_errors": ("Input a source could not map, by kind.", ("pipeline", "kind")),
    "alerts": ("Alert events emitted.", ("pipeline", "rule", "state")),
    "ignored_messages": ("Valid messages that carried nothing to map.", ("pipeline",)),
    "duplicates": (
        "Input rows dropped as copies of a row already taken (same key and time).",
        ("pipeline",),
    ),
    "unmapped_paths": (
        "Path updates of paths the pipeline tolerates but does not map, by path.",
        ("pipeline", "path"),
    ),
}


class Metrics:
    """Process-wide counters, gauges and the flush-latency histogram."""

    def __init__(self) -> None:
        self.counters: dict[str, defaultdict[_Labels, int]] = {
            name: defaultdict(int) for name in _COUNTERS
        }
        self.gauges: dict[str, list[Callable[[], dict[_Labels, float]]]] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        self.flush_seconds = Histogram(
            "orbitstream_flush_seconds",
            "Time to write one batch to a sink (successful attempts).",
            ("pipeline", "sink", "table"),
            registry=self.registry,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.registry.register(_Collector(self))

    def inc(self, name: str, labels: _Labels, value: int = 1) -> None:
        self.counters[name][labels] += value

    def get(self, name: str, labels: _Labels) -> int:
        return self.counters[name].get(labels, 0)

    def total(self, name: str) -> int:
        return sum(self.counters[name].values())

    def add_gauge(self, name: str, read: Callable[[], dict[_Labels, float]]) -> None:
        """Add a reader to a gauge family read at scrape time (several pipelines each add
        theirs; labels ``("pipeline", "sink")`` unless the family says otherwise)."""
        self.gauges.setdefault(name, []).append(read)

    def render(self) -> bytes:
        return generate_latest(self.registry)


_GAUGE_HELP = {
    "buffer_rows": ("Rows buffered or in flight, per sink.", ("pipeline", "sink")),
    "buffer_bytes": ("Estimated bytes buffered or in flight, per sink.", ("pipeline", "sink")),
    "sink_up": ("1 when the sink's last write or check succeeded.", ("pipeline", "sink")),
    "source_lag": (
        "How far behind its input a source is (messages, or seconds for pollers).",
        ("pipeline", "unit"),
    ),
}


class _Collector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        for name, (doc, labels) in _COUNTERS.items():
            fam = CounterMetricFamily(f"orbitstream_{name}", doc, labels=list(labels))
            for key, value in sorted(self._m.counters[name].items()):
                fam.add_metric(list(key), value)
            yield fam
        for name, readers in self._m.gauges.items():
            doc, labels = _GAUGE_HELP.get(name, (name, ("pipeline", "sink")))
            gauge = GaugeMetricFamily(f"orbitstream_{name}", doc, labels=list(labels))
            values: dict[_Labels, float] = {}
            for read in readers:
                values.update(read())
            for gkey, gvalue in sorted(values.items()):
                gauge.add_metric(list(gkey), gvalue)
            yield gauge
