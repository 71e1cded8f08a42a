"""Sessions through the running daemon: scrapes never query or connect, lock storms and slow runs are abandoned."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from typing import Any, ClassVar

import asyncpg
import pytest

from dbwatch import metrics as m
from dbwatch.collectors.job import CollectorJob
from dbwatch.monconn import Monitors
from dbwatch.store import Sample, Store
from tests.collectors.bouncer import Bouncer
from tests.collectors.conftest import make_target
from tests.helpers import PG, PGFactory, eventually, running, sample

LOGGED = {"log_statement": "'all'", "log_line_prefix": "'%a|%p| '"}


def statements(logfile: Any, pid: int | None = None) -> int:
    """Statements the server logged for application_name dbwatch (optionally one backend)."""
    prefix = "dbwatch|" if pid is None else f"dbwatch|{pid}|"
    lines = logfile.read_text(errors="replace").splitlines()
    # log_statement=all logs a simple query as "statement: ..." and an extended one as "execute <name>: ...".
    return sum(1 for line in lines if line.startswith(prefix) and ("statement: " in line or "execute " in line))


async def test_concurrent_scrapes_never_query_nor_connect(pg_factory: PGFactory) -> None:
    """200 scrapes at once: no statement, no connection; one monitoring session; one statement per collection."""
    pg = pg_factory(settings=LOGGED)
    admin = await asyncpg.connect(**pg.cluster.superuser_kwargs())
    config = {"targets": [{"name": "db", "dsn": pg.dsn, "interval": "60s", "timeout": "5s"}]}
    try:
        async with running(config) as d:

            def runs(job: str) -> float:
                return d.store.counter_value(m.JOB_RUNS, (job, "db", "ok"))

            await eventually(lambda: runs("probe") and runs("pg_activity") and runs("pg_database"))
            monitor = await eventually(
                lambda: admin.fetchval(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = 'dbwatch' AND state = 'idle'"
                )
            )
            before_all, before_monitor = statements(pg.cluster.logfile), statements(pg.cluster.logfile, monitor)
            # When the session opened: one SET (statement_timeout, tcp_user_timeout) and the advisory lock; then
            # exactly one statement per collection each for pg_activity and pg_database.
            assert before_monitor == 2 + runs("pg_activity") + runs("pg_database") == 4
            bodies = await asyncio.gather(*(d.metrics() for _ in range(200)))
            assert all("dbwatch_pg_sessions{" in b for b in bodies)
            assert statements(pg.cluster.logfile) == before_all
            dbwatch_sessions = await admin.fetch(
                "SELECT pid FROM pg_stat_activity"
                " WHERE application_name = 'dbwatch' AND backend_type = 'client backend'"
            )
            assert [r["pid"] for r in dbwatch_sessions] == [monitor]
            assert d.store.counter_value(m.MONITOR_ATTEMPTS, ("db", "ok")) == 1
            body = bodies[0]
            assert sample(body, "dbwatch_pg_sessions", {"application_name": "dbwatch", "state": "active"}) == 1
            assert sample(body, "dbwatch_monitor_connection_up", {"target": "db"}) == 1
    finally:
        await admin.close()


async def test_metrics_pass_promtool_with_postgres_and_pgbouncer_targets(pg: PG) -> None:
    """The whole exposition, sessions and pgbouncer families included, is clean for `promtool check metrics`."""
    with Bouncer(pg.cluster.host, pg.port, ["appdb"], pg.user, pg.password) as b:
        config = {
            "targets": [
                {"name": "db", "dsn": pg.dsn, "interval": "60s"},
                {"name": "bouncer", "kind": "pgbouncer", "dsn": b.dsn("pgbouncer"), "interval": "60s"},
            ]
        }
        async with running(config) as d:

            def ok(job: str, t: str) -> float:
                return d.store.counter_value(m.JOB_RUNS, (job, t, "ok"))

            await eventually(lambda: ok("pg_activity", "db") and ok("pg_database", "db") and ok("pgbouncer", "bouncer"))
            await eventually(lambda: ok("probe", "bouncer") and ok("probe", "db"))
            body = await d.metrics()
    for family in (
        "dbwatch_pg_sessions",
        "dbwatch_pg_database_xact_commit_total",
        "dbwatch_pg_setting_connections",
        "dbwatch_pg_setting_timeout_seconds",
        "dbwatch_pgbouncer_pool_client_connections",
        "dbwatch_pgbouncer_queries_total",
    ):
        assert f"\n{family}{{" in body, family
    promtool = shutil.which("promtool")
    assert promtool
    lint = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, text=True, check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert lint.stdout.strip() == ""


# Lock waits of client backends but the observer's: PostgreSQL's own (the autovacuum launcher reads pg_database now
# and then) are not dbwatch's. A backend still starting up may have no row yet, and counts. The function, not the
# pg_stat_activity view: the view joins pg_database, whose lock this test holds.
LOCK_WAITS = """
SELECT count(*) FROM pg_locks l
WHERE NOT l.granted AND l.pid <> pg_backend_pid()
  AND NOT EXISTS (SELECT 1 FROM pg_stat_get_activity(NULL) a WHERE a.pid = l.pid AND a.backend_type <> 'client backend')
