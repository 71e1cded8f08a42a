"""The one persistent monitoring connection per target, shared by its collectors; reopened with backoff.

Collectors take turns on it (a lock), so however many collections or scrapes happen at once, dbwatch holds at
most one monitoring session per target. Because it stays open, dbwatch keeps reporting sessions while the server
refuses new connections (`max_connections` reached). On PostgreSQL the session runs with a short `lock_timeout`
(set in the startup packet) and `statement_timeout` (one SET per connection), and every query also has a
client-side timeout that cancels it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Final

import asyncpg
import structlog

from dbwatch import metrics as m
from dbwatch.config import Target
from dbwatch.coordination import (
    TRY_LOCK_SQL,
    Coordinator,
    Follower,
    Share,
    Standby,
    keepalive_bound,
    keepalive_settings,
)
from dbwatch.errors import Reason, classify, server_errors
from dbwatch.probes.pgbouncer import connect_pgbouncer
from dbwatch.probes.postgres import connect_kwargs
from dbwatch.store import Store

__all__ = ["BACKOFF_MAX", "BACKOFF_START", "MonitorConnection", "MonitorDown", "Monitors", "session_settings"]

log = structlog.get_logger("dbwatch.monconn")

# First wait after a failed attempt; doubles per failure (with ±20 % jitter) up to BACKOFF_MAX, and never beyond the
# target's collection interval minus its budget (see MonitorConnection._failed).
BACKOFF_START: Final = 0.5
BACKOFF_MAX: Final = 30.0
# Room in asyncpg's per-connection statement cache: every collector's statements, with margin.
PREPARED_STATEMENTS: Final = 16


class MonitorDown(ConnectionError):
    """The monitoring connection is closed and the next attempt is not due yet; the cause is the last failure."""


def session_settings(target: Target) -> dict[str, str]:
    """Timeouts of the PostgreSQL monitoring session, in milliseconds.

    `lock_timeout` (half the collection budget) makes the server itself give up a collection stuck behind a lock (a
    lock storm), so dbwatch never queues behind one. `statement_timeout` (three quarters of the budget) ends any
    other slow statement on the server before the client's cancel at the budget, which needs a connection of its
    own and may not get one when the server is at max_connections.
    """
    budget_ms = max(1, int(target.collect.budget * 1000))
    return {"lock_timeout": str(max(1, budget_ms // 2)), "statement_timeout": str(max(1, budget_ms * 3 // 4))}


async def _connect_postgres(target: Target, timeout: float) -> Any:
    # lock_timeout goes in the startup packet (no statement). statement_timeout is SET once the session is up: a
    # SET leaves the value RESET would restore (configuration file, role, database) to the server, where the
    # pg_activity collector reads it as the server's own; a startup-packet value would take its place.
    settings = session_settings(target)
    statement_timeout = settings.pop("statement_timeout")
    # TCP keepalives on the server's side of the session bound how long a holder cut off by the network keeps the
    # advisory lock (coordination.py); tcp_user_timeout (PostgreSQL 12+) is SET below, as it is unknown before.
    settings |= keepalive_settings(target)
    kwargs = connect_kwargs(target, timeout, settings=settings, dsn=target.collect.dsn)
    # The collectors' few statements are prepared once per connection and re-executed: the server skips parse
    # and plan on every collection (a third of the backend CPU of pg_activity). So a postgres target must be the
    # server itself, not a transaction-pooling pgbouncer in front of it (use a `pgbouncer` target for that).
    kwargs["statement_cache_size"] = PREPARED_STATEMENTS
    conn = await asyncpg.connect(**kwargs)
    sets = f"SET statement_timeout = {int(statement_timeout)}"
    if conn.get_server_version().major >= 12:
        sets += f"; SET tcp_user_timeout = {int(keepalive_bound(target) * 1000)}"
    try:
        await conn.execute(sets, timeout=timeout)
    except BaseException:
        conn.terminate()
        raise
    return conn


def _keeps_connection() -> tuple[type[BaseException], ...]:
    """Errors after which the session is in a known state: the server answered, or a timeout cancelled the query."""
    return (*server_errors(), TimeoutError, asyncio.CancelledError)


# A connection is asyncpg's (postgres targets) or psycopg's (pgbouncer): testing for asyncpg's keeps psycopg unloaded.
def _abort(conn: Any) -> None:
    if isinstance(conn, asyncpg.Connection):
        conn.terminate()
    else:
        conn.pgconn.finish()


def _is_closed(conn: Any) -> bool:
    if isinstance(conn, asyncpg.Connection):
        return bool(conn.is_closed())
    return bool(conn.closed or conn.broken)


async def _close(conn: Any, timeout: float) -> None:
    if not isinstance(conn, asyncpg.Connection):
        with contextlib.suppress(*server_errors(), OSError):
            await conn.close()
        return
    try:
        await conn.close(timeout=timeout)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
        conn.terminate()


_CONNECTORS: Final[dict[str, Callable[[Target, float], Awaitable[Any]]]] = {
    "postgres": _connect_postgres,
    "pgbouncer": connect_pgbouncer,
}


class MonitorConnection:
    """One target's monitoring connection: opened on first use, shared under a lock, reopened with backoff."""

    def __init__(
        self,
        target: Target,
        store: Store,
        clock: Callable[[], float] = time.monotonic,
        coordinator: Share | None = None,
    ) -> None:
        self._target = target
        self._coordinator = coordinator
        self._store = store
        self._clock = clock
        self._connect = _CONNECTORS[target.kind]
        self._lock = asyncio.Lock()
        self._conn: Any = None
        self._failures = 0
        self._next_attempt = 0.0
        self._last_error: BaseException | None = None
        self._ever_connected = False
        self.name = target.name
        self._source = ("monitor", target.name)
        store.set(self._source, m.MONITOR_UP, (self.name,), 0.0)
        store.set(self._source, m.MONITOR_BACKOFF, (self.name,), 0.0)
        store.inc(m.MONITOR_LOST, (self.name,), 0)
        for result in ("ok", *(r.value for r in Reason)):
            store.inc(m.MONITOR_ATTEMPTS, (self.name, result), 0)

    @contextlib.asynccontextmanager
    async def use(self) -> AsyncIterator[Any]:
        """Hold the connection for one collection; a connection found broken afterwards is dropped."""
        async with self._lock:
            conn = await self._ensure()
            try:
                yield conn
            except asyncio.CancelledError:
                # The budget ran out with no answer (or shutdown). A lock holder drops such a session at once: if the
                # network cut it off, its series go now, and the server's keepalives free the lock for another.
                if self._coordinator is not None:
                    _abort(conn)
                raise
            except _keeps_connection():
                raise
            except BaseException:
                # Anything else (a protocol or client error) leaves the session in an unknown state: drop it.
                _abort(conn)
                raise
            finally:
                if _is_closed(conn):
                    self._lost()

    async def _ensure(self) -> Any:
        if self._conn is not None and not _is_closed(self._conn):
            if self._coordinator is None or self._coordinator.may_connect():
                return self._conn
            await self.close()  # a follower whose leader stopped collecting: no session here either
        if self._conn is not None:
            self._lost()
        if self._coordinator is not None and not self._coordinator.may_connect():
            raise Standby("another instance collects this database")
        now = self._clock()
        if now < self._next_attempt:
            raise MonitorDown("monitoring connection down; next attempt pending") from self._last_error
        try:
            conn = await self._connect(self._target, self._target.collect.budget)
        except asyncio.CancelledError:
            # The collection budget ran out mid-connect (a server that accepts but never answers): back off too.
            self._failed(TimeoutError("connect cut short by the collection budget"))
            raise
        except Exception as exc:
            self._failed(exc)
            if self._coordinator is not None and classify(exc) is Reason.TOO_MANY_CONNECTIONS:
                # A takeover race lost at the role's CONNECTION LIMIT: another instance is taking the lock.
                self._coordinator.lost_race()
                raise Standby("lost the takeover race at the connection limit") from exc
            raise
        if self._coordinator is not None and self._coordinator.takes_lock:
            await self._take_lock(conn)
        self._conn = conn
        self._store.inc(m.MONITOR_ATTEMPTS, (self.name, "ok"))
        self._store.set(self._source, m.MONITOR_UP, (self.name,), 1.0)
        self._store.set(self._source, m.MONITOR_BACKOFF, (self.name,), 0.0)
        log.info(
            "monitor_reconnected" if self._ever_connected else "monitor_connected",
            target=self.name,
            failed_attempts=self._failures,
        )
        self._failures = 0
        self._last_error = None
        self._ever_connected = True
        return conn

    async def _take_lock(self, conn: Any) -> None:
        """Try the advisory lock on a new session; one that is not to collect is closed again (no session held)."""
        assert self._coordinator is not None
        try:
            got = bool(await conn.fetchval(TRY_LOCK_SQL, timeout=self._target.collect.budget))
        except BaseException as exc:
            _abort(conn)
            if isinstance(exc, Exception):
                self._failed(exc)
            raise
        self._coordinator.acquired(got)
        if not self._coordinator.holder:
            await _close(conn, 2.0)
            raise Standby("another instance holds the lock")
        if got:
            log.info("database_wide_lock_taken", target=self.name, mode=self._coordinator.mode)

    def _failed(self, exc: BaseException) -> None:
        reason = classify(exc)
        self._failures += 1
        wait = min(BACKOFF_MAX, BACKOFF_START * 2 ** (self._failures - 1)) * random.uniform(0.8, 1.2)
        # Never wait past the next collection tick: a failed attempt ends within the budget after its tick, so the
        # next tick (one interval after the last) always tries again and a recovered server is back within one.
        wait = min(wait, max(0.0, self._target.collect.interval - self._target.collect.budget))
        self._next_attempt = self._clock() + wait
        self._last_error = exc
        self._store.inc(m.MONITOR_ATTEMPTS, (self.name, reason.value))
        self._store.set(self._source, m.MONITOR_BACKOFF, (self.name,), round(wait, 3))
        if self._failures == 1:
            log.warning("monitor_connect_failed", target=self.name, reason=str(reason), error=type(exc).__name__)

    def _lost(self) -> None:
        if self._conn is None:
            return
        self._conn = None
        self._store.inc(m.MONITOR_LOST, (self.name,))
        self._store.set(self._source, m.MONITOR_UP, (self.name,), 0.0)
        if self._coordinator is not None:
            self._coordinator.released()
        log.warning("monitor_connection_lost", target=self.name)

    async def close(self) -> None:
        """Close the connection (at shutdown)."""
        conn, self._conn = self._conn, None
        if conn is not None and not _is_closed(conn):
            await _close(conn, 2.0)
        self._store.set(self._source, m.MONITOR_UP, (self.name,), 0.0)
        if self._coordinator is not None:
            self._coordinator.released()


