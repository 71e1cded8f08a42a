"""The PostgreSQL probe against real servers and real sockets: phases and every failure reason."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import asyncpg
import pytest

from dbwatch.config import from_mapping
from dbwatch.errors import Reason, classify
from dbwatch.pgcluster import free_port
from dbwatch.probes.postgres import probe_postgres
from tests.helpers import PG, PGFactory


def target(dsn: str, timeout: float = 2.0) -> object:
    return from_mapping({"targets": [{"name": "t", "dsn": dsn, "timeout": timeout, "interval": 10}]}).targets[0]


async def reason_of(dsn: str, timeout: float = 2.0) -> Reason:
    t = target(dsn, timeout)
    try:
        async with asyncio.timeout(timeout):
            await probe_postgres(t, timeout)  # type: ignore[arg-type]
    except Exception as exc:
        return classify(exc)
    raise AssertionError("probe unexpectedly succeeded")


async def test_probe_up_reports_three_phases(pg: PG) -> None:
    """A good DSN yields positive connect, startup and query timings."""
    phases = await probe_postgres(target(pg.dsn), 5)  # type: ignore[arg-type]
    assert set(phases) == {"connect", "startup", "query"}
    assert all(0 < v < 5 for v in phases.values())


@pytest.mark.parametrize(
    ("scheme", "query"),
    [
        ("postgresql+asyncpg", "prepared_statement_cache_size=0"),
        ("postgresql+psycopg", "connect_timeout=5"),
        ("postgresql+psycopg_async", "application_name=shop"),
    ],
)
async def test_probe_accepts_sqlalchemy_dsn_and_sets_application_name(pg: PG, scheme: str, query: str) -> None:
    """An app's SQLAlchemy URL (asyncpg or psycopg) is accepted as is, and the session says
    application_name=dbwatch."""
    dsn = pg.dsn.replace("postgresql://", scheme + "://") + "?" + query
    conn = await asyncpg.connect(**pg.cluster.superuser_kwargs())
    try:
        await conn.execute("ALTER SYSTEM SET log_connections = on")
        await conn.execute("SELECT pg_reload_conf()")
        t = target(dsn)
        phases = await probe_postgres(t, 5)  # type: ignore[arg-type]
        assert phases["query"] > 0
        # A held dbwatch connection shows its application_name in pg_stat_activity.
        from dbwatch.probes.postgres import connect_kwargs

        held = await asyncpg.connect(**connect_kwargs(t, 5))  # type: ignore[arg-type]
        try:
            names = await conn.fetch("SELECT application_name FROM pg_stat_activity WHERE usename = 'app'")
            assert "dbwatch" in {r["application_name"] for r in names}
        finally:
            await held.close()
    finally:
        await conn.execute("ALTER SYSTEM RESET log_connections")
        await conn.execute("SELECT pg_reload_conf()")
        await conn.close()


async def test_refused_on_closed_port() -> None:
    port = free_port()
    assert await reason_of(f"postgresql://app:pw@127.0.0.1:{port}/x") is Reason.REFUSED


@contextlib.asynccontextmanager
async def silent_listener() -> AsyncIterator[int]:
    """A TCP listener that accepts and never answers."""
    held: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for w in held:
            w.close()
        server.close()
        await server.wait_closed()


async def test_timeout_on_listener_that_never_answers() -> None:
    async with silent_listener() as port:
        assert await reason_of(f"postgresql://app@127.0.0.1:{port}/x?sslmode=disable", timeout=0.5) is Reason.TIMEOUT


async def test_auth_failed_with_wrong_scram_password(pg: PG) -> None:
    dsn = pg.cluster.dsn("app", "wrong-password", "appdb")
    assert await reason_of(dsn) is Reason.AUTH_FAILED


async def test_auth_failed_for_unknown_role(pg: PG) -> None:
    dsn = pg.cluster.dsn("nobody", "whatever", "appdb")
    assert await reason_of(dsn) is Reason.AUTH_FAILED


async def test_database_missing(pg: PG) -> None:
    assert await reason_of(pg.cluster.dsn("app", pg.password, "no_such_db")) is Reason.DATABASE_MISSING


async def test_too_many_connections(pg_factory: PGFactory) -> None:
    """Hold every non-reserved slot; the next probe is classified too_many_connections."""
    small = pg_factory(max_connections=6)  # 3 reserved for superusers: 3 for everyone else
    held = []
    try:
        with contextlib.suppress(asyncpg.TooManyConnectionsError):
            for _ in range(6):
                held.append(await asyncpg.connect(small.dsn))
        assert len(held) == 3
        assert await reason_of(small.dsn) is Reason.TOO_MANY_CONNECTIONS
    finally:
        for c in held:
            await c.close()


async def test_dns_failure() -> None:
    assert await reason_of("postgresql://app@no-such-host.invalid:5432/x") is Reason.DNS


async def test_ssl_required_but_server_has_none(pg: PG) -> None:
    dsn = pg.dsn + "?sslmode=require"
    assert await reason_of(dsn) is Reason.SSL


async def test_shutting_down_and_starting_up_are_classified(pg_factory: PGFactory) -> None:
    """A server in smart shutdown with a session open refuses new ones as shutting down."""
    c = pg_factory()
    holder = await asyncpg.connect(c.dsn)
    try:
        loop = asyncio.get_running_loop()
        stopper = loop.run_in_executor(None, c.cluster.stop, "smart")
        await asyncio.sleep(0)

        async def shutting() -> bool:
            try:
                await probe_postgres(target(c.dsn), 2)  # type: ignore[arg-type]
            except Exception as exc:
                return classify(exc) is Reason.SHUTTING_DOWN
            return False

        from tests.helpers import eventually

        await eventually(shutting, timeout=10)
    finally:
        await holder.close()
        await stopper
    assert classify(asyncpg.CannotConnectNowError("the database system is starting up")) is Reason.STARTING_UP


@pytest.mark.parametrize("reason", list(Reason))
def test_reason_set_is_closed_and_snake_case(reason: Reason) -> None:
    assert reason.value.replace("_", "").isalpha()
    assert reason.value == reason.value.lower()


def test_unknown_errors_are_other() -> None:
    assert classify(RuntimeError("boom")) is Reason.OTHER
    assert classify(socket.gaierror(-2, "Name or service not known")) is Reason.DNS
