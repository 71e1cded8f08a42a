"""The hook on real SQLAlchemy async engines against the test PostgreSQL, reported to a live ingest."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
import weakref
from pathlib import Path

import pytest
import sqlalchemy
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.engine import URL, Engine
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool, QueuePool, StaticPool

from dbwatch import metrics as m
from dbwatch.hook import instrument
from dbwatch.hook.sqlalchemy import state_of
from tests.helpers import PG, eventually
from tests.hook.conftest import Sink, url_for

APP = "shop"


def _hook(engine: AsyncEngine | Engine, sink: Sink, name: str = "primary", **kw: object) -> None:
    assert instrument(engine, name, app=APP, sidecar=sink.addr, interval=0.05, **kw)  # type: ignore[arg-type]


async def test_queuepool_waits_and_timeouts_counted(sink: Sink, sa_url: URL) -> None:
    """QueuePool(size=2, max_overflow=0): 5 concurrent holders -> 2 check out, 3 wait, then time out."""
    engine = create_async_engine(sa_url, pool_size=2, max_overflow=0, pool_timeout=1.0)
    _hook(engine, sink)
    release = asyncio.Event()
    outcomes: list[str] = []

    async def holder() -> None:
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
                await release.wait()
            outcomes.append("ok")
        except sa_exc.TimeoutError:
            outcomes.append("timeout")

    tasks = [asyncio.create_task(holder()) for _ in range(5)]
    labels = (APP, "primary")
    await eventually(lambda: sink.gauge(m.APP_POOL_WAITING, *labels) == 3, timeout=10)
    assert sink.gauge(m.APP_POOL_CHECKED_OUT, *labels) == 2
    await eventually(lambda: len(outcomes) == 3, timeout=10)
    release.set()
    await asyncio.gather(*tasks)
    assert sorted(outcomes) == ["ok", "ok", "timeout", "timeout", "timeout"]
    await eventually(lambda: sink.counter(m.APP_POOL_CHECKINS, *labels) == 2, timeout=10)
    assert sink.counter(m.APP_POOL_CHECKOUT_TIMEOUTS, *labels) == 3
    assert sink.counter(m.APP_POOL_CHECKOUTS, *labels) == 2
    assert sink.counter(m.APP_POOL_CONNECTS, *labels, "ok") == 2
    count, total = sink.hist(m.APP_POOL_CHECKOUT_WAIT, *labels)
    assert count == 5
    assert total >= 3 * 1.0  # the three that timed out each waited the full pool timeout
    held_count, held_total = sink.hist(m.APP_POOL_HELD, *labels)
    assert held_count == 2
    assert held_total > 0
    age_count, age_total = sink.hist(m.APP_POOL_CONNECTION_AGE, *labels)
    assert age_count == 2  # connection age at each checkin
    assert age_total >= held_total  # a connection is at least as old as the checkout that held it
    assert sink.counter(m.APP_POOL_RESETS, *labels) == 2
    await eventually(lambda: sink.gauge(m.APP_POOL_WAITING, *labels) == 0)
    assert sink.gauge(m.APP_POOL_CHECKED_OUT, *labels) == 0
    assert sink.gauge(m.APP_POOL_IDLE, *labels) == 2
    assert sink.gauge(m.APP_POOL_SETTING_CONNECTIONS, *labels, "size") == 2
    assert sink.gauge(m.APP_POOL_SETTING_SECONDS, *labels, "timeout") == 1.0
    assert sink.gauge(m.APP_POOL_INFO, *labels, "AsyncAdaptedQueuePool") == 1
    assert sink.gauge(m.APP_POOL_FINDING, *labels, "static_pool_async") == 0
    await engine.dispose()


async def test_static_pool_on_async_engine_flagged_and_logged_once(
    sink: Sink, sa_url: URL, caplog: pytest.LogCaptureFixture
) -> None:
    """StaticPool on an async engine (the seed outage's pool) -> finding gauge 1, one warning however often used."""
    caplog.set_level(logging.WARNING, logger="dbwatch.hook")
    engine = create_async_engine(sa_url, poolclass=StaticPool)
    _hook(engine, sink, "static")
    for _ in range(3):
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    await eventually(lambda: sink.gauge(m.APP_POOL_FINDING, APP, "static", "static_pool_async") == 1)
    assert sink.gauge(m.APP_POOL_INFO, APP, "static", "StaticPool") == 1
    warnings = [r for r in caplog.records if "StaticPool" in r.getMessage()]
    assert len(warnings) == 1
    await engine.dispose()


async def test_expire_on_commit_flagged(sink: Sink, sa_url: URL) -> None:
    """async_sessionmaker's default expire_on_commit=True is flagged; expire_on_commit=False is not."""
    bad = create_async_engine(sa_url)
    good = create_async_engine(sa_url)
    _hook(bad, sink, "bad")
    _hook(good, sink, "good")
    for engine, expire in ((bad, True), (good, False)):
        factory = async_sessionmaker(engine, expire_on_commit=expire)
        async with factory() as session:
            await session.execute(text("SELECT 1"))
            await session.commit()
    await eventually(lambda: sink.gauge(m.APP_POOL_FINDING, APP, "bad", "expire_on_commit") == 1)
    assert sink.gauge(m.APP_POOL_FINDING, APP, "good", "expire_on_commit") == 0
    await bad.dispose()
    await good.dispose()


async def test_nullpool_connects_counted_and_flagged_under_load(sink: Sink, sa_url: URL) -> None:
    """NullPool: every checkout connects; 25 of them make the null_pool_under_load finding hold."""
    engine = create_async_engine(sa_url, poolclass=NullPool)
    _hook(engine, sink, "nullpool")
    for _ in range(25):
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    labels = (APP, "nullpool")
    await eventually(lambda: sink.counter(m.APP_POOL_CHECKINS, *labels) == 25)
    assert sink.counter(m.APP_POOL_CONNECTS, *labels, "ok") == 25
    assert sink.counter(m.APP_POOL_CHECKOUTS, *labels) == 25
    assert sink.hist(m.APP_POOL_CONNECT_DURATION, *labels)[0] == 25
    await eventually(lambda: sink.gauge(m.APP_POOL_FINDING, *labels, "null_pool_under_load") == 1)
    await engine.dispose()


async def test_queuepool_under_the_same_load_is_not_flagged(sink: Sink, sa_url: URL) -> None:
    """The same 25 checkouts through a QueuePool connect once: no null_pool_under_load."""
    engine = create_async_engine(sa_url)
    _hook(engine, sink, "pooled")
    for _ in range(25):
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    labels = (APP, "pooled")
    await eventually(lambda: sink.counter(m.APP_POOL_CHECKINS, *labels) == 25)
    assert sink.counter(m.APP_POOL_CONNECTS, *labels, "ok") == 1
    assert sink.gauge(m.APP_POOL_FINDING, *labels, "null_pool_under_load") == 0
    await engine.dispose()


async def test_pre_ping_off_with_recycle_beyond_server_idle_timeout_flagged(sink: Sink, sa_url: URL) -> None:
    """idle_session_timeout=60s on the server, pre_ping off, recycle never -> flagged; with pre_ping -> not."""
    settings: dict[str, object] = (
        {"server_settings": {"idle_session_timeout": "60000"}}
        if sa_url.get_backend_name() == "postgresql" and sa_url.get_driver_name() == "asyncpg"
        else {"options": "-c idle_session_timeout=60000"}  # libpq (psycopg): startup options
    )
    risky = create_async_engine(sa_url, connect_args=settings)
    safe = create_async_engine(sa_url, connect_args=settings, pool_pre_ping=True)
    _hook(risky, sink, "risky")
    _hook(safe, sink, "safe")
    for engine in (risky, safe):
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    await eventually(lambda: sink.gauge(m.APP_POOL_FINDING, APP, "risky", "pre_ping_off_recycle") == 1)
    assert sink.gauge(m.APP_POOL_FINDING, APP, "safe", "pre_ping_off_recycle") == 0
    assert state_of(risky).server_idle_timeout == 60.0  # type: ignore[union-attr]
    await risky.dispose()
    await safe.dispose()


async def test_invalidations_resets_and_dbapi_errors_counted(sink: Sink, sa_url: URL) -> None:
    """Hard and soft invalidations, resets on checkin and DBAPI errors by driver class."""
    engine = create_async_engine(sa_url)
    _hook(engine, sink, "events")
    async with engine.connect() as conn:
        with pytest.raises(sa_exc.ProgrammingError):
            await conn.execute(text("SELECT * FROM no_such_table"))
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        raw.invalidate(soft=True)
    async with engine.connect() as conn:
        await conn.invalidate()
    labels = (APP, "events")
    await eventually(lambda: sink.counter(m.APP_POOL_INVALIDATIONS, *labels, "hard") == 1)
    assert sink.counter(m.APP_POOL_INVALIDATIONS, *labels, "soft") == 1
    # the driver's class: asyncpg's UndefinedTableError, psycopg's UndefinedTable (both the SQLSTATE's name)
    driver_class = "UndefinedTableError" if sa_url.get_driver_name() == "asyncpg" else "UndefinedTable"
    assert sink.counter(m.APP_DBAPI_ERRORS, *labels, driver_class) == 1
    assert sink.counter(m.APP_POOL_CHECKINS, *labels) == 3
    assert sink.counter(m.APP_POOL_RESETS, *labels) == 2  # the hard-invalidated connection came back dead
    await engine.dispose()


def test_a_connection_out_before_instrument_comes_back_uncounted(tmp_path: Path) -> None:
    """Its checkout was not seen, so neither is its checkin: checked_out stays 0 (never -1), checkins match."""
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path}/early.db", poolclass=QueuePool)
    early = engine.connect()
    assert instrument(engine, "early", sidecar="unix:/nonexistent/dbwatch.sock")
    early.close()
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    entry = state_of(engine).report().engines[0]  # type: ignore[union-attr]
    assert (entry.counters["checkouts"], entry.counters["checkins"], entry.counters["resets"]) == (1, 1, 1)
    assert entry.gauges["checked_out"] == 0
    engine.dispose()


