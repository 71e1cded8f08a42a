"""Database-wide work once per database: several dbwatch instances on one real server, one advisory lock."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import Any

import asyncpg
import pytest

from dbwatch import metrics as m
from dbwatch.coordination import keepalive_bound
from tests.collectors.bouncer import Bouncer
from tests.collectors.conftest import harness
from tests.helpers import PG, Daemon, PGFactory, eventually, running

INTERVAL, TIMEOUT = 1.0, 0.5
# Probes and takeover attempts are short-lived; a session older than this is a persistent one.
PERSISTENT = "backend_start < now() - interval '1.5 seconds'"


def _target(dsn: str, **collect: Any) -> dict[str, Any]:
    t: dict[str, Any] = {"name": "db", "dsn": dsn, "interval": INTERVAL, "timeout": TIMEOUT}
    if collect:
        t["collect"] = collect
    return t


def _collecting(d: Daemon, mode: str = "auto") -> float | None:
    return d.store.gauge_value(m.DATABASE_WIDE_COLLECTING, ("db", mode))


def _database_wide_lines(body: str) -> list[str]:
    return [ln for ln in body.splitlines() if ln.startswith("dbwatch_pg_")]


async def _persistent_sessions(admin: asyncpg.Connection) -> int:
    return await admin.fetchval(  # type: ignore[no-any-return]  # asyncpg is untyped
        f"SELECT count(*) FROM pg_stat_activity WHERE application_name = 'dbwatch' AND {PERSISTENT}"  # noqa: S608
    )


async def _one_collects(ds: list[Daemon]) -> Daemon | None:
    """The one instance that collects, once exactly one does and only its scrape has database-wide series."""
    holders = [d for d in ds if _collecting(d) == 1.0]
    if len(holders) != 1 or any(_collecting(d) != 0.0 for d in ds if d is not holders[0]):
        return None
    bodies = [await d.metrics() for d in ds]
    with_series = [d for d, body in zip(ds, bodies, strict=True) if _database_wide_lines(body)]
    return holders[0] if with_series == holders else None


async def test_three_instances_one_collects_one_session_and_a_takeover(pg_factory: PGFactory) -> None:
    """Three instances: one collects and holds the only persistent session; stop it and another takes over in time."""
    pg = pg_factory()
    admin = await asyncpg.connect(**pg.cluster.superuser_kwargs())
    stacks = [contextlib.AsyncExitStack() for _ in range(3)]
    try:
        ds = [await s.enter_async_context(running({"targets": [_target(pg.dsn)]})) for s in stacks]
        holder = await eventually(lambda: _one_collects(ds), timeout=10)
        await eventually(lambda: _persistent_sessions(admin), timeout=5)
        assert await _persistent_sessions(admin) == 1
        for d in ds:
            # Every instance probes (pod-local work) and reports which instance collects.
            assert d.store.gauge_value(m.PROBE_UP, ("db",)) == 1.0
            runs = d.store.counter_value(m.JOB_RUNS, ("pg_activity", "db", "standby"))
            assert (runs == 0) == (d is holder)
        await stacks[ds.index(holder)].aclose()  # a graceful stop closes the session and frees the lock
        t0 = time.monotonic()
        rest = [d for d in ds if d is not holder]
        await eventually(lambda: _one_collects(rest), timeout=2 * (INTERVAL + TIMEOUT) + 3)
        # One probe interval + timeout to see the lock free, then the woken collectors take it and collect.
        assert time.monotonic() - t0 <= INTERVAL + TIMEOUT + 1.0
        assert await eventually(lambda: _persistent_sessions(admin), timeout=5) == 1
    finally:
        for s in stacks:
            await s.aclose()
        await admin.close()


async def test_central_always_and_sidecars_never(pg_factory: PGFactory) -> None:
    """mode always collects (and holds the lock), mode never opens no monitoring session and shows no such series."""
    pg = pg_factory()
    admin = await asyncpg.connect(**pg.cluster.superuser_kwargs())
    try:
        async with (
            running({"targets": [_target(pg.dsn, mode="always")]}) as central,
            running({"targets": [_target(pg.dsn, mode="never")]}) as side1,
            running({"targets": [_target(pg.dsn, mode="never")]}) as side2,
        ):
            await eventually(lambda: _collecting(central, "always") == 1.0)
            await eventually(lambda: side1.store.gauge_value(m.PROBE_UP, ("db",)) == 1.0)
            for side in (side1, side2):
                body = await side.metrics()
                assert _database_wide_lines(body) == []
                assert "dbwatch_monitor_connection_up" not in body
                assert 'dbwatch_job_info{scope="pod",target="db",task="probe"} 1.0' in body
            body = await central.metrics()
            assert 'dbwatch_job_info{scope="database",target="db",task="pg_activity"} 1.0' in body
            assert _database_wide_lines(body)
            assert await eventually(lambda: _persistent_sessions(admin), timeout=5) == 1
    finally:
        await admin.close()


async def test_monitoring_session_bounds_a_cut_off_holder(pg: PG) -> None:
    """The monitoring session's server-side keepalives and tcp_user_timeout add up to the stated bound."""
    async with harness(pg.dsn, interval="10s", budget="3s") as h, h.monitors.get(h.target).use() as conn:
        shown = {
            k: await conn.fetchval(f"SHOW {k}")
            for k in ("tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count", "tcp_user_timeout")
        }
        assert shown == {
            "tcp_keepalives_idle": "10",
            "tcp_keepalives_interval": "1",
            "tcp_keepalives_count": "3",
            "tcp_user_timeout": "13000",
        }
        assert keepalive_bound(h.target) == 13.0
        assert await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted") == 1


