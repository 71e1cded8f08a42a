"""The pgbouncer collector and probe against a real pgbouncer in front of a real PostgreSQL 15."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import asyncpg
import psycopg
import pytest

from dbwatch import metrics as m
from dbwatch.errors import Reason, classify
from dbwatch.probes.job import ProbeJob
from tests.collectors.bouncer import Bouncer
from tests.collectors.conftest import harness, make_target
from tests.helpers import PG


@pytest.fixture(scope="module")
def bouncer(pg: PG) -> Iterator[Bouncer]:
    with Bouncer(pg.cluster.host, pg.port, ["appdb"], pg.user, pg.password, pool_size=2) as b:
        yield b


async def test_asyncpg_cannot_read_the_admin_console_but_psycopg_can(bouncer: Bouncer) -> None:
    """Why psycopg: the console refuses asyncpg's extended-protocol fetch; psycopg's simple query works."""
    conn = await asyncpg.connect(bouncer.dsn("pgbouncer"), statement_cache_size=0)
    try:
        with pytest.raises(asyncpg.ProtocolViolationError, match="extended query protocol not supported"):
            await conn.fetch("SHOW POOLS")
    finally:
        conn.terminate()
    async with await psycopg.AsyncConnection.connect(bouncer.dsn("pgbouncer"), autocommit=True) as pconn:
        cur = await pconn.execute("SHOW POOLS", prepare=False)
        assert "cl_active" in [d.name for d in cur.description or ()]


async def test_pools_reflect_clients_held_through_pgbouncer(bouncer: Bouncer) -> None:
    """Three clients in open transactions on a pool of 2: 2 active, 1 waiting, servers active, maxwait grows."""
    clients = [await asyncpg.connect(bouncer.dsn("appdb"), statement_cache_size=0) for _ in range(3)]
    waiter: asyncio.Future[object] | None = None
    try:
        async with harness(bouncer.dsn("pgbouncer"), kind="pgbouncer") as h:
            await clients[0].execute("BEGIN; SELECT 1")
            await clients[1].execute("BEGIN; SELECT 1")
            waiter = asyncio.ensure_future(clients[2].execute("SELECT 1"))  # no server free: waits in pgbouncer
            await asyncio.sleep(1.1)  # pgbouncer reports maxwait in whole seconds plus maxwait_us
            await h.collect("pgbouncer")
            assert h.gauge(m.PGBOUNCER_CLIENTS, "appdb", "app", "active") == 2
            assert h.gauge(m.PGBOUNCER_CLIENTS, "appdb", "app", "waiting") == 1
            assert h.gauge(m.PGBOUNCER_SERVERS, "appdb", "app", "active") == 2
            assert h.gauge(m.PGBOUNCER_SERVERS, "appdb", "app", "idle") == 0
            assert (h.gauge(m.PGBOUNCER_MAXWAIT, "appdb", "app") or 0) >= 1.0
            await clients[0].execute("COMMIT")
            await clients[1].execute("COMMIT")
            await waiter
            await h.collect("pgbouncer")
            assert h.gauge(m.PGBOUNCER_CLIENTS, "appdb", "app", "waiting") == 0
            assert h.gauge(m.PGBOUNCER_CLIENTS, "appdb", "app", "active") == 3  # linked clients, idle between queries
            # SHOW STATS totals are counters following pgbouncer's own.
            assert h.store.counter_value(m.PGBOUNCER_TRANSACTIONS, ("db", "appdb")) >= 3
            assert h.store.counter_value(m.PGBOUNCER_QUERY_TIME, ("db", "appdb")) > 0
            assert h.gauge(m.PGBOUNCER_AVG_QUERY_TIME, "appdb") is not None
            assert h.store.gauge_value(m.MONITOR_UP, ("db",)) == 1
    finally:
        for c in clients:
            c.terminate()


async def test_pgbouncer_probe_and_failed_auth(bouncer: Bouncer) -> None:
    """The probe answers over psycopg; a wrong password reads as auth_failed for probe and monitor alike."""
    from dbwatch.store import Store

    store = Store()
    await ProbeJob(make_target(bouncer.dsn("pgbouncer"), kind="pgbouncer"), store).run()
    assert store.gauge_value(m.PROBE_UP, ("db",)) == 1
    bad = bouncer.dsn("pgbouncer", password="wrong-password")
    with pytest.raises(psycopg.OperationalError) as err:
        await ProbeJob(make_target(bad, kind="pgbouncer"), store).run()
    assert classify(err.value) is Reason.AUTH_FAILED
    assert store.gauge_value(m.PROBE_UP, ("db",)) == 0
    async with harness(bad, kind="pgbouncer") as h:
        with pytest.raises(psycopg.OperationalError):
            await h.collect("pgbouncer")
        assert h.store.counter_value(m.MONITOR_ATTEMPTS, ("db", "auth_failed")) == 1
        assert h.store.gauge_value(m.MONITOR_UP, ("db",)) == 0
