"""The persistent monitoring connection on real servers: reconnect with backoff, full servers, failed auth."""

from __future__ import annotations

import contextlib

import asyncpg
import pytest

from dbwatch import metrics as m
from dbwatch.errors import Reason
from dbwatch.pgcluster import free_port
from dbwatch.probes.job import ProbeJob
from tests.collectors.conftest import harness, make_target, sessions
from tests.helpers import PG, PGFactory

CB = "client backend"


async def _monitor_pid(admin: asyncpg.Connection) -> int | None:
    return await admin.fetchval(  # type: ignore[no-any-return]  # asyncpg is untyped
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'dbwatch' AND backend_type = 'client backend'"
        " AND usename = 'app' ORDER BY backend_start DESC LIMIT 1"
    )


async def test_terminated_connection_comes_back_on_the_next_collection(pg_factory: PGFactory) -> None:
    """pg_terminate_backend on dbwatch's session: that run fails, the next reconnects; both show in metrics."""
    pg = pg_factory()
    admin = await asyncpg.connect(**pg.cluster.superuser_kwargs())
    try:
        async with harness(pg.dsn) as h:
            await h.collect("pg_activity")
            first = await _monitor_pid(admin)
            assert h.store.gauge_value(m.MONITOR_UP, ("db",)) == 1
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", first)
            # Depending on when asyncpg sees the server's FATAL, the loss shows at the start of the next run (which
            # then reconnects and succeeds) or as that run's error (and the run after reconnects). Either way it
            # comes back by the second run at the latest, and the loss and the new attempt are counted.
            try:
                await h.collect("pg_activity")
            except Exception:  # asyncpg raises one of several client errors here
                assert h.store.gauge_value(m.MONITOR_UP, ("db",)) == 0
                await h.collect("pg_activity")
            assert h.store.counter_value(m.MONITOR_LOST, ("db",)) == 1
            assert h.store.gauge_value(m.MONITOR_UP, ("db",)) == 1
            assert h.store.counter_value(m.MONITOR_ATTEMPTS, ("db", "ok")) == 2
            second = await _monitor_pid(admin)
            assert second is not None
            assert second != first
    finally:
        await admin.close()


async def test_reconnect_backs_off_while_the_server_is_down(pg_factory: PGFactory) -> None:
    """Failed attempts double the wait (visible as a gauge); runs inside the wait don't touch the network."""
    pg = pg_factory()
    async with harness(pg.dsn) as h:
        await h.collect("pg_activity")
        pg.cluster.stop("fast")
        with pytest.raises(Exception):  # noqa: B017, PT011 - the open session is lost first
            await h.collect("pg_activity")
        assert h.store.counter_value(m.MONITOR_LOST, ("db",)) == 1
        waits = []
        for _ in range(3):
            h.monitors.get(h.target)._next_attempt = 0.0  # skip the wait, keep the failure count
            with contextlib.suppress(Exception):
                await h.collect("pg_activity")
            waits.append(h.store.gauge_value(m.MONITOR_BACKOFF, ("db",)) or 0.0)
        assert 0 < waits[0] < waits[1] < waits[2]
        assert h.store.counter_value(m.MONITOR_ATTEMPTS, ("db", "refused")) == 3
        # Inside the wait, a run fails fast without another attempt.
        with pytest.raises(ConnectionError):
            await h.collect("pg_activity")
        assert h.store.counter_value(m.MONITOR_ATTEMPTS, ("db", "refused")) == 3
        pg.cluster.start()
        h.monitors.get(h.target)._next_attempt = 0.0
        await h.collect("pg_activity")
        assert h.store.gauge_value(m.MONITOR_UP, ("db",)) == 1
        assert h.store.gauge_value(m.MONITOR_BACKOFF, ("db",)) == 0


