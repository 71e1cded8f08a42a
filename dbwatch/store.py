"""Latest values per metric, filled by jobs and read by the registry's `collect()`; no I/O here."""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from dbwatch.metrics import MetricSpec, MetricType

__all__ = ["Sample", "Store", "StoreCollector", "TargetStatus"]

Labels = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Sample:
    """One gauge value of a snapshot: the spec, its label values in spec order, the value."""

    metric: MetricSpec
    labels: Labels
    value: float


@dataclass(slots=True)
class _Hist:
    counts: list[int]
    total: float = 0.0
    n: int = 0


@dataclass(slots=True)
class TargetStatus:
    """What readiness needs to know of one target (times are monotonic)."""

    critical: bool
    stale_after: float
    last_success: float | None = None
    last_reason: str | None = None
    up: bool = False


@dataclass(slots=True)
class Store:
    """In-memory metric state: gauge snapshots per source, cumulative counters and histograms."""

    _snapshots: dict[tuple[str, str], dict[MetricSpec, dict[Labels, float]]] = field(default_factory=dict)
    _counters: dict[MetricSpec, dict[Labels, float]] = field(default_factory=dict)
    _hists: dict[MetricSpec, dict[Labels, _Hist]] = field(default_factory=dict)
    status: dict[str, TargetStatus] = field(default_factory=dict)

    def replace(self, source: tuple[str, str], samples: Iterable[Sample]) -> None:
        """Swap in a new gauge snapshot for (job, target); series gone from it disappear."""
        snap: dict[MetricSpec, dict[Labels, float]] = {}
        for s in samples:
            _check(s.metric, s.labels, MetricType.GAUGE)
            snap.setdefault(s.metric, {})[s.labels] = s.value
        self._snapshots[source] = snap

    def set(self, source: tuple[str, str], spec: MetricSpec, labels: Labels, value: float) -> None:
        """Set one gauge inside a source's snapshot, keeping the rest of it."""
        _check(spec, labels, MetricType.GAUGE)
        self._snapshots.setdefault(source, {}).setdefault(spec, {})[labels] = value

    def drop(self, source: tuple[str, str]) -> None:
        """Forget a source's gauges (a target removed, a worker expired)."""
        self._snapshots.pop(source, None)

    def inc(self, spec: MetricSpec, labels: Labels, amount: float = 1.0) -> None:
        """Add to a counter; amount 0 creates the series at zero."""
        _check(spec, labels, MetricType.COUNTER)
        if amount < 0:
            raise ValueError("counters only go up")
        series = self._counters.setdefault(spec, {})
        series[labels] = series.get(labels, 0.0) + amount

    def observe(self, spec: MetricSpec, labels: Labels, value: float) -> None:
        """Record one observation in a histogram."""
        _check(spec, labels, MetricType.HISTOGRAM)
        h = self._hist(spec, labels)
        i = bisect.bisect_left(spec.buckets, value)
        if i < len(h.counts) - 1 or value <= spec.buckets[-1]:
            h.counts[i] += 1
        else:
            h.counts[-1] += 1
        h.total += value
        h.n += 1

    def add_histogram(self, spec: MetricSpec, labels: Labels, counts: Sequence[float], total: float) -> None:
        """Add pre-bucketed observations (one count per bucket, +Inf last) and their sum, e.g. pushed by the hook."""
        _check(spec, labels, MetricType.HISTOGRAM)
        if len(counts) != len(spec.buckets) + 1:
            raise ValueError(f"{spec.name} takes {len(spec.buckets) + 1} bucket counts, got {len(counts)}")
        h = self._hist(spec, labels)
        for i, n in enumerate(counts):
            h.counts[i] += int(n)
        h.total += total
        h.n += int(sum(counts))

    def touch_histogram(self, spec: MetricSpec, labels: Labels) -> None:
        """Create a histogram series with no observations, so it exists from the start."""
        _check(spec, labels, MetricType.HISTOGRAM)
        self._hist(spec, labels)

    def _hist(self, spec: MetricSpec, labels: Labels) -> _Hist:
        series = self._hists.setdefault(spec, {})
        h = series.get(labels)
        if h is None:
            h = series[labels] = _Hist([0] * (len(spec.buckets) + 1))
        return h

    def counter_value(self, spec: MetricSpec, labels: Labels) -> float:
        """Current counter value (0 when absent); for tests and self-checks."""
        return self._counters.get(spec, {}).get(labels, 0.0)

    def histogram_value(self, spec: MetricSpec, labels: Labels) -> tuple[int, float]:
        """(count, sum) of a histogram series; (0, 0.0) when absent."""
        h = self._hists.get(spec, {}).get(labels)
        return (h.n, h.total) if h else (0, 0.0)

    def gauge_value(self, spec: MetricSpec, labels: Labels) -> float | None:
        """A gauge's current value from any source, or None."""
        for snap in self._snapshots.values():
            v = snap.get(spec, {}).get(labels)
            if v is not None:
                return v
        return None

    def families(self) -> Iterator[Metric]:
        """Build fresh metric families from the current state."""
        gauges: dict[MetricSpec, dict[Labels, float]] = {}
        for snap in list(self._snapshots.values()):
            for spec, series in snap.items():
                gauges.setdefault(spec, {}).update(series)
        for spec, series in sorted(gauges.items(), key=lambda kv: kv[0].name):
            g = GaugeMetricFamily(spec.name, spec.help, labels=spec.labels)
            for labels, value in sorted(series.items()):
                g.add_metric(labels, value)
            yield g
        for spec, series in sorted(self._counters.items(), key=lambda kv: kv[0].name):
            c = CounterMetricFamily(spec.name, spec.help, labels=spec.labels)
            for labels, value in sorted(series.items()):
                c.add_metric(labels, value)
            yield c
        for spec, hseries in sorted(self._hists.items(), key=lambda kv: kv[0].name):
            fam = HistogramMetricFamily(spec.name, spec.help, labels=spec.labels)
            for labels, h in sorted(hseries.items()):
                cumulative = 0
                buckets: list[tuple[str, float]] = []
                for bound, count in zip((*spec.buckets, math.inf), h.counts, strict=True):
                    cumulative += count
                    buckets.append(("+Inf" if math.isinf(bound) else _fmt(bound), cumulative))
                fam.add_metric(labels, buckets, h.total)
            yield fam


def _fmt(bound: float) -> str:
    return repr(float(bound))


def _check(spec: MetricSpec, labels: Labels, kind: MetricType) -> None:
    if spec.type is not kind:
        raise TypeError(f"{spec.name} is a {spec.type}, not a {kind}")
    if len(labels) != len(spec.labels):
        raise ValueError(f"{spec.name} takes labels {spec.labels}, got {len(labels)} values")


class StoreCollector:
    """The client_python collector that yields the store's families on each scrape."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def collect(self) -> Iterator[Metric]:
        """Families from memory only: no I/O, no parsing."""
        return self._store.families()

    def describe(self) -> Iterator[Metric]:
        """Nothing up front: dbwatch's names are unique by construction in metrics.py."""
        return iter(())
