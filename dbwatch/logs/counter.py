"""Turn assembled events into counter increments: one per counted exception, labels bounded per source."""

from __future__ import annotations

import time

from dbwatch import metrics as m
from dbwatch.logs.classify import AppRules, Category, Classifier
from dbwatch.logs.record import Event, parse_timestamp
from dbwatch.store import Store

__all__ = ["OTHER_LABEL", "ExceptionCounter", "LabelBound"]

OTHER_LABEL = "__other__"


class LabelBound:
    """The first `limit` distinct values keep their own label; later ones fold into `__other__`."""

    __slots__ = ("_limit", "_seen")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._seen or value == "":
            return value
        if len(self._seen) >= self._limit:
            return OTHER_LABEL
        self._seen.add(value)
        return value


class ExceptionCounter:
    """The sink of one source: classify, count by (category, exception, location), track the newest event time.

    Every category exists from the start as a zero series with empty `exception` and `location`.
    """

    def __init__(self, source: str, rules: AppRules, store: Store, *, max_locations: int, max_exceptions: int) -> None:
        self._source = source
        self._rules = rules
        self._classify = Classifier(rules)
        self._store = store
        self._loc = LabelBound(max_locations)
        self._exc = LabelBound(max_exceptions)
        self._newest = 0.0
        for cat in Category:
            store.inc(m.LOG_EXCEPTIONS, (source, cat.value, "", ""), 0)

    def __call__(self, event: Event) -> None:
        c = self._classify(event.chain)
        for v in c.counted:
            where = self._rules.label(v.location)
            labels = (self._source, v.category.value, self._exc(v.exception[:200]), self._loc(where[:300]))
            self._store.inc(m.LOG_EXCEPTIONS, labels)
        stamp = parse_timestamp(event.timestamp) or time.time()
        if stamp > self._newest:
            self._newest = stamp
            self._store.set(("logs", self._source), m.LOG_LAST_EVENT, (self._source,), stamp)
