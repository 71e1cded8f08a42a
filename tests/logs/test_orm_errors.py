"""Real async-ORM errors (SQLAlchemy 2 + asyncpg against the test PostgreSQL), logged for real, counted exactly.

Every scenario of the issue: lazy load after commit (MissingGreenlet), a detached instance, QueuePool exhausted,
two coroutines on one connection, max_connections, statement_timeout, a real deadlock,
idle_in_transaction_session_timeout, plus a backend terminated under a running statement, a refused connection and
a MissingGreenlet inside a TaskGroup. Each lands in its category with the app line that triggered it, in every format.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dbwatch import metrics as m
from dbwatch.logs.classify import AppRules
from dbwatch.logs.counter import ExceptionCounter
from dbwatch.logs.formats import Splitter
from dbwatch.logs.record import Stats
from dbwatch.logs.scan import scan_file
from dbwatch.store import Store
from tests.conftest import PG
from tests.logs import orm_corpus, ormapp

APP = str(Path(ormapp.__file__))
FORMATS = ("plain", "json", "dict", "cri", "docker", "cri-json")


@pytest.fixture(scope="session")
def orm_logs(pg: PG, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The scenarios run once per session; their logs in every format."""
    return orm_corpus.make(tmp_path_factory.mktemp("orm"), pg.dsn)


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_error_once_in_its_category_with_its_app_line(orm_logs: dict[str, Path], fmt: str) -> None:
    """One event per scenario, in order, categorised by root cause, located at the marked line of the app."""
    report = scan_file(orm_logs[fmt])
    got = [
        (c.category.value, c.location.path if c.location else None, c.location.line if c.location else None)
        for _e, c in report.events
    ]
    want = [(case.category, APP, ormapp.marker_line(case.marker)) for case in orm_corpus.CASES]
    assert got == want
    assert report.stats.parse_errors == 0
    group = report.events[-1][1]
    assert sorted(v.category.value for v in group.leaves) == sorted(orm_corpus.CASES[-1].leaves)


def test_final_and_root_classes_as_python_prints_them(orm_logs: dict[str, Path]) -> None:
    """Wrapped DBAPI errors: the final class is SQLAlchemy's, the root asyncpg's (plain text keeps full names)."""
    by_name = {
        case.name: c for case, (_e, c) in zip(orm_corpus.CASES, scan_file(orm_logs["plain"]).events, strict=True)
    }
    assert by_name["missing_greenlet"].final_class == "sqlalchemy.exc.MissingGreenlet"
    assert by_name["detached"].final_class == "sqlalchemy.orm.exc.DetachedInstanceError"
    assert by_name["pool_timeout"].final_class == "sqlalchemy.exc.TimeoutError"
    assert by_name["deadlock"].final_class == "sqlalchemy.exc.DBAPIError"
    assert by_name["deadlock"].root_class == "asyncpg.exceptions.DeadlockDetectedError"
    assert by_name["statement_timeout"].root_class == "asyncpg.exceptions.QueryCanceledError"
    assert by_name["too_many"].root_class == "asyncpg.exceptions.TooManyConnectionsError"
    assert by_name["group"].final_class == "ExceptionGroup"


@pytest.mark.parametrize("fmt", ["plain", "dict", "docker"])
def test_counted_into_the_metric_with_bounded_location_labels(orm_logs: dict[str, Path], fmt: str) -> None:
    """The daemon's sink: dbwatch_log_exceptions_total{source,category,exception,location}; leaves counted apart."""
    store = Store()
    counter = ExceptionCounter("app", AppRules(), store, max_locations=5, max_exceptions=50)
    sp = Splitter("auto", counter, Stats())
    sp.feed(orm_logs[fmt].read_bytes())
    sp.flush()
    series = store._counters[m.LOG_EXCEPTIONS]
    by_cat: dict[str, float] = {}
    for (source, cat, _exc, _loc), v in series.items():
        assert source == "app"
        by_cat[cat] = by_cat.get(cat, 0) + v
    want: dict[str, int] = {}
    for case in orm_corpus.CASES:
        for cat in case.leaves or (case.category,):
            want[cat] = want.get(cat, 0) + 1
    assert {k: v for k, v in by_cat.items() if v} == want
    locations = {loc for (_s, _c, _e, loc), v in series.items() if v}
    assert len(locations - {"__other__"}) == 5  # the first five locations keep their label, the rest fold
    assert "__other__" in locations
    assert all(loc == "__other__" or loc.startswith(APP + ":") for loc in locations)
