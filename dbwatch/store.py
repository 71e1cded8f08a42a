"""Latest values per metric, filled by jobs and read by the registry's `collect()`; no I/O here."""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Callable, Collection, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from dbwatch.metrics import SERIES_DROPPED, MetricSpec, MetricType

if TYPE_CHECKING:
    from prometheus_client.core import Metric

__all__ = ["Exposition", "Sample", "Store", "StoreCollector", "TargetStatus", "series_cost"]

log = structlog.get_logger("dbwatch.store")

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

    gates_readiness: bool  # the target's opt-in: /readyz fails while it has no fresh success
    stale_after: float
    last_success: float | None = None
    last_reason: str | None = None
    up: bool = False


def series_cost(spec: MetricSpec) -> int:
    """Exposed series (sample lines) one label set of a family makes: a histogram's buckets, +Inf, _sum, _count."""
    return len(spec.buckets) + 3 if spec.type is MetricType.HISTOGRAM else 1


@dataclass(slots=True)
class Store:
    """In-memory metric state: gauge snapshots per source, cumulative counters and histograms.

    `max_series` is a budget on the series the store exposes (histogram label sets count every bucket line): a
    new label set that would go over it is not created; it is counted in `dbwatch_series_dropped_total{metric}`
    (outside the budget, one series per family at most) and the first one is logged. Existing series keep
    updating, and series that go (a gauge snapshot replaced, a source dropped) give their room back.
    """

    max_series: int | None = None
    _series: int = 0
    _snapshots: dict[tuple[str, str], dict[MetricSpec, dict[Labels, float]]] = field(default_factory=dict)
    _counters: dict[MetricSpec, dict[Labels, float]] = field(default_factory=dict)
    _hists: dict[MetricSpec, dict[Labels, _Hist]] = field(default_factory=dict)
    status: dict[str, TargetStatus] = field(default_factory=dict)
    # Change tracking for Exposition: per family, the version at which each part last changed. A part is a gauge
    # snapshot's source, or the `target` label value of a counter/histogram series; a part with no series is removed.
    _versions: dict[MetricSpec, dict[Hashable, int]] = field(default_factory=dict)
    version: int = 0

    def _touch(self, spec: MetricSpec, part: Hashable, *, gone: bool = False) -> None:
        self.version += 1
        parts = self._versions.setdefault(spec, {})
        if gone:
            parts.pop(part, None)
            if not parts:
                del self._versions[spec]
        else:
            parts[part] = self.version

    def _admit(self, spec: MetricSpec) -> bool:
        """Room for one more label set of `spec` within max_series? Takes the room when there is."""
        cost = series_cost(spec)
        if self.max_series is not None and self._series + cost > self.max_series:
            series = self._counters.setdefault(SERIES_DROPPED, {})
            if not series:
                log.warning("series_budget_reached", max_series=self.max_series, metric=spec.name)
            series[(spec.name,)] = series.get((spec.name,), 0.0) + 1
            self._touch(SERIES_DROPPED, spec.name)
            return False
        self._series += cost
        return True

    @property
    def series(self) -> int:
        """Series the store holds, as counted against max_series."""
        return self._series

    def replace(self, source: tuple[str, str], samples: Iterable[Sample]) -> None:
        """Swap in a new gauge snapshot for (job, target); series gone from it disappear."""
        old = self._snapshots.get(source, {})
        self._series -= sum(len(v) for v in old.values())
        snap: dict[MetricSpec, dict[Labels, float]] = {}
        fresh: list[Sample] = []
        for s in samples:
            _check(s.metric, s.labels, MetricType.GAUGE)
            if s.labels in old.get(s.metric, ()):  # series already held keep their room before new ones take any
                snap.setdefault(s.metric, {})[s.labels] = s.value
            else:
                fresh.append(s)
        self._series += sum(len(v) for v in snap.values())
        for s in fresh:
            series = snap.setdefault(s.metric, {})
            if s.labels in series or self._admit(s.metric):
                series[s.labels] = s.value
        snap = {spec: series for spec, series in snap.items() if series}
        self._snapshots[source] = snap
        for spec in old.keys() | snap.keys():
            self._touch(spec, source, gone=spec not in snap)

    def set(self, source: tuple[str, str], spec: MetricSpec, labels: Labels, value: float) -> None:
        """Set one gauge inside a source's snapshot, keeping the rest of it."""
        _check(spec, labels, MetricType.GAUGE)
        series = self._snapshots.setdefault(source, {}).setdefault(spec, {})
        if labels not in series and not self._admit(spec):
            return
        series[labels] = value
        self._touch(spec, source)

    def drop(self, source: tuple[str, str]) -> None:
        """Forget a source's gauges (a target removed, a worker expired)."""
        for spec, series in self._snapshots.pop(source, {}).items():
            self._series -= len(series)
            self._touch(spec, source, gone=True)

    def inc(self, spec: MetricSpec, labels: Labels, amount: float = 1.0) -> None:
        """Add to a counter; amount 0 creates the series at zero."""
        _check(spec, labels, MetricType.COUNTER)
        if amount < 0:
            raise ValueError("counters only go up")
        series = self._counters.setdefault(spec, {})
        value = series.get(labels)
        if value is None:
            if not self._admit(spec):
                return
            value = 0.0
        series[labels] = value + amount
        self._touch(spec, _part_of(spec)(labels))

    def forget(self, spec: MetricSpec, labels: Labels) -> None:
        """Remove one counter series (its source stopped reporting it here, e.g. another instance collects it)."""
        series = self._counters.get(spec, {})
        if series.pop(labels, None) is None:
            return
        if not series:
            del self._counters[spec]
        part = _part_of(spec)
        self._touch(spec, part(labels), gone=not any(part(other) == part(labels) for other in series))

    def observe(self, spec: MetricSpec, labels: Labels, value: float) -> None:
        """Record one observation in a histogram."""
        _check(spec, labels, MetricType.HISTOGRAM)
        h = self._hist(spec, labels)
        if h is None:
            return
        i = bisect.bisect_left(spec.buckets, value)
        if i < len(h.counts) - 1 or value <= spec.buckets[-1]:
            h.counts[i] += 1
        else:
            h.counts[-1] += 1
        h.total += value
        h.n += 1
        self._touch(spec, _part_of(spec)(labels))

    def add_histogram(self, spec: MetricSpec, labels: Labels, counts: Sequence[float], total: float) -> None:
        """Add pre-bucketed observations (one count per bucket, +Inf last) and their sum, e.g. pushed by the hook."""
        _check(spec, labels, MetricType.HISTOGRAM)
        if len(counts) != len(spec.buckets) + 1:
            raise ValueError(f"{spec.name} takes {len(spec.buckets) + 1} bucket counts, got {len(counts)}")
        h = self._hist(spec, labels)
        if h is None:
            return
        for i, n in enumerate(counts):
            h.counts[i] += int(n)
        h.total += total
        h.n += int(sum(counts))
        self._touch(spec, _part_of(spec)(labels))

    def touch_histogram(self, spec: MetricSpec, labels: Labels) -> None:
        """Create a histogram series with no observations, so it exists from the start."""
        _check(spec, labels, MetricType.HISTOGRAM)
        if self._hist(spec, labels) is not None:
            self._touch(spec, _part_of(spec)(labels))

    def _hist(self, spec: MetricSpec, labels: Labels) -> _Hist | None:
        """The histogram series, created if there is room for it in max_series (else None)."""
        series = self._hists.setdefault(spec, {})
        h = series.get(labels)
        if h is None:
            if not self._admit(spec):
                return None
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
            yield _family(spec, series)
        for spec, series in sorted(self._counters.items(), key=lambda kv: kv[0].name):
            yield _family(spec, series)
        for spec, hseries in sorted(self._hists.items(), key=lambda kv: kv[0].name):
            yield _family(spec, hseries)

    def _parts(self, spec: MetricSpec, wanted: Collection[Hashable]) -> dict[Hashable, dict[Labels, Any]]:
        """The series of some parts of one family (for Exposition)."""
        if spec.type is MetricType.GAUGE:
            return {p: self._snapshots.get(p, {}).get(spec, {}) for p in wanted}  # type: ignore[call-overload]
        table: dict[Labels, Any] = self._counters.get(spec, {}) if spec.type is MetricType.COUNTER else {}
        if spec.type is MetricType.HISTOGRAM:
            table = self._hists.get(spec, {})
        part = _part_of(spec)
        out: dict[Hashable, dict[Labels, Any]] = {p: {} for p in wanted}
        for labels, v in table.items():
            got = out.get(part(labels))
            if got is not None:
                got[labels] = v
        return out