async def test_pgbouncer_target_follows_its_lock_target(pg_factory: PGFactory) -> None:
    """collect.lock_target: the pgbouncer target is collected where the postgres target is, and nowhere else."""
    pg = pg_factory()
    with Bouncer(pg.cluster.host, pg.port, ["appdb"], pg.user, pg.password) as b:
        bouncer = {
            "name": "bouncer",
            "kind": "pgbouncer",
            "dsn": b.dsn("pgbouncer"),
            "interval": INTERVAL,
            "timeout": TIMEOUT,
            "collect": {"lock_target": "db"},
        }
        config = {"targets": [_target(pg.dsn), bouncer]}
        stacks = [contextlib.AsyncExitStack() for _ in range(2)]
        try:
            ds = [await s.enter_async_context(running(config)) for s in stacks]

            async def pgbouncer_only_on_holder() -> Daemon | None:
                holder = await _one_collects(ds)
                if holder is None:
                    return None
                bodies = {id(d): await d.metrics() for d in ds}
                on = [d for d in ds if "\ndbwatch_pgbouncer_queries_total{" in bodies[id(d)]]
                return holder if on == [holder] else None

            holder = await eventually(pgbouncer_only_on_holder, timeout=10)
            await stacks[ds.index(holder)].aclose()
            rest = [d for d in ds if d is not holder]
            (other,) = rest
            await eventually(lambda: _one_collects(rest), timeout=2 * (INTERVAL + TIMEOUT) + 3)
            await eventually(lambda: other.store.counter_value(m.JOB_RUNS, ("pgbouncer", "bouncer", "ok")) >= 1)
        finally:
            for s in stacks:
                await s.aclose()


async def test_a_holder_whose_session_stops_answering_drops_it_and_its_series(pg_factory: PGFactory) -> None:
    """The holder's backend stops answering (SIGSTOP, as a cut network looks from the client): its next collection
    runs out of budget, and the holder drops the session, its series and its role at once (no stale duplicate)."""
    pg = pg_factory()
    admin = await asyncpg.connect(**pg.cluster.superuser_kwargs())
    try:
        async with harness(pg.dsn, budget="500ms") as h:
            await h.collect("pg_activity")
            assert h.gauge(m.PG_CONNECTIONS_USED_RATIO) is not None
            assert h.store.gauge_value(m.DATABASE_WIDE_COLLECTING, ("db", "auto")) == 1.0
            pid = await admin.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'dbwatch' AND usename = 'app'"
            )
            os.kill(pid, signal.SIGSTOP)
            try:
                with pytest.raises(TimeoutError):
                    await h.collect("pg_activity")
                assert h.gauge(m.PG_CONNECTIONS_USED_RATIO) is None
                assert h.store.gauge_value(m.DATABASE_WIDE_COLLECTING, ("db", "auto")) == 0.0
                assert h.store.gauge_value(m.MONITOR_UP, ("db",)) == 0.0
            finally:
                os.kill(pid, signal.SIGCONT)
    finally:
        await admin.close()
