"""PostgreSQL probe: a fresh connection, `SELECT 1`, close, timed by phase.

Phase timings come from asyncpg's own connect path: asyncpg takes a `loop` argument, and we hand it a
thin proxy of the running loop whose `create_connection` is timed. That gives the TCP connect (DNS
included) without a second connection to the server; everything after it up to a usable connection
(TLS negotiation, startup, authentication) is `startup`. A separate raw socket connect would cost the
server an extra backend fork and an "incomplete startup packet" log line per probe.
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, ClassVar, Final

import asyncpg

from dbwatch.config import Target
from dbwatch.errors import Reason, classify
from dbwatch.probes.base import Rider
from dbwatch.secret import DSN

__all__ = ["APPLICATION_NAME", "PHASES", "PostgresProbe", "connect_kwargs", "probe_postgres"]

APPLICATION_NAME: Final = "dbwatch"
PHASES: Final = ("connect", "startup", "query")


class _TimedLoop:
    """Delegates to the running loop, timing the first transport connect."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.connect_seconds: float | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)

    async def _timed(self, coro: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return await coro
        finally:
            if self.connect_seconds is None:
                self.connect_seconds = time.perf_counter() - t0

    async def create_connection(self, *args: Any, **kwargs: Any) -> Any:
        return await self._timed(self._loop.create_connection(*args, **kwargs))

    async def create_unix_connection(self, *args: Any, **kwargs: Any) -> Any:
        return await self._timed(self._loop.create_unix_connection(*args, **kwargs))


def connect_kwargs(
    target: Target, timeout: float, *, settings: Mapping[str, str] | None = None, dsn: DSN | None = None
) -> dict[str, Any]:
    """asyncpg.connect() arguments for a target (or another DSN of it); the password is revealed only here."""
    dsn = dsn or target.dsn
    tls = {k: v for k, v in dsn.params if k in ("sslrootcert", "sslcert", "sslkey")}
    kwargs: dict[str, Any] = {
        "dsn": "postgresql://" + ("/?" + urllib.parse.urlencode(tls) if tls else ""),
        "host": dsn.host,
        "port": dsn.port,
        "user": dsn.user,
        "database": dsn.database,
        "timeout": timeout,
        "statement_cache_size": 0,
        "server_settings": {"application_name": APPLICATION_NAME, **(settings or {})},
    }
    if dsn.password:
        kwargs["password"] = dsn.password.reveal()
    sslmode = dsn.param("sslmode")
    if sslmode:
        kwargs["ssl"] = sslmode
    return {k: v for k, v in kwargs.items() if v is not None}


async def probe_postgres(target: Target, timeout: float, rider: Rider | None = None) -> dict[str, float]:
    """Connect, run one statement, close; seconds per phase.

    The statement is `SELECT 1` over the simple protocol (one round trip), or, when a rider asks for columns (the
    database-wide lock check), a SELECT of them: the probe's connection answers it, no second connection is opened.
    """
    loop = _TimedLoop(asyncio.get_running_loop())
    columns = rider.columns() if rider is not None else None
    t0 = time.perf_counter()
    conn = await asyncpg.connect(loop=loop, **connect_kwargs(target, timeout))
    t1 = time.perf_counter()
    row = None
    try:
        if columns is None:
            await conn.execute("SELECT 1")
        else:
            row = await conn.fetchrow("SELECT " + columns, timeout=timeout)
        t2 = time.perf_counter()
    finally:
        await conn.close(timeout=timeout)
    if rider is not None and row is not None:
        rider.seen(dict(row))
    connect = loop.connect_seconds if loop.connect_seconds is not None else 0.0
    return {"connect": connect, "startup": max(0.0, (t1 - t0) - connect), "query": t2 - t1}


class PostgresProbe:
    """The `postgres` kind: `probe_postgres` on the target, with the riders of its one statement."""

    name: ClassVar[str] = "postgres"
    phases: ClassVar[tuple[str, ...]] = PHASES
    reasons: ClassVar[type[StrEnum]] = Reason

    def __init__(self, target: Target, rider: Rider | None = None) -> None:
        self._target = target
        self._rider = rider

    async def probe(self, timeout: float) -> dict[str, float]:
        """Connect, run one statement, close; seconds per phase."""
        return await probe_postgres(self._target, timeout, self._rider)

    def classify(self, exc: BaseException) -> Reason:
        """The shared reason set (dbwatch.errors)."""
        return classify(exc)
