"""pg_database against a real PostgreSQL 15: counters follow real commits, rollbacks, deadlocks and temp files."""

from __future__ import annotations

import asyncio
import contextlib
import os

import asyncpg

from dbwatch import metrics as m
from dbwatch.collectors import pg_database
from dbwatch.metrics import MetricSpec
from tests.collectors.conftest import harness
from tests.helpers import PG, PGFactory, eventually


async def _deadlock(dsn: str) -> None:
    """Two transactions lock two rows in opposite order; the server aborts one of them."""
    a, b = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        await a.execute("BEGIN; UPDATE dl SET v = v + 1 WHERE id = 1")
        await b.execute("BEGIN; UPDATE dl SET v = v + 1 WHERE id = 2")
        first = asyncio.ensure_future(a.execute("UPDATE dl SET v = v + 1 WHERE id = 2"))
        await asyncio.sleep(0.1)
        second = asyncio.ensure_future(b.execute("UPDATE dl SET v = v + 1 WHERE id = 1"))
        results = await asyncio.gather(first, second, return_exceptions=True)
        assert any(isinstance(r, asyncpg.DeadlockDetectedError) for r in results)
    finally:
        for c in (a, b):
            with contextlib.suppress(asyncpg.PostgresError):
                await c.execute("ROLLBACK")
            await c.close()


async def test_counters_follow_the_servers_own(pg_factory: PGFactory) -> None:
    """Commits, rollbacks, a real deadlock and a real temp file show up as counter increases; a stats reset
    on the server does not make the counter go down."""
    pg = pg_factory(settings={"deadlock_timeout": "'100ms'"})
    setup = await asyncpg.connect(pg.dsn)
    await setup.execute("CREATE TABLE dl (id int PRIMARY KEY, v int); INSERT INTO dl VALUES (1, 0), (2, 0)")
    try:
        async with harness(pg.dsn) as h:
            await h.collect("pg_database")

            def c(spec: MetricSpec) -> float:
                return h.store.counter_value(spec, ("db", "appdb"))

            commits, rollbacks, deadlocks, temp = (
                c(m.PG_DATABASE_XACT_COMMIT),
                c(m.PG_DATABASE_XACT_ROLLBACK),
                c(m.PG_DATABASE_DEADLOCKS),
                c(m.PG_DATABASE_TEMP_BYTES),
            )
            assert commits > 0  # the first collection starts from the server's value
            for _ in range(5):
                await setup.execute("BEGIN; SELECT 1; ROLLBACK")
            await _deadlock(pg.dsn)
            await setup.execute(
                "SET work_mem = '64kB';"
                " SELECT count(*) FROM (SELECT g FROM generate_series(1, 200000) g ORDER BY g DESC) s"
            )
            await asyncio.sleep(0.6)  # the stats collector flushes pending counts at most every 500 ms

            async def grown() -> bool:
                await h.collect("pg_database")
                return c(m.PG_DATABASE_DEADLOCKS) >= deadlocks + 1 and c(m.PG_DATABASE_TEMP_BYTES) > temp

            await eventually(grown, timeout=10, interval=0.3)
            assert c(m.PG_DATABASE_XACT_ROLLBACK) >= rollbacks + 5
            assert c(m.PG_DATABASE_XACT_COMMIT) > commits
            assert c(m.PG_DATABASE_TEMP_FILES) >= 1
            assert c(m.PG_DATABASE_BLKS_HIT) > 0
            # Shared catalogs have a NULL datname row: kept as ''.
            assert h.store.counter_value(m.PG_DATABASE_BLKS_HIT, ("db", "")) > 0
            before = c(m.PG_DATABASE_XACT_COMMIT)
            su = await asyncpg.connect(**pg.cluster.superuser_kwargs("appdb"))
            await su.execute("SELECT pg_stat_reset()")
            await su.close()
            await asyncio.sleep(0.6)
            await h.collect("pg_database")
            assert c(m.PG_DATABASE_XACT_COMMIT) >= before
    finally:
        await setup.close()


async def test_session_counters_follow_real_session_ends(pg: PG) -> None:
    """PostgreSQL 14+ session counters against real session ends: pg_terminate_backend counts as killed,
    idle_in_transaction_session_timeout as fatal, a client process killed with SIGKILL as abandoned; a transaction
    left idle for 0.4 s adds to idle_in_transaction_seconds."""
    async with harness(pg.dsn) as h:
        await h.collect("pg_database")

        def c(spec: MetricSpec) -> float:
            return h.store.counter_value(spec, ("db", "appdb"))

        before = {spec: c(spec) for spec in pg_database.SESSION_COLUMNS.values()}
        killer = await asyncpg.connect(pg.dsn)
        victim = await asyncpg.connect(pg.dsn)
        idler = await asyncpg.connect(pg.dsn, server_settings={"idle_in_transaction_session_timeout": "300"})
        try:
            assert await killer.fetchval("SELECT pg_terminate_backend($1)", victim.get_server_pid())
            await idler.execute("BEGIN")  # the server ends this session after 300 ms (FATAL)
            await killer.execute("BEGIN; SELECT 1")
            await asyncio.sleep(0.4)  # idle in a transaction, on purpose
            await killer.execute("COMMIT")
            await _abandon(pg)

            async def counted() -> bool:
                await h.collect("pg_database")
                return (
                    all(
                        c(spec) >= before[spec] + 1
                        for spec in (m.PG_DATABASE_SESSIONS_KILLED, m.PG_DATABASE_SESSIONS_FATAL)
                    )
                    and c(m.PG_DATABASE_SESSIONS_ABANDONED) >= before[m.PG_DATABASE_SESSIONS_ABANDONED] + 1
                )

            await eventually(counted, timeout=10, interval=0.3)
            await killer.close()  # its idle time is flushed when it ends at the latest

            async def idled() -> bool:
                await h.collect("pg_database")
                return c(m.PG_DATABASE_IDLE_IN_TRANSACTION) >= before[m.PG_DATABASE_IDLE_IN_TRANSACTION] + 0.4

            await eventually(idled, timeout=10, interval=0.3)
            assert c(m.PG_DATABASE_SESSIONS) >= before[m.PG_DATABASE_SESSIONS] + 4
        finally:
            for conn in (killer, victim, idler):
                conn.terminate()


async def _abandon(pg: PG) -> None:
    """A psql client that is connected and idle, then killed: its backend reads EOF without a Terminate."""
    proc = await asyncio.create_subprocess_exec(
        str(pg.cluster.bindir / "psql"),
        "-X",
        "-At",
        "-h",
        pg.cluster.host,
        "-p",
        str(pg.cluster.port),
        "-U",
        pg.user,
        "-d",
        pg.database,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env={"PGPASSWORD": pg.password, "PATH": os.environ.get("PATH", "")},
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    proc.stdin.write(b"SELECT 'connected';\n")
    await proc.stdin.drain()
    assert await asyncio.wait_for(proc.stdout.readline(), 10) == b"connected\n"
    proc.kill()
    await proc.wait()


def test_session_columns_are_read_only_from_postgresql_14() -> None:
    """Older servers get the statement without the session columns (they do not exist there)."""
    assert "sessions_killed" not in pg_database.sql_for(130000)
    assert "sessions_killed" in pg_database.sql_for(140000)