"""


async def test_lock_storm_abandons_collections_without_piling_up(pg_factory: PGFactory) -> None:
    """ACCESS EXCLUSIVE on pg_database: each collection gives up (counted), at most one dbwatch lock wait exists,
    and the same monitoring session carries on once the lock goes."""
    pg = pg_factory()
    holder = await asyncpg.connect(**pg.cluster.superuser_kwargs())
    observer = await asyncpg.connect(**pg.cluster.superuser_kwargs())
    config = {
        "targets": [{"name": "db", "dsn": pg.dsn, "interval": "60s", "collect": {"interval": "0.3s", "budget": "0.3s"}}]
    }
    try:
        async with running(config) as d:

            def timeouts() -> float:
                return d.store.counter_value(m.JOB_RUNS, ("pg_activity", "db", "timeout"))

            def oks() -> float:
                return d.store.counter_value(m.JOB_RUNS, ("pg_activity", "db", "ok"))

            await eventually(lambda: oks() and d.store.counter_value(m.JOB_RUNS, ("probe", "db", "ok")))
            monitor = await observer.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'dbwatch' AND usename = 'app'"
            )
            await holder.execute("BEGIN; LOCK TABLE pg_catalog.pg_database IN ACCESS EXCLUSIVE MODE")
            start = timeouts()
            most_waiting = 0
            deadline = time.monotonic() + 10
            while timeouts() < start + 4 and time.monotonic() < deadline:
                waiting = await observer.fetchval(LOCK_WAITS)
                most_waiting = max(most_waiting, waiting)
                await asyncio.sleep(0.02)
            assert timeouts() >= start + 4  # abandoned and counted
            assert most_waiting <= 1  # never stacked: one statement in flight at most
            assert d.store.gauge_value(m.JOB_SUCCESS, ("pg_activity", "db")) == 0
            await holder.execute("ROLLBACK")
            after = oks()
            await eventually(lambda: oks() > after)
            assert d.store.counter_value(m.MONITOR_ATTEMPTS, ("db", "ok")) == 1
            assert (
                await observer.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND application_name = 'dbwatch'", monitor
                )
                == 1
            )
    finally:
        await holder.close()
        await observer.close()


class Sleeper:
    """A test collector whose statement outlives any budget (pg_sleep)."""

    name: ClassVar[str] = "sleeper"
    kind: ClassVar[str] = "postgres"

    async def collect(self, conn: Any, budget: float) -> list[Sample]:
        await conn.fetch("SELECT pg_sleep(30)", timeout=budget)
        return []


async def test_slow_collection_is_cancelled_on_the_server_and_the_connection_kept(pg: PG) -> None:
    """Over budget: the run raises TimeoutError, the server stops the query, and the session is reused."""
    store = Store()
    monitors = Monitors(store)
    target = make_target(pg.dsn, budget="0.5s", interval="1s")
    job = CollectorJob(target, Sleeper(), monitors.get(target), store)
    admin = await asyncpg.connect(**pg.cluster.superuser_kwargs())
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await job.run()
        assert time.monotonic() - started < 5
        await eventually(
            lambda: admin.fetchval(
                "SELECT count(*) = 0 FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(30)%' AND state = 'active'"
            )
        )
        with pytest.raises(TimeoutError):
            await job.run()
        assert store.counter_value(m.MONITOR_ATTEMPTS, ("db", "ok")) == 1
        assert store.counter_value(m.MONITOR_LOST, ("db",)) == 0
    finally:
        await monitors.close()
        await admin.close()
