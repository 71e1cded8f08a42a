"""pg_activity against a real PostgreSQL 15: counts, zeros, NULL datnames, blocked sessions, ages, saturation."""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg

from dbwatch import metrics as m
from dbwatch.collectors.pg_activity import STATES
from dbwatch.labels import OTHER
from tests.collectors.conftest import Harness, harness, sessions
from tests.helpers import PG, PGFactory, eventually

CB = "client backend"


async def test_counts_by_state_user_app_match_pg_stat_activity(pg: PG) -> None:
    """Held idle, idle-in-transaction and active sessions are counted exactly; empty standard states read 0."""
    async with harness(pg.dsn) as h:
        await _counts(pg, h)

        async def gone() -> bool:
            await h.collect("pg_activity")
            return h.gauge(m.PG_SESSIONS, "appdb", "app", "t-idle", "idle", CB) is None

        await eventually(gone)  # the sessions closed: their group's series go with them


async def _counts(pg: PG, h: Harness) -> None:
    async with (
        sessions(pg.dsn, 3, "t-idle"),
        sessions(pg.dsn, 2, "t-iit") as iit,
        sessions(pg.dsn, 1, "t-active") as active,
    ):
        for c in iit:
            await c.execute("BEGIN; SELECT 1")
        sleeper = asyncio.ensure_future(active[0].execute("SELECT pg_sleep(30)"))
        admin = await asyncpg.connect(**pg.cluster.superuser_kwargs())
        try:
            await eventually(
                lambda: admin.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 't-active' AND state = 'active'"
                )
            )
            await h.collect("pg_activity")
            truth = await admin.fetch(
                "SELECT coalesce(datname, '') d, coalesce(usename, '') u, application_name a, coalesce(state, '') s,"
                " backend_type b, count(*) n FROM pg_stat_activity"
                " WHERE application_name LIKE 't-%' GROUP BY 1, 2, 3, 4, 5"
            )
            assert len(truth) == 3
            for r in truth:
                assert h.gauge(m.PG_SESSIONS, r["d"], r["u"], r["a"], r["s"], r["b"]) == r["n"]
            assert h.gauge(m.PG_SESSIONS, "appdb", "app", "t-idle", "idle", CB) == 3
            assert h.gauge(m.PG_SESSIONS, "appdb", "app", "t-iit", "idle in transaction", CB) == 2
            assert h.gauge(m.PG_SESSIONS, "appdb", "app", "t-active", "active", CB) == 1
            for state in STATES:
                if state != "idle":
                    assert h.gauge(m.PG_SESSIONS, "appdb", "app", "t-idle", state, CB) == 0, state
            # dbwatch's own session is counted like any other.
            assert h.gauge(m.PG_SESSIONS, "appdb", "app", "dbwatch", "active", CB) == 1
            # Background processes have no database; they are kept with datname ''.
            assert (h.gauge(m.PG_SESSIONS, "", "", "", "", "checkpointer") or 0) >= 1
            assert (h.gauge(m.PG_WAITING_SESSIONS, "appdb", "Timeout") or 0) >= 1  # pg_sleep waits on Timeout
            assert h.gauge(m.PG_WAITING_SESSIONS, "appdb", "Lock") == 0
            assert (h.gauge(m.PG_OLDEST_ACTIVE_QUERY, "appdb") or 0) > 0
        finally:
            sleeper.cancel()
            with contextlib.suppress(BaseException):
                await sleeper
            await admin.close()


