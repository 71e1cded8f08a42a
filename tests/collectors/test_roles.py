"""Monitoring roles on a real server: a role without pg_monitor is detected; the README's role recipe holds at 5."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
from collections.abc import Awaitable

import asyncpg
from structlog.testing import capture_logs

from dbwatch import metrics as m
from tests.collectors.conftest import harness
from tests.helpers import REPO, SENTINEL, Daemon, PGFactory, eventually, running


async def test_role_without_pg_monitor_is_detected_and_logged_once(pg_factory: PGFactory) -> None:
    """Other roles' sessions come back with an empty state: dbwatch says so in a metric and one log line."""
    pg = pg_factory()
    pg.cluster.psql(f"CREATE ROLE plain LOGIN PASSWORD '{SENTINEL}'")
    admin = await asyncpg.connect(**pg.cluster.superuser_kwargs())  # another role's session: hidden from `plain`
    try:
        async with harness(pg.cluster.dsn("plain", SENTINEL, "appdb")) as h:
            with capture_logs() as logs:
                await h.collect("pg_activity")
                await h.collect("pg_activity")
            assert h.gauge(m.PG_ALL_SESSIONS_VISIBLE) == 0.0
            assert (h.gauge(m.PG_HIDDEN_SESSIONS) or 0.0) >= 1.0
            hidden = h.gauge(m.PG_SESSIONS, "postgres", "postgres", "", "", "")
            assert hidden is not None
            assert hidden >= 1.0
            warned = [e for e in logs if e["event"] == "monitoring_role_sees_own_sessions_only"]
            assert len(warned) == 1
            assert warned[0]["target"] == "db"
        async with harness(pg.dsn) as h:  # `app` has pg_monitor
            await h.collect("pg_activity")
            assert h.gauge(m.PG_ALL_SESSIONS_VISIBLE) == 1.0
            assert h.gauge(m.PG_HIDDEN_SESSIONS) == 0.0
    finally:
        await admin.close()


def _recipe() -> tuple[str, str]:
    """The README's CREATE ROLE and GRANT lines, as written there."""
    text = (REPO / "README.md").read_text()
    create = re.search(r"^CREATE ROLE dbwatch [^;]*;", text, re.M)
    grant = re.search(r"^GRANT pg_monitor TO dbwatch;", text, re.M)
    assert create, "README lost its role recipe"
    assert grant, "README lost its role recipe"
    return create.group(0), grant.group(0)


async def _is(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


def _probe_up(d: Daemon) -> bool:
    return d.store.gauge_value(m.PROBE_UP, ("db",)) == 1.0


async def test_readme_role_recipe_holds_with_five_instances(pg_factory: PGFactory) -> None:
    """The README's monitoring role, CONNECTION LIMIT as written, as collect.dsn of 5 instances: all work."""
    pg = pg_factory()
    create, grant = _recipe()
    limit = int(re.search(r"CONNECTION LIMIT (\d+)", create).group(1))  # type: ignore[union-attr]
    pg.cluster.psql(create.replace("'change-me'", f"'{SENTINEL}'"))
    pg.cluster.psql(grant)
    monitor_dsn = pg.cluster.dsn("dbwatch", SENTINEL, "appdb")
    target = {"name": "db", "dsn": pg.dsn, "interval": 1.0, "timeout": 0.5, "collect": {"dsn": monitor_dsn}}
    admin = await asyncpg.connect(**pg.cluster.superuser_kwargs())
    stack = contextlib.AsyncExitStack()
    try:
        ds: list[Daemon] = [await stack.enter_async_context(running({"targets": [target]})) for _ in range(5)]

        def collecting() -> list[float]:  # -1: not reported yet
            values = (d.store.gauge_value(m.DATABASE_WIDE_COLLECTING, ("db", "auto")) for d in ds)
            return [-1.0 if v is None else v for v in values]

        await eventually(lambda: sorted(collecting()) == [0.0, 0.0, 0.0, 0.0, 1.0], timeout=10)
        holder = ds[collecting().index(1.0)]
        await eventually(lambda: holder.store.gauge_value(m.PG_ALL_SESSIONS_VISIBLE, ("db",)) == 1.0)
        for d in ds:
            await eventually(functools.partial(_probe_up, d))
            for job in ("pg_activity", "pg_database"):
                assert d.store.counter_value(m.JOB_RUNS, (job, "db", "error")) == 0

        # One persistent session; a standby's brief take-over attempt (it saw the lock free, connected, lost the
        # race and left) may add one for a moment, within the role's limit.
        async def used() -> int:
            return int(await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE usename = 'dbwatch'"))

        seen: list[int] = []
        for _ in range(20):
            seen.append(await used())
            await asyncio.sleep(0.1)
        assert max(seen) <= limit, seen
        await eventually(lambda: _is(used(), 1))
    finally:
        await stack.aclose()
        await admin.close()
