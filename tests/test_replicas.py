"""Five dbwatch processes on one real PostgreSQL, as five sidecars of one app (issue 13, "Shown by").

Held sessions in mixed states and one real blocked session; each process has its own identity (port, pod name as
application_name). Across the five scrapes each database-wide series appears exactly once and equals
pg_stat_activity; one persistent dbwatch session exists; a SIGKILLed collector is replaced within one interval plus
the timeout; the README's monitoring role with its CONNECTION LIMIT serves all five; each instance's own-sessions
view matches its own connections; /readyz stays 200 through a database stop, except where gating was opted in.
"""

from __future__ import annotations

import asyncio
import functools
import re
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from tests.faults.harness import DaemonProcess
from tests.helpers import REPO, SENTINEL, PGFactory, eventually, sample

N = 5
INTERVAL, TIMEOUT = 1.0, 0.5
PERSISTENT = "backend_start < now() - interval '1.5 seconds'"
# What each "pod" holds: (idle, idle in transaction, active); pod-4 holds the lock that pod-5's active one waits on.
HELD = {"pod-1": (2, 0, 0), "pod-2": (0, 1, 0), "pod-3": (1, 0, 1), "pod-4": (0, 1, 0), "pod-5": (0, 0, 1)}


def _recipe(password: str) -> list[str]:
    text = (REPO / "README.md").read_text()
    create = re.search(r"^CREATE ROLE dbwatch [^;]*;", text, re.M)
    assert create
    return [create.group(0).replace("'change-me'", f"'{password}'"), "GRANT pg_monitor TO dbwatch;"]


@asynccontextmanager
async def _held_sessions(pg: Any) -> AsyncIterator[list[asyncpg.Connection]]:
    """The five pods' app sessions; pod-5's active query is blocked by pod-4's open transaction."""
    conns: list[asyncpg.Connection] = []
    tasks: list[asyncio.Task[Any]] = []
    try:
        for app, (idle, xact, active) in HELD.items():
            for kind in ["idle"] * idle + ["xact"] * xact + ["active"] * active:
                c = await asyncpg.connect(pg.dsn, server_settings={"application_name": app})
                conns.append(c)
                if kind == "xact" and app == "pod-4":
                    await c.execute("BEGIN; LOCK TABLE held IN ACCESS EXCLUSIVE MODE")
                elif kind == "xact":
                    await c.execute("BEGIN; SELECT 1")
                elif kind == "active" and app == "pod-5":
                    tasks.append(asyncio.create_task(c.execute("SELECT count(*) FROM held")))
                elif kind == "active":
                    tasks.append(asyncio.create_task(c.execute("SELECT pg_sleep(60)")))
        yield conns
    finally:
        for c in conns:
            c.terminate()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _scrape(d: DaemonProcess) -> str:
    status, body = d.get("/metrics")
    assert status == 200
    return body


def _series(body: str) -> set[str]:
    """Database-wide series (name and labels) in a scrape."""
    return {ln.rsplit(" ", 1)[0] for ln in body.splitlines() if ln.startswith("dbwatch_pg_")}


async def _holder(ds: list[DaemonProcess]) -> DaemonProcess | None:
    """The one live instance that collects, once exactly one says so and only its scrape has database-wide series."""
    live = [d for d in ds if d.alive()]
    bodies = await asyncio.gather(*(asyncio.to_thread(_scrape, d) for d in live))
    flags = [sample(b, "dbwatch_database_wide_collecting", {"target": "db"}) for b in bodies]
    with_series = [d for d, b in zip(live, bodies, strict=True) if _series(b)]
    holders = [d for d, f in zip(live, flags, strict=True) if f == 1.0]
    return holders[0] if len(holders) == 1 and with_series == holders else None