class Monitors:
    """The monitoring connections of all targets; the server closes them on shutdown."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._by_target: dict[str, MonitorConnection] = {}
        self._coordinators: dict[str, Coordinator] = {}
        self._lock_targets: dict[str, Target] = {}

    def get(self, target: Target) -> MonitorConnection:
        """The target's one connection (created on first ask)."""
        mc = self._by_target.get(target.name)
        if mc is None:
            coordinator = self.share(target)
            mc = self._by_target[target.name] = MonitorConnection(target, self._store, coordinator=coordinator)
        return mc

    def coordinator(self, target: Target) -> Coordinator | None:
        """The target's share of the database-wide work: postgres targets that collect (pgbouncer has no locks)."""
        if target.kind != "postgres" or not target.collect.collectors or target.collect.mode == "never":
            return None
        c = self._coordinators.get(target.name)
        if c is None:
            c = self._coordinators[target.name] = Coordinator(target, self._store)
        return c

    def share(self, target: Target) -> Share | None:
        """What decides whether this instance collects the target: its lock, or its lock_target's (pgbouncer)."""
        if target.kind == "pgbouncer" and target.collect.lock_target is not None and target.collect.mode == "auto":
            leader = self._lock_targets.get(target.collect.lock_target)
            coordinator = self.coordinator(leader) if leader is not None else None
            return Follower(coordinator) if coordinator is not None else None
        return self.coordinator(target)

    def register(self, targets: Iterable[Target]) -> None:
        """Know the config's targets, so a pgbouncer target can follow its lock_target."""
        self._lock_targets.update((t.name, t) for t in targets)

    async def close(self) -> None:
        """Close every connection."""
        await asyncio.gather(*(mc.close() for mc in self._by_target.values()))