async def test_blocked_session_is_reported_with_its_age(pg: PG) -> None:
    """Two transactions on one row: the second is blocked, and its wait ages."""
    admin = await asyncpg.connect(pg.dsn)
    await admin.execute(
        "CREATE TABLE IF NOT EXISTS blk (id int PRIMARY KEY, v int);"
        " INSERT INTO blk VALUES (1, 0) ON CONFLICT DO NOTHING"
    )
    try:
        async with (
            harness(pg.dsn) as h,
            sessions(pg.dsn, 1, "t-holder") as (holder,),
            sessions(pg.dsn, 1, "t-waiter") as (waiter,),
        ):
            await holder.execute("BEGIN; UPDATE blk SET v = v + 1 WHERE id = 1")
            blocked = asyncio.ensure_future(waiter.execute("UPDATE blk SET v = v + 1 WHERE id = 1"))
            try:

                async def reported() -> bool:
                    await h.collect("pg_activity")
                    return h.gauge(m.PG_BLOCKED_SESSIONS, "appdb") == 1

                await eventually(reported)
                first = h.gauge(m.PG_OLDEST_BLOCKED_WAIT, "appdb") or 0.0
                assert h.gauge(m.PG_WAITING_SESSIONS, "appdb", "Lock") == 1
                await asyncio.sleep(0.3)  # let the wait age measurably
                await h.collect("pg_activity")
                second = h.gauge(m.PG_OLDEST_BLOCKED_WAIT, "appdb") or 0.0
                assert second > first > 0
                assert h.gauge(m.PG_TOP_SESSION_AGE, "blocked_wait", "appdb", "app", "t-waiter") == second
                # The holder sits idle in transaction: that ages too, and names its app.
                assert (h.gauge(m.PG_OLDEST_IDLE_IN_TRANSACTION, "appdb") or 0) >= second
                assert h.gauge(m.PG_TOP_SESSION_AGE, "idle_in_transaction", "appdb", "app", "t-holder")
            finally:
                await holder.execute("ROLLBACK")
                await blocked
            await h.collect("pg_activity")
            assert h.gauge(m.PG_BLOCKED_SESSIONS, "appdb") == 0
            assert h.gauge(m.PG_OLDEST_BLOCKED_WAIT, "appdb") == 0
    finally:
        await admin.execute("DROP TABLE blk")
        await admin.close()


async def test_idle_in_transaction_age_grows(pg: PG) -> None:
    """A real open transaction left idle: its age per database and as the top offender grows between collections."""
    async with harness(pg.dsn) as h, sessions(pg.dsn, 1, "t-sync-sdk") as (c,):
        await c.execute("BEGIN; SELECT 1")
        await h.collect("pg_activity")
        first = h.gauge(m.PG_OLDEST_IDLE_IN_TRANSACTION, "appdb") or 0.0
        await asyncio.sleep(0.3)
        await h.collect("pg_activity")
        second = h.gauge(m.PG_OLDEST_IDLE_IN_TRANSACTION, "appdb") or 0.0
        assert second >= first + 0.25
        assert (h.gauge(m.PG_OLDEST_TRANSACTION, "appdb") or 0) >= second
        top = h.gauge(m.PG_TOP_SESSION_AGE, "idle_in_transaction", "appdb", "app", "t-sync-sdk")
        assert top == second
        # Databases without such sessions read 0, not absent.
        assert h.gauge(m.PG_OLDEST_IDLE_IN_TRANSACTION, "postgres") == 0


async def test_saturation_ratio_and_settings(pg: PG) -> None:
    """Client backends over the non-reserved slots, and the raw settings in base units."""
    admin = await asyncpg.connect(**pg.cluster.superuser_kwargs())
    await admin.execute("ALTER SYSTEM SET idle_in_transaction_session_timeout = '90s'")
    await admin.execute("SELECT pg_reload_conf()")
    try:
        async with harness(pg.dsn) as h, sessions(pg.dsn, 4, "t-sat"):
            await h.collect("pg_activity")
            clients = await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
            )
            assert h.gauge(m.PG_SETTING_CONNECTIONS, "max_connections") == 100
            assert h.gauge(m.PG_SETTING_CONNECTIONS, "superuser_reserved_connections") == 3
            assert h.gauge(m.PG_SETTING_TIMEOUT, "idle_in_transaction_session_timeout") == 90.0
            assert h.gauge(m.PG_SETTING_TIMEOUT, "statement_timeout") == 0  # the server's, not the monitoring session's
            assert h.gauge(m.PG_CONNECTIONS_USED_RATIO) == clients / 97
            # A reload reaches the open monitoring session: the server's new value, dbwatch's own still in force.
            await admin.execute("ALTER SYSTEM SET statement_timeout = '45s'")
            await admin.execute("SELECT pg_reload_conf()")
            for _ in range(50):  # a backend applies a reload at its next statement
                await h.collect("pg_activity")
                if h.gauge(m.PG_SETTING_TIMEOUT, "statement_timeout") == 45.0:
                    break
                await asyncio.sleep(0.1)
            assert h.gauge(m.PG_SETTING_TIMEOUT, "statement_timeout") == 45.0
            async with h.monitors.get(h.target).use() as conn:
                assert await conn.fetchval("SHOW statement_timeout") != "45s"
    finally:
        await admin.execute("ALTER SYSTEM RESET statement_timeout")
        await admin.execute("ALTER SYSTEM RESET idle_in_transaction_session_timeout")
        await admin.execute("SELECT pg_reload_conf()")
        await admin.close()