async def test_five_sidecars_on_one_database(pg_factory: PGFactory) -> None:
    pg = pg_factory()
    for sql in (*_recipe(SENTINEL), "CREATE TABLE held (x int)", "ALTER TABLE held OWNER TO app"):
        pg.cluster.psql(sql, database="appdb" if "held" in sql else "postgres")
    monitor_dsn = pg.cluster.dsn("dbwatch", SENTINEL, "appdb")
    admin = await asyncpg.connect(**{**pg.cluster.superuser_kwargs(), "database": "appdb"})

    def config(i: int) -> dict[str, Any]:
        target = {
            "name": "db",
            "dsn": pg.dsn,
            "interval": INTERVAL,
            "timeout": TIMEOUT,
            "own_sessions": {"application_name": f"pod-{i}"},
            "collect": {"dsn": monitor_dsn},
            **({"gate_readiness": True} if i == N else {}),
        }
        return {"log": {"level": "debug"}, "targets": [target]}

    ds = [DaemonProcess(config(i)) for i in range(1, N + 1)]
    try:
        async with _held_sessions(pg):
            for d in ds:
                await asyncio.to_thread(d.start)
            holder = await eventually(lambda: _holder(ds), timeout=15)

            # Each database-wide series exactly once across the five scrapes, equal to pg_stat_activity.
            async def settled() -> str | None:
                body = await asyncio.to_thread(_scrape, holder)
                return body if sample(body, "dbwatch_pg_blocked_sessions", {"datname": "appdb"}) == 1.0 else None

            body = await eventually(settled, timeout=10)
            others = [_series(await asyncio.to_thread(_scrape, d)) for d in ds if d is not holder]
            assert all(not s for s in others)
            server = await admin.fetch(
                "SELECT application_name, state, count(*) AS n FROM pg_stat_activity"
                " WHERE application_name LIKE 'pod-%' GROUP BY 1, 2"
            )
            assert server
            for row in server:
                labels = {"datname": "appdb", "usename": "app", "application_name": row["application_name"]}
                assert sample(body, "dbwatch_pg_sessions", {**labels, "state": row["state"]}) == row["n"], row
            blocked = await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE cardinality(pg_blocking_pids(pid)) > 0"
            )
            assert blocked == 1
            assert sample(body, "dbwatch_pg_all_sessions_visible", {"target": "db"}) == 1.0

            # One persistent dbwatch session in total, on the monitoring role.
            sessions = f"SELECT usename FROM pg_stat_activity WHERE application_name = 'dbwatch' AND {PERSISTENT}"  # noqa: S608
            assert [r["usename"] for r in await eventually(lambda: admin.fetch(sessions))] == ["dbwatch"]

            # Each instance's own sessions: its own pod's connections, by state.
            for i, d in enumerate(ds, 1):
                idle, xact, active = HELD[f"pod-{i}"]
                want = {"idle": idle, "idle in transaction": xact, "active": active}

                def own(d: DaemonProcess = d, want: dict[str, int] = want) -> bool:
                    text = _scrape(d)
                    return all(sample(text, "dbwatch_own_sessions", {"state": s}) == n for s, n in want.items())

                await eventually(functools.partial(asyncio.to_thread, own), timeout=5)

            # SIGKILL the collector: another takes over within one interval plus the timeout.
            assert holder.proc is not None
            holder.proc.send_signal(signal.SIGKILL)
            holder.proc.wait(5)
            t0 = time.monotonic()
            successor = await eventually(lambda: _holder(ds), timeout=10)
            took = time.monotonic() - t0
            assert successor is not holder
            assert took <= INTERVAL + TIMEOUT + 1.0, took  # + scrapes of four processes and scheduling slack
            # The killed one comes back as a standby: still one persistent session.
            await asyncio.to_thread(holder.start)
            assert await eventually(lambda: _holder(ds), timeout=10) is successor
            assert [r["usename"] for r in await eventually(lambda: admin.fetch(sessions))] == ["dbwatch"]

        # /readyz through a database stop: 200 by default, 503 only where gate_readiness was opted in.
        await admin.close()
        pg.cluster.stop("fast")
        gated = ds[N - 1]
        await eventually(lambda: asyncio.to_thread(lambda: gated.get("/readyz")[0] == 503), timeout=10)
        for d in ds[: N - 1]:
            assert d.get("/readyz")[0] == 200
        pg.cluster.start()
    finally:
        if not admin.is_closed():
            await admin.close()
        for d in ds:
            d.cleanup()