def test_resets_never_step_back(tmp_path: Path) -> None:
    """A report between a dead return's two counts (dead first, checkin second) reads resets low; the floor holds."""
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path}/floor.db", poolclass=QueuePool)
    assert instrument(engine, "floor", sidecar="unix:/nonexistent/dbwatch.sock")
    for _ in range(3):
        with engine.connect():
            pass
    state = state_of(engine)
    assert state is not None
    assert state.counters()["resets"] == 3
    state.c["returns_dead"] += 1  # what a report sees mid-checkin of an invalidated connection
    assert state.counters()["resets"] == 3
    engine.dispose()


async def test_idempotent_any_number_of_engines_and_dispose(sink: Sink, sa_url: URL) -> None:
    """instrument() twice (AsyncEngine and its sync_engine) counts once; dispose() keeps the wait timing."""
    engine = create_async_engine(sa_url)
    _hook(engine, sink, "twice")
    _hook(engine, sink, "twice")
    assert instrument(engine.sync_engine, "twice", app=APP, sidecar=sink.addr)
    for _ in range(3):
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    await engine.dispose()  # builds a new pool: the hook must follow it
    for _ in range(2):
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    labels = (APP, "twice")
    await eventually(lambda: sink.counter(m.APP_POOL_CHECKINS, *labels) == 5)
    assert sink.counter(m.APP_POOL_CHECKOUTS, *labels) == 5
    assert sink.hist(m.APP_POOL_CHECKOUT_WAIT, *labels)[0] == 5
    assert sink.counter(m.APP_POOL_CONNECTS, *labels, "ok") == 2
    await engine.dispose()


