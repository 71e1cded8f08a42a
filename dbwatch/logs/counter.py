"""Turn assembled events into counter increments: one per counted exception, labels bounded per source."""

from __future__ import annotations

import time

from dbwatch import labels
from dbwatch import metrics as m
from dbwatch.logs.classify import AppRules, Category, Classifier
from dbwatch.logs.record import Event, parse_timestamp
from dbwatch.store import Store

__all__ = ["ExceptionCounter"]


class ExceptionCounter:
    """The sink of one source: classify, count by (category, exception, location), track the newest event time.

    Every category exists from the start as a zero series with empty `exception` and `location`.
    """

    def __init__(self, source: str, rules: AppRules, store: Store, *, max_locations: int, max_exceptions: int) -> None:
        self._source = source
        self._rules = rules
        self._classify = Classifier(rules)
        self._store = store
        self._loc = labels.Capper(max_locations)
        self._exc = labels.Capper(max_exceptions)
        self._newest = 0.0
        for cat in Category:
            store.inc(m.LOG_EXCEPTIONS, (source, cat.value, "", ""), 0)
        store.inc(m.LOG_LOST_EXCEPTIONS, (source,), 0)

    def __call__(self, event: Event) -> None:
        c = self._classify(event.chain)
        for v in c.counted:
            where = labels.location(self._rules.label(v.location))
            series = (self._source, v.category.value, self._exc(labels.exception(v.exception)), self._loc(where))
            self._store.inc(m.LOG_EXCEPTIONS, series)
        if event.chain.lost:
            self._store.inc(m.LOG_LOST_EXCEPTIONS, (self._source,), event.chain.lost)
        stamp = parse_timestamp(event.timestamp) or time.time()
        if stamp > self._newest:
            self._newest = stamp
            self._store.set(("logs", self._source), m.LOG_LAST_EVENT, (self._source,), stamp)