async def test_cardinality_cap_folds_200_application_names(pg_factory: PGFactory) -> None:
    """200 distinct application_names: at most the cap are kept, the rest read __other__ and are counted."""
    pg = pg_factory(max_connections=220)
    async with harness(pg.dsn, max_label_values=5) as h:
        conns: list[asyncpg.Connection] = []
        try:
            for i in range(200):
                conns.append(await asyncpg.connect(pg.dsn, server_settings={"application_name": f"svc-{i:03d}"}))
            await h.collect("pg_activity")
            snap = [labels for labels in h.store._snapshots[("pg_activity", "db")].get(m.PG_SESSIONS, {})]
            apps = {labels[3] for labels in snap}
            assert len(apps - {OTHER}) <= 5
            assert OTHER in apps
            folded = h.gauge(m.PG_FOLDED_LABEL_VALUES, "application_name") or 0
            assert folded >= 200 + 1 - 5  # 200 services plus dbwatch and background '' minus the kept
            other_idle = h.gauge(m.PG_SESSIONS, "appdb", "app", OTHER, "idle", CB) or 0
            kept_idle = sum(
                h.gauge(m.PG_SESSIONS, "appdb", "app", a, "idle", CB) or 0 for a in apps if a.startswith("svc-")
            )
            assert other_idle + kept_idle == 200  # folding loses no session
            # Kept values stay kept on the next collection (series don't flap).
            await h.collect("pg_activity")
            again = {labels[3] for labels in h.store._snapshots[("pg_activity", "db")][m.PG_SESSIONS]}
            assert again == apps
        finally:
            for c in conns:
                c.terminate()


async def test_cardinality_cap_folds_usenames_too(pg_factory: PGFactory) -> None:
    """12 distinct login roles with a cap of 5: at most 5 usenames are kept, the rest read __other__ and are counted."""
    pg = pg_factory()
    pg.cluster.psql("; ".join(f"CREATE ROLE u{i:02d} LOGIN PASSWORD 'pw-{i}'" for i in range(12)))
    async with harness(pg.dsn, max_label_values=5) as h:
        conns: list[asyncpg.Connection] = []
        try:
            for i in range(12):
                conns.append(await pg_connect(pg, f"u{i:02d}", f"pw-{i}"))
            await h.collect("pg_activity")
            snap = h.store._snapshots[("pg_activity", "db")][m.PG_SESSIONS]
            users = {labels[2] for labels in snap}
            assert len(users - {OTHER}) <= 5
            assert OTHER in users
            # every distinct value the server shows (12 roles, app for dbwatch, background workers') minus the 5 kept
            distinct = await conns[0].fetchval("SELECT count(DISTINCT coalesce(usename, '')) FROM pg_stat_activity")
            assert distinct >= 12 + 1
            assert h.gauge(m.PG_FOLDED_LABEL_VALUES, "usename") == distinct - 5
            held = sum(v for labels, v in snap.items() if labels[2] == OTHER or labels[2].startswith("u"))
            assert held == 12  # folding loses no session
        finally:
            for c in conns:
                c.terminate()


async def pg_connect(pg: object, user: str, password: str) -> asyncpg.Connection:
    return await asyncpg.connect(pg.cluster.dsn(user, password, "appdb"), server_settings={"application_name": "t-u"})  # type: ignore[attr-defined]
