"""Session fixtures: a throwaway PostgreSQL cluster, and the check that the sentinel password never leaks."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dbwatch.pgcluster import Cluster
from tests.helpers import PG, SENTINEL, SENTINEL_FORMS, PGFactory

_leaks: list[str] = []


def _app_role(cluster: Cluster) -> PG:
    escaped = SENTINEL.replace("'", "''")
    cluster.psql(f"CREATE ROLE app LOGIN PASSWORD '{escaped}'")
    cluster.psql("CREATE DATABASE appdb OWNER app")
    cluster.psql("GRANT pg_monitor TO app")
    return PG(cluster)


@pytest.fixture(scope="session")
def pg() -> Iterator[PG]:
    """One PostgreSQL 15 cluster for the whole session (tests must leave it running)."""
    with Cluster(version="15", max_connections=100) as cluster:
        yield _app_role(cluster)


@pytest.fixture
def pg_factory() -> Iterator[PGFactory]:
    """Make private clusters a test may stop, kill or exhaust; all removed afterwards."""
    made: list[Cluster] = []

    def make(**kw: object) -> PG:
        c = Cluster(version="15", **kw)  # type: ignore[arg-type]
        made.append(c)
        c.init().start()
        return _app_role(c)

    yield make
    for c in made:
        c.cleanup()


def _check(where: str, text: str | None) -> None:
    if text and any(form in text for form in SENTINEL_FORMS):
        _leaks.append(where)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Grep every captured output (stdout, stderr, logs, failure text) of every test for the sentinel."""
    for name, content in report.sections:
        _check(f"{report.nodeid} [{name}]", content)
    _check(f"{report.nodeid} [longrepr]", report.longreprtext)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if the sentinel password leaked anywhere."""
    if _leaks:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            tr.write_line("SENTINEL PASSWORD LEAKED in: " + ", ".join(sorted(set(_leaks))), red=True)
