"""Real async-ORM errors (SQLAlchemy 2 on asyncpg and on psycopg 3, against the test PostgreSQL), logged for real,
counted exactly.

Every scenario of the issues: lazy load after commit (MissingGreenlet), a detached instance, QueuePool exhausted,
two coroutines on one session (and, on asyncpg, on one driver connection), max_connections, statement_timeout, a
real deadlock, idle_in_transaction_session_timeout, a backend terminated under a running statement, a refused
connection, a unique violation, a connection the garbage collector found checked out (a log line, no traceback), a
cancel while the pool terminates a connection (asyncpg) and a MissingGreenlet inside a TaskGroup. Each lands in its
category with the app line that triggered it, in every format, and the same category on either driver.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from dbwatch import metrics as m
from dbwatch.logs.classify import AppRules
from dbwatch.logs.formats import Splitter
from dbwatch.logs.record import Stats
from dbwatch.logs.scan import scan_file
from dbwatch.logs.sinks import ExceptionCounter
from dbwatch.store import Store
from tests.helpers import PG
from tests.logs import orm_corpus, ormapp

APP = str(Path(ormapp.__file__))
FORMATS = ("plain", "json", "dict", "cri", "docker", "cri-json")
_TS = re.compile(r"^\d{4}-\d{2}-\d{2} ")


@pytest.fixture(scope="session", params=orm_corpus.DRIVERS)
def orm_logs(
    request: pytest.FixtureRequest, pg: PG, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, dict[str, Any]]:
    """The scenarios run once per session and driver; (driver, their logs in every format)."""
    driver: str = request.param
    return driver, orm_corpus.make(tmp_path_factory.mktemp(f"orm-{driver}"), pg.dsn, driver)


def _want(case: orm_corpus.Case) -> tuple[str, str | None, int | None]:
    if case.marker is None:
        return case.category, None, None
    return case.category, APP, ormapp.marker_line(case.marker)


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_error_once_in_its_category_with_its_app_line(orm_logs: tuple[str, dict[str, Path]], fmt: str) -> None:
    """One event per scenario, in order, categorised by root cause, located at the marked line of the app."""
    driver, files = orm_logs
    report = scan_file(files[fmt])
    got = [
        (c.category.value, c.location.path if c.location else None, c.location.line if c.location else None)
        for _e, c in report.events
    ]
    assert got == [_want(case) for case in orm_corpus.CASES[driver]]
    assert report.stats.parse_errors == 0
    group = report.events[-1][1]
    assert sorted(v.category.value for v in group.leaves) == sorted(orm_corpus.CASES[driver][-1].leaves)


def test_an_event_ends_at_its_records_last_line(orm_logs: tuple[str, dict[str, Path]]) -> None:
    """In the plain file each error is followed by a uvicorn or gunicorn access line: never part of the event.
    The event's last line is the last line of its record (psycopg's DETAIL/HINT/CONTEXT and SQLAlchemy's [SQL: ...]
    included)."""
    _driver, files = orm_logs
    lines = files["plain"].read_text().splitlines()
    report = scan_file(files["plain"])
    for event, _c in report.events:
        after = lines[event.last_line]  # the line after the event (last_line is 1-based)
        assert after in orm_corpus.ACCESS_LINES or _TS.match(after), after
        assert lines[event.last_line - 1] not in orm_corpus.ACCESS_LINES


def test_final_and_root_classes_as_python_prints_them(orm_logs: tuple[str, dict[str, Path]]) -> None:
    """Wrapped DBAPI errors: the final class is SQLAlchemy's, the root the driver's (plain text keeps full names);
    structlog's dict form (bare names) gets the same root class back from SQLAlchemy's message."""
    driver, files = orm_logs
    cases = orm_corpus.CASES[driver]
    by_name = {case.name: c for case, (_e, c) in zip(cases, scan_file(files["plain"]).events, strict=True)}
    dict_by_name = {case.name: c for case, (_e, c) in zip(cases, scan_file(files["dict"]).events, strict=True)}
    # psycopg's dialect compiles the lazy load's statement first, so SQLAlchemy wraps the MissingGreenlet
    assert by_name["missing_greenlet"].final_class == (
        "sqlalchemy.exc.MissingGreenlet" if driver == "asyncpg" else "sqlalchemy.exc.StatementError"
    )
    assert by_name["missing_greenlet"].root_class == "sqlalchemy.exc.MissingGreenlet"
    assert by_name["detached"].final_class == "sqlalchemy.orm.exc.DetachedInstanceError"
    assert by_name["pool_timeout"].final_class == "sqlalchemy.exc.TimeoutError"
    assert by_name["group"].final_class == "ExceptionGroup"
    roots = {
        "asyncpg": {
            "deadlock": "asyncpg.exceptions.DeadlockDetectedError",
            "statement_timeout": "asyncpg.exceptions.QueryCanceledError",
            "too_many": "asyncpg.exceptions.TooManyConnectionsError",
            "unique": "asyncpg.exceptions.UniqueViolationError",
        },
        "psycopg": {
            "deadlock": "psycopg.errors.DeadlockDetected",
            "statement_timeout": "psycopg.errors.QueryCanceled",
            "too_many": "psycopg.OperationalError",
            "unique": "psycopg.errors.UniqueViolation",
            "terminated": "psycopg.errors.AdminShutdown",
            "idle_in_transaction": "psycopg.errors.IdleInTransactionSessionTimeout",
        },
    }[driver]
    assert {name: by_name[name].root_class for name in roots} == roots
    assert by_name["deadlock"].final_class == (
        "sqlalchemy.exc.DBAPIError" if driver == "asyncpg" else "sqlalchemy.exc.OperationalError"
    )
    assert dict_by_name["unique"].counted[0].exception == by_name["unique"].counted[0].exception == roots["unique"]
    # where SQLAlchemy wraps a psycopg error, the dict form's bare names get the text form's modules back, the
    # wrapper's (sqlalchemy.exc.OperationalError) and the driver's (psycopg.OperationalError) alike
    for name in ("too_many", "statement_timeout", "deadlock", "terminated", "unique") if driver == "psycopg" else ():
        got = (dict_by_name[name].final_class, dict_by_name[name].root_class)
        assert got == (by_name[name].final_class, by_name[name].root_class), name


@pytest.mark.parametrize("fmt", ["plain", "dict", "docker"])
def test_counted_into_the_metric_with_bounded_location_labels(orm_logs: tuple[str, dict[str, Path]], fmt: str) -> None:
    """The daemon's sink: dbwatch_log_exceptions_total{source,category,exception,location}; leaves counted apart."""
    driver, files = orm_logs
    store = Store()
    counter = ExceptionCounter("app", AppRules(), store, max_locations=5, max_exceptions=50)
    sp = Splitter("auto", counter, Stats())
    sp.feed(files[fmt].read_bytes())
    sp.flush()
    series = store._counters[m.LOG_EXCEPTIONS]
    by_cat: dict[str, float] = {}
    for (source, cat, _exc, _loc), v in series.items():
        assert source == "app"
        by_cat[cat] = by_cat.get(cat, 0) + v
    want: dict[str, int] = {}
    for case in orm_corpus.CASES[driver]:
        for cat in case.leaves or (case.category,):
            want[cat] = want.get(cat, 0) + 1
    assert {k: v for k, v in by_cat.items() if v} == want
    locations = {loc for (_s, _c, _e, loc), v in series.items() if v}
    assert len(locations - {"__other__", ""}) == 5  # the first five locations keep their label, the rest fold
    assert "__other__" in locations
    assert all(loc in ("__other__", "") or loc.startswith(APP + ":") for loc in locations)