_ORDER: dict[MetricType, int] = {MetricType.GAUGE: 0, MetricType.COUNTER: 1, MetricType.HISTOGRAM: 2}


@functools.cache
def _part_of(spec: MetricSpec) -> Callable[[Labels], str]:
    """How a counter/histogram series maps to its part: its `target` label (else its first label, else one part)."""
    if not spec.labels:
        return lambda labels: ""
    i = spec.labels.index("target") if "target" in spec.labels else 0
    return lambda labels: labels[i]


def _family(spec: MetricSpec, series: dict[Labels, Any]) -> Metric:
    """One client_python family holding the given series of a spec (values for gauges/counters, _Hist otherwise)."""
    # Imported here, so that `import dbwatch.config` (collectors -> Sample) does not load prometheus_client.
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily  # noqa: PLC0415

    if spec.type is MetricType.GAUGE:
        g = GaugeMetricFamily(spec.name, spec.help, labels=spec.labels)
        for labels, value in sorted(series.items()):
            g.add_metric(labels, value)
        return g
    if spec.type is MetricType.COUNTER:
        c = CounterMetricFamily(spec.name, spec.help, labels=spec.labels)
        for labels, value in sorted(series.items()):
            c.add_metric(labels, value)
        return c
    fam = HistogramMetricFamily(spec.name, spec.help, labels=spec.labels)
    for labels, h in sorted(series.items()):
        cumulative = 0
        buckets: list[tuple[str, float]] = []
        for bound, count in zip((*spec.buckets, math.inf), h.counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if math.isinf(bound) else _fmt(bound), cumulative))
        fam.add_metric(labels, buckets, h.total)
    return fam