async def test_backoff_never_outlasts_the_collection_interval() -> None:
    """However many attempts failed, the wait stays under interval - budget, so the next tick tries again."""
    refused = f"postgresql://app:x@127.0.0.1:{free_port()}/x"  # nothing listens there
    async with harness(refused, interval="2s", budget="0.5s") as h:
        mc = h.monitors.get(h.target)
        for _ in range(8):  # 0.5 s doubling would reach 64 s (capped at BACKOFF_MAX = 30 s) by the eighth
            mc._next_attempt = 0.0  # skip the wait, keep the failure count
            with pytest.raises(ConnectionRefusedError):
                await h.collect("pg_activity")
            assert 0 < (h.store.gauge_value(m.MONITOR_BACKOFF, ("db",)) or 0.0) <= 1.5
        assert h.store.counter_value(m.MONITOR_ATTEMPTS, ("db", "refused")) == 8


async def test_full_server_still_reports_sessions_while_probe_says_too_many(pg_factory: PGFactory) -> None:
    """At max_connections the held monitoring connection keeps reporting; a fresh probe gets too_many_connections."""
    pg = pg_factory(max_connections=8)  # 3 reserved: 5 slots for non-superusers
    async with harness(pg.dsn) as h:
        await h.collect("pg_activity")  # the monitoring session takes one slot
        held: list[asyncpg.Connection] = []
        try:
            with contextlib.suppress(asyncpg.TooManyConnectionsError):
                for _ in range(8):
                    held.append(await asyncpg.connect(pg.dsn, server_settings={"application_name": "t-held"}))
            assert len(held) == 4
            probe = ProbeJob(make_target(pg.dsn), h.store)
            with pytest.raises(asyncpg.TooManyConnectionsError):
                await probe.run()
            assert h.store.counter_value(m.PROBE_FAILURES, ("db", Reason.TOO_MANY_CONNECTIONS.value)) == 1
            await h.collect("pg_activity")
            assert h.gauge(m.PG_SESSIONS, "appdb", "app", "t-held", "idle", CB) == 4
            assert h.gauge(m.PG_CONNECTIONS_USED_RATIO) == 1.0
            # ...and keeps updating: one held session opens a transaction.
            await held[0].execute("BEGIN; SELECT 1")
            await h.collect("pg_activity")
            assert h.gauge(m.PG_SESSIONS, "appdb", "app", "t-held", "idle in transaction", CB) == 1
            assert h.gauge(m.PG_SESSIONS, "appdb", "app", "t-held", "idle", CB) == 3
        finally:
            for c in held:
                c.terminate()


async def test_failed_authentication_reads_as_down(pg: PG) -> None:
    """A wrong password: the monitoring connection is down with reason auth_failed and nothing is reported."""
    async with harness(pg.cluster.dsn("app", "wrong-password", "appdb")) as h:
        with pytest.raises(asyncpg.InvalidPasswordError):
            await h.collect("pg_activity")
        assert h.store.gauge_value(m.MONITOR_UP, ("db",)) == 0
        assert h.store.counter_value(m.MONITOR_ATTEMPTS, ("db", "auth_failed")) == 1
        assert h.store.counter_value(m.MONITOR_ATTEMPTS, ("db", "ok")) == 0
        assert h.gauge(m.PG_CONNECTIONS_USED_RATIO) is None


async def test_monitoring_session_has_short_lock_and_statement_timeouts(pg: PG) -> None:
    """dbwatch's session: lock_timeout = half the budget, statement_timeout = three quarters, application_name."""
    async with harness(pg.dsn, budget="2s") as h, h.monitors.get(h.target).use() as conn:
        assert await conn.fetchval("SHOW lock_timeout") == "1s"
        assert await conn.fetchval("SHOW statement_timeout") == "1500ms"
        assert await conn.fetchval("SHOW application_name") == "dbwatch"


async def test_server_cuts_a_slow_monitoring_statement_short(pg: PG) -> None:
    """A statement on the monitoring session that runs past statement_timeout is cancelled by the server itself."""
    async with harness(pg.dsn, budget="400ms") as h, h.monitors.get(h.target).use() as conn:
        with pytest.raises(asyncpg.QueryCanceledError, match="statement timeout"):
            await conn.execute("SELECT pg_sleep(5)", timeout=10)


_ = sessions  # shared helper, used by sibling modules
