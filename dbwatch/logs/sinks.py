"""Sinks: what records a source's parsed output to the store. Formats and parsers never touch metrics."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from dbwatch import labels
from dbwatch import metrics as m
from dbwatch.config import AccessConfig
from dbwatch.logs.access import AccessParser, BadValue
from dbwatch.logs.classify import AppRules, Category, Classifier
from dbwatch.logs.record import Event, parse_timestamp
from dbwatch.store import Store

__all__ = ["AccessLog", "ExceptionCounter"]


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


class AccessLog:
    """One source's access-log latency: `feed()` each record; its request goes to the store, its route capped."""

    def __init__(self, source: str, config: AccessConfig, store: Store) -> None:
        self._source = source
        self._store = store
        self._parser = AccessParser(config)
        self._routes = labels.Capper(config.max_routes)
        for result in ("observed", "unmatched", "bad_value"):
            store.inc(m.HTTP_ACCESS_RECORDS, (source, result), 0)

    def feed(self, text: str, fields: Mapping[str, Any] | None) -> bool:
        """Observe one record's request duration; False when the record is not an access record."""
        try:
            req = self._parser.parse(text, fields)
        except BadValue:
            self._store.inc(m.HTTP_ACCESS_RECORDS, (self._source, "bad_value"))
            return False
        if req is None:
            self._store.inc(m.HTTP_ACCESS_RECORDS, (self._source, "unmatched"))
            return False
        route, template = self._parser.route(req)
        # A 404 the app logged as a path (not a template) takes no new slot: a scanner's paths are `unmatched`.
        if not template and req.status == 404 and route not in self._routes:
            route = labels.UNMATCHED
        else:
            route = self._routes(route)
        method = labels.method(req.method)
        self._store.observe(m.HTTP_REQUEST_DURATION, (self._source, route, method), req.seconds)
        self._store.inc(m.HTTP_REQUESTS, (self._source, route, method, labels.status_class(req.status)))
        self._store.inc(m.HTTP_ACCESS_RECORDS, (self._source, "observed"))
        return True
