"""pgbouncer probe: a fresh connection to the admin console, `SHOW VERSION`, close, timed by phase.

The console speaks only the simple query protocol and rejects `BEGIN`, so this uses psycopg in autocommit mode
(it sends a parameterless statement as a simple Query); asyncpg can connect but always fetches rows with the
extended protocol, which the console refuses.
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar, Final

from dbwatch.config import Target
from dbwatch.errors import Reason, classify
from dbwatch.probes.base import Rider
from dbwatch.probes.postgres import APPLICATION_NAME

if TYPE_CHECKING:
    import psycopg

__all__ = ["PHASES", "PgbouncerProbe", "connect_pgbouncer", "probe_pgbouncer"]

# startup: TCP connect, TLS and authentication together (libpq does them in one call).
PHASES: Final = ("startup", "query")


async def connect_pgbouncer(target: Target, timeout: float) -> psycopg.AsyncConnection[Any]:
    """An autocommit psycopg connection to the admin console; the password is revealed only here."""
    import psycopg  # noqa: PLC0415 - psycopg (about 10 MiB) is loaded only by a config with a pgbouncer target

    dsn = target.dsn
    kwargs: dict[str, Any] = {
        "host": dsn.host,
        "port": dsn.port,
        "user": dsn.user,
        "dbname": dsn.database or "pgbouncer",
        "application_name": APPLICATION_NAME,
        "connect_timeout": max(1, round(timeout)),
        "sslmode": dsn.param("sslmode"),
        "sslrootcert": dsn.param("sslrootcert"),
        "sslcert": dsn.param("sslcert"),
        "sslkey": dsn.param("sslkey"),
    }
    if dsn.password:
        kwargs["password"] = dsn.password.reveal()
    return await psycopg.AsyncConnection.connect(
        autocommit=True, prepare_threshold=None, **{k: v for k, v in kwargs.items() if v is not None}
    )


async def probe_pgbouncer(target: Target, timeout: float) -> dict[str, float]:
    """Connect, `SHOW VERSION`, close; seconds per phase."""
    t0 = time.perf_counter()
    conn = await connect_pgbouncer(target, timeout)
    t1 = time.perf_counter()
    try:
        cur = await conn.execute("SHOW VERSION", prepare=False)
        await cur.fetchall()
        t2 = time.perf_counter()
    finally:
        await conn.close()
    return {"startup": t1 - t0, "query": t2 - t1}


class PgbouncerProbe:
    """The `pgbouncer` kind: `probe_pgbouncer` on the target's admin console (nothing rides on it)."""

    name: ClassVar[str] = "pgbouncer"
    phases: ClassVar[tuple[str, ...]] = PHASES
    reasons: ClassVar[type[StrEnum]] = Reason

    def __init__(self, target: Target, rider: Rider | None = None) -> None:
        self._target = target

    async def probe(self, timeout: float) -> dict[str, float]:
        """Connect, `SHOW VERSION`, close; seconds per phase."""
        return await probe_pgbouncer(self._target, timeout)

    def classify(self, exc: BaseException) -> Reason:
        """The shared reason set (dbwatch.errors)."""
        return classify(exc)