async def test_no_strong_reference_keeps_a_disposed_engine_alive(sink: Sink, sa_url: URL) -> None:
    """After dispose and del, the engine and its pool are collected; the hook's state says so."""
    engine = create_async_engine(sa_url)
    _hook(engine, sink, "gone")
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
    state = state_of(engine)
    assert state is not None
    await engine.dispose()
    ref = weakref.ref(engine.sync_engine)
    pool_ref = weakref.ref(engine.sync_engine.pool)
    del engine, conn
    gc.collect()
    assert ref() is None
    assert pool_ref() is None
    assert not state.alive()


def test_hook_never_raises_into_the_app(caplog: pytest.LogCaptureFixture) -> None:
    """Bad arguments are logged and refused, never raised; a sync Engine works too."""
    assert instrument(object(), "x") is False
    engine = sqlalchemy.create_engine("sqlite://")
    assert instrument(engine, "bad name!") is False
    assert instrument(engine, "sqlite", sidecar="nonsense") is True  # falls back to the default address
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    assert state_of(engine).counters()["checkouts"] == 1  # type: ignore[union-attr]
    engine.dispose()


async def test_second_live_engine_with_a_taken_name_is_refused(
    sink: Sink, sa_url: URL, caplog: pytest.LogCaptureFixture
) -> None:
    """A second live engine under a name in use is not instrumented (warning, False); once the first is gone it is."""
    caplog.set_level(logging.WARNING, logger="dbwatch.hook")
    first = create_async_engine(sa_url)
    second = create_async_engine(sa_url)
    _hook(first, sink, "dup")
    assert instrument(first, "dup", app=APP, sidecar=sink.addr)  # the same engine again: still fine
    assert not instrument(second, "dup", app=APP, sidecar=sink.addr)
    assert state_of(second) is None
    assert instrument(second, "dup", app="other-app", sidecar=sink.addr)  # another app: another series
    assert len([r for r in caplog.records if "already instrumented as dup" in r.getMessage()]) == 1
    for engine in (first, second):
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    await eventually(lambda: sink.counter(m.APP_POOL_CHECKINS, APP, "dup") == 1)
    await first.dispose()
    del first
    third = create_async_engine(sa_url)
    assert instrument(third, "dup", app=APP, sidecar=sink.addr)  # the name is free once its engine is collected
    await second.dispose()
    await third.dispose()


