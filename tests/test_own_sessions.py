"""Each instance's own sessions, from its probe's one statement, match the connections it owns on a real server."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import asyncpg

from dbwatch import metrics as m
from tests.helpers import Daemon, PGFactory, eventually, running


def _target(dsn: str, own: Any = True) -> dict[str, Any]:
    return {"name": "db", "dsn": dsn, "interval": 0.5, "timeout": 0.4, "own_sessions": own}


def _view(d: Daemon) -> dict[str, float | None]:
    states = ("idle", "idle in transaction", "active")
    return {s: d.store.gauge_value(m.OWN_SESSIONS, ("db", s)) for s in states}


async def _hold(pg: Any, app: str, n_idle: int, n_xact: int, n_active: int) -> list[asyncpg.Connection]:
    conns = [
        await asyncpg.connect(pg.dsn, server_settings={"application_name": app})
        for _ in range(n_idle + n_xact + n_active)
    ]
    for c in conns[n_idle : n_idle + n_xact]:
        await c.execute("BEGIN; SELECT 1")
    return conns


async def test_own_sessions_by_application_name_and_by_client_address(pg_factory: PGFactory) -> None:
    """Two "pods" by application_name see their own states; by client address (all loopback here) both at once."""
    pg = pg_factory()
    a = await _hold(pg, "pod-a", 2, 1, 0)
    b = await _hold(pg, "pod-b", 1, 0, 1)
    busy = asyncio.create_task(b[-1].execute("SELECT pg_sleep(30)"))
    try:
        async with (
            running({"targets": [_target(pg.dsn, {"application_name": "pod-a"})]}) as da,
            running({"targets": [_target(pg.dsn, {"application_name": "pod-b"})]}) as db,
            running({"targets": [_target(pg.dsn)]}) as daddr,
        ):
            want_a = {"idle": 2.0, "idle in transaction": 1.0, "active": 0.0}
            want_b = {"idle": 1.0, "idle in transaction": 0.0, "active": 1.0}
            await eventually(lambda: _view(da) == want_a)
            await eventually(lambda: _view(db) == want_b)
            await eventually(lambda: _view(daddr) == {"idle": 3.0, "idle in transaction": 1.0, "active": 1.0})
            await eventually(lambda: (da.store.gauge_value(m.OWN_OLDEST_IDLE_IN_TRANSACTION, ("db",)) or 0.0) > 0.5)
            assert db.store.gauge_value(m.OWN_OLDEST_IDLE_IN_TRANSACTION, ("db",)) == 0.0
            await a[2].execute("COMMIT")
            await eventually(lambda: _view(da) == {"idle": 3.0, "idle in transaction": 0.0, "active": 0.0})
    finally:
        busy.cancel()
        with contextlib.suppress(BaseException):
            await busy
        for c in a + b:
            c.terminate()