class _One:
    """A registry stand-in for client_python's encoders: yields one family."""

    def __init__(self, family: Metric) -> None:
        self._family = family

    def collect(self) -> list[Metric]:
        return [self._family]


class Exposition:
    """The store's exposition text in one format, cached: a scrape re-renders only the parts changed since the last.

    Rendering every series on each scrape costs ~100 ms per 10k series on the event loop. Here each family is kept
    as its header plus one rendered fragment per part (a gauge source, a counter/histogram target), re-rendered
    when the store says that part changed; an unchanged store returns the very same body to every scrape.
    """

    def __init__(self, store: Store, encoder: Callable[[Any], bytes]) -> None:
        self._store = store
        self._encode = encoder
        self._headers: dict[MetricSpec, bytes] = {}
        self._fragments: dict[tuple[MetricSpec, Hashable], tuple[int, bytes]] = {}
        self._version = -1
        self._body = b""
        self.fragments_rendered = 0  # for tests and benchmarks: how much work the cache saved

    def render(self) -> bytes:
        """The body for the store's current state (metric families only, no `# EOF`)."""
        store = self._store
        if store.version == self._version:
            return self._body
        chunks: list[bytes] = []
        fresh: dict[tuple[MetricSpec, Hashable], tuple[int, bytes]] = {}
        for spec in sorted(store._versions, key=lambda s: (_ORDER[s.type], s.name)):
            parts = store._versions[spec]
            header = self._headers.get(spec)
            if header is None:
                header = self._headers[spec] = b"".join(
                    line for line in self._lines(_family(spec, {})) if not line.startswith(b"# EOF")
                )
            chunks.append(header)
            stale = {p for p, v in parts.items() if self._fragments.get((spec, p), (-1, b""))[0] != v}
            series = store._parts(spec, stale) if stale else {}
            for part in sorted(parts):  # type: ignore[type-var]
                key = (spec, part)
                if part in stale:
                    text = b"".join(ln for ln in self._lines(_family(spec, series[part])) if not ln.startswith(b"#"))
                    fresh[key] = (parts[part], text)
                    self.fragments_rendered += 1
                else:
                    fresh[key] = self._fragments[key]
                chunks.append(fresh[key][1])
        self._fragments = fresh  # parts that are gone are forgotten here
        self._body = b"".join(chunks)
        self._version = store.version
        return self._body

    def _lines(self, family: Metric) -> list[bytes]:
        return self._encode(_One(family)).splitlines(keepends=True)


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