async def test_overflow_in_use_reported(sink: Sink, sa_url: URL) -> None:
    """QueuePool(size=1, max_overflow=1): two holders put one connection in overflow; none once both are back."""
    engine = create_async_engine(sa_url, pool_size=1, max_overflow=1)
    _hook(engine, sink, "overflow")
    labels = (APP, "overflow")
    async with engine.connect() as a, engine.connect() as b:
        await a.execute(text("SELECT 1"))
        await b.execute(text("SELECT 1"))
        # one report may fall between the overflow connection's creation and its checkout: wait for both
        await eventually(
            lambda: (sink.gauge(m.APP_POOL_OVERFLOW, *labels), sink.gauge(m.APP_POOL_CHECKED_OUT, *labels)) == (1, 2)
        )
    # and one between a checkin's count and the pool closing its overflow connection
    await eventually(
        lambda: (sink.gauge(m.APP_POOL_OVERFLOW, *labels), sink.gauge(m.APP_POOL_CHECKED_OUT, *labels)) == (0, 0)
    )
    assert sink.gauge(m.APP_POOL_SETTING_CONNECTIONS, *labels, "max_overflow") == 1
    await engine.dispose()


def test_sync_psycopg_engine_waits_timeouts_and_errors_counted(sink: Sink, pg: PG) -> None:
    """A sync Engine on psycopg 3 (SQLAlchemy 2.1's default driver): threads wait and time out on a QueuePool of
    two, DBAPI errors are counted by psycopg's class, the idle timeout is read from the server."""
    engine = sqlalchemy.create_engine(url_for(pg, "psycopg"), pool_size=2, max_overflow=0, pool_timeout=0.5)
    _hook(engine, sink, "sync")
    release = threading.Event()
    outcomes: list[str] = []

    def holder() -> None:
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
                release.wait(10)
            outcomes.append("ok")
        except sa_exc.TimeoutError:
            outcomes.append("timeout")

    threads = [threading.Thread(target=holder) for _ in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while len(outcomes) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    release.set()
    for t in threads:
        t.join(10)
    assert sorted(outcomes) == ["ok", "ok", "timeout", "timeout"]
    with engine.connect() as conn, pytest.raises(sa_exc.ProgrammingError):
        conn.execute(text("SELECT * FROM no_such_table"))
    counters = state_of(engine).counters()  # type: ignore[union-attr]
    assert (counters["checkouts"], counters["checkout_timeouts"], counters["connects_ok"]) == (3, 2, 2)
    assert state_of(engine).errors == {"UndefinedTable": 1}  # type: ignore[union-attr]
    assert state_of(engine).server_idle_timeout == 0.0  # type: ignore[union-attr]  # read: off on this server
    engine.dispose()
