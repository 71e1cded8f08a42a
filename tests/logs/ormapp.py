"""A small async SQLAlchemy app whose functions hit real ORM/driver errors; `# at:` marks the expected app line."""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, String, func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.pool import NullPool


class Base(DeclarativeBase):
    """Schema of the test app."""


class Account(Base):
    """A row whose updated_at is server-generated, so a commit expires it."""

    __tablename__ = "logtest_accounts"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200))
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


def marker_line(tag: str, path: str = __file__) -> int:
    """The line of a file (this one by default) that carries `# at:<tag>`."""
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.rstrip().endswith(f"# at:{tag}"):
            return i
    raise LookupError(tag)


async def setup(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.drop_all)
        await conn.run_sync(Base.metadata.create_all)
        await conn.execute(text("INSERT INTO logtest_accounts (id, email) VALUES (1, 'a@x'), (2, 'b@x')"))


async def missing_greenlet(engine: AsyncEngine) -> str:
    factory = async_sessionmaker(engine, expire_on_commit=True)
    async with factory() as session:
        acct = (await session.execute(select(Account).where(Account.id == 1))).scalar_one()
        acct.email = "a@x"
        await session.commit()
        return acct.updated_at.isoformat()  # at:missing_greenlet


async def detached(engine: AsyncEngine) -> str:
    factory = async_sessionmaker(engine, expire_on_commit=False)
    async with factory() as session:
        acct = (await session.execute(select(Account).where(Account.id == 1))).scalar_one()
        session.expire(acct, ["email"])
    return acct.email  # at:lazy_load


async def pool_timeout(dsn: str) -> None:
    engine = create_async_engine(dsn, pool_size=1, max_overflow=0, pool_timeout=0.3)
    try:
        async with engine.connect(), engine.connect():  # at:pool_timeout
            pass
    finally:
        await engine.dispose()


async def _run(driver: Any, sql: str) -> None:
    await driver.execute(sql)  # at:concurrent_operation


async def concurrent(dsn: str) -> None:
    """Two coroutines on one asyncpg connection (the pooled connection's driver connection, shared by two tasks)."""
    engine = create_async_engine(dsn, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            driver = raw.driver_connection
            first = asyncio.ensure_future(_run(driver, "SELECT pg_sleep(0.2)"))
            try:
                await _run(driver, "SELECT 1")
            finally:
                await first
    finally:
        await engine.dispose()


async def too_many(dsn: str, n: int) -> None:
    engine = create_async_engine(dsn, poolclass=NullPool)
    conns = []
    try:
        for _ in range(n):
            conns.append(await engine.connect())  # at:too_many_connections
    finally:
        for c in conns:
            await c.close()
        await engine.dispose()


async def statement_timeout(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.execute(text("SET statement_timeout = '100ms'"))
        await conn.execute(text("SELECT pg_sleep(2)"))  # at:statement_timeout


_TOUCH = text("UPDATE logtest_accounts SET email = email WHERE id = :i")


async def _lock(engine: AsyncEngine, first: int, second: int, ready: asyncio.Barrier) -> None:
    async with engine.begin() as conn:
        await conn.execute(_TOUCH, {"i": first})
        await ready.wait()
        await conn.execute(_TOUCH, {"i": second})  # at:deadlock


async def deadlock(engine: AsyncEngine) -> None:
    ready = asyncio.Barrier(2)
    await asyncio.gather(_lock(engine, 1, 2, ready), _lock(engine, 2, 1, ready))


async def idle_in_transaction(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.execute(text("SET idle_in_transaction_session_timeout = '200ms'"))
        await conn.execute(text("BEGIN"))
        await conn.execute(text("SELECT 1"))
        time.sleep(0.6)  # noqa: ASYNC251 - the bug itself: blocking in a transaction, the server's FATAL unread
        await conn.execute(text("SELECT 1"))  # at:idle_in_transaction_timeout


async def terminated(engine: AsyncEngine, killer: AsyncEngine) -> None:
    async with engine.connect() as conn:
        pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()

        async def kill() -> None:
            await asyncio.sleep(0.2)
            async with killer.connect() as k:
                await k.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})

        task = asyncio.create_task(kill())
        try:
            await conn.execute(text("SELECT pg_sleep(3)"))  # at:connection_closed
        finally:
            await task


async def refused(dsn: str) -> None:
    engine = create_async_engine(dsn)
    try:
        async with engine.connect():  # at:connection_refused
            pass
    finally:
        await engine.dispose()


async def group_missing_greenlet(engine: AsyncEngine) -> None:
    async with asyncio.TaskGroup() as tg:
        tg.create_task(missing_greenlet(engine))
        tg.create_task(asyncio.sleep(30))  # a sibling the TaskGroup cancels


async def session_of(engine: AsyncEngine) -> AsyncSession:
    return async_sessionmaker(engine)()


async def _save(session: AsyncSession) -> None:
    await session.commit()  # at:concurrent_session


async def concurrent_session(engine: AsyncEngine) -> None:
    """Two coroutines commit one AsyncSession (the bug): the second finds the first still at work."""
    async with async_sessionmaker(engine)() as session:
        session.add_all([Account(id=10, email="c@x"), Account(id=11, email="d@x")])
        tasks = [asyncio.ensure_future(_save(session)) for _ in range(2)]
        try:
            await asyncio.gather(*tasks)
        finally:
            await asyncio.wait(tasks)


async def unique(engine: AsyncEngine) -> None:
    async with async_sessionmaker(engine)() as session:
        session.add(Account(id=1, email="dup@x"))
        await session.commit()  # at:unique


async def leak(engine: AsyncEngine) -> None:
    """A checked-out connection dropped without close(); SQLAlchemy's pool logs it when the GC collects it."""
    conn = await engine.connect()
    await conn.execute(text("SELECT 1"))
    del conn
    gc.collect()


async def terminate_cancelled(engine: AsyncEngine, stop: Callable[[int], Awaitable[None]]) -> None:
    """The task is cancelled while the pool terminates its invalidated connection (the server does not answer)."""
    async with engine.connect() as conn:
        pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        await stop(pid)
        await conn.invalidate()  # at:terminate_cancelled


_PAGES = text("SELECT count(*) FROM pg_class WHERE relpages >= :n")


async def _pages(conn: AsyncConnection, times: int) -> None:
    for _ in range(times):  # psycopg prepares a statement from its 5th execution on, asyncpg at once
        await conn.execute(_PAGES, {"n": 0})  # at:prepared_twice
        await conn.commit()


async def prepared_missing(url: str) -> None:
    """Through a transaction-mode pgbouncer: the next transaction runs on another server session than the one the
    driver prepared its statement on (a second client holds the first)."""
    a, b = create_async_engine(url, poolclass=NullPool), create_async_engine(url, poolclass=NullPool)
    try:
        async with a.connect() as first:
            await _pages(first, 6)
            async with b.connect() as second:
                await second.execute(text("SELECT 1"))  # in a transaction on the server session `first` used
                await first.execute(_PAGES, {"n": 0})  # at:prepared_missing
    finally:
        await a.dispose()
        await b.dispose()


async def prepared_twice(url: str) -> None:
    """Through a transaction-mode pgbouncer: two clients whose driver names statements per connection (psycopg:
    `_pg3_0`, ...) prepare on the same server session."""
    a, b = create_async_engine(url, poolclass=NullPool), create_async_engine(url, poolclass=NullPool)
    try:
        async with a.connect() as first, b.connect() as second:
            await _pages(first, 6)
            await _pages(second, 6)
    finally:
        await a.dispose()
        await b.dispose()
