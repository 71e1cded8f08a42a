"""The store's series budget (`max_series`): new label sets past it are refused and counted, room comes back."""

from __future__ import annotations

import pytest
import structlog

from dbwatch import metrics as m
from dbwatch.config import ConfigError, from_mapping
from dbwatch.store import Sample, Store, series_cost

ONES = [1] * (len(m.HTTP_REQUEST_DURATION.buckets) + 1)


def test_new_series_past_the_budget_are_refused_counted_and_logged_once() -> None:
    """Counters, histograms and gauges share one budget; existing series keep counting; one warning in all."""
    store = Store(max_series=10 + series_cost(m.HTTP_REQUEST_DURATION))
    with structlog.testing.capture_logs() as events:
        for i in range(10):
            store.inc(m.HOOK_DATAGRAMS, (f"r{i}",))
        store.add_histogram(m.HTTP_REQUEST_DURATION, ("a", "/", "GET"), ONES, 0.1)
        assert store.series == 10 + series_cost(m.HTTP_REQUEST_DURATION)
        store.inc(m.HOOK_DATAGRAMS, ("new",))
        store.add_histogram(m.HTTP_REQUEST_DURATION, ("a", "/x", "GET"), ONES, 0.1)
        store.set(("s", ""), m.APP_HOOK_WORKERS, ("a",), 1.0)
        store.inc(m.HOOK_DATAGRAMS, ("r0",), 5)  # an existing series still counts
    assert store.counter_value(m.HOOK_DATAGRAMS, ("new",)) == 0
    assert store.counter_value(m.HOOK_DATAGRAMS, ("r0",)) == 6
    assert store.histogram_value(m.HTTP_REQUEST_DURATION, ("a", "/x", "GET")) == (0, 0.0)
    assert store.gauge_value(m.APP_HOOK_WORKERS, ("a",)) is None
    assert store.counter_value(m.SERIES_DROPPED, (m.HOOK_DATAGRAMS.name,)) == 1
    assert store.counter_value(m.SERIES_DROPPED, (m.HTTP_REQUEST_DURATION.name,)) == 1
    assert store.counter_value(m.SERIES_DROPPED, (m.APP_HOOK_WORKERS.name,)) == 1
    assert [e["event"] for e in events if e["log_level"] == "warning"] == ["series_budget_reached"]


def test_gauge_snapshots_give_room_back_and_keep_their_own_series_first() -> None:
    """A replaced snapshot keeps the series it had before new ones take room; a dropped source frees its room."""
    store = Store(max_series=3)
    store.replace(("hook", "a"), [Sample(m.APP_HOOK_WORKERS, (x,), 1.0) for x in ("a", "b", "c")])
    assert store.series == 3
    store.replace(("hook", "a"), [Sample(m.APP_HOOK_WORKERS, (x,), 2.0) for x in ("new", "a", "b", "c")])
    assert [store.gauge_value(m.APP_HOOK_WORKERS, (x,)) for x in ("a", "b", "c", "new")] == [2.0, 2.0, 2.0, None]
    store.replace(("hook", "a"), [Sample(m.APP_HOOK_WORKERS, ("a",), 3.0)])
    assert store.series == 1
    store.drop(("hook", "a"))
    assert store.series == 0
    store.replace(("hook", "b"), [Sample(m.APP_HOOK_WORKERS, (x,), 1.0) for x in ("x", "y", "z", "w")])
    assert store.series == 3


def test_max_series_config_key() -> None:
    """Top-level max_series: default 100,000; bounded; in the redacted config."""
    assert from_mapping({}).max_series == 100_000
    assert from_mapping({"max_series": 2000}).redacted()["max_series"] == 2000
    with pytest.raises(ConfigError, match=r"^max_series: must be between"):
        from_mapping({"max_series": 10})
