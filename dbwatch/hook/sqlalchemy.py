"""Pool and engine instrumentation for SQLAlchemy 2.0/2.1 (sync Engine or AsyncEngine); imports only SQLAlchemy.

Counts come from pool events (invalidate, soft_invalidate, first connect) and the dialect's handle_error.
SQLAlchemy has no event before a checkout or around a connect, so the pool's `connect` and `_invoke_creator` are
wrapped on the pool instance to time the wait and the connect, count checkouts and timeouts; `_return_conn` (every
checkin, right after the reset) is wrapped rather than listening to `checkin` and `reset`: each event dispatch
costs about what the whole wrapper does (bench/hook.py). `recreate` is wrapped so the pool `dispose()` builds is
wrapped in turn. (An `engine_disposed` listener would do that, but any
engine-level listener moves every Connection onto SQLAlchemy's slower evented path.)
Everything here holds the engine and pool by weak reference only.
"""

from __future__ import annotations

import bisect
import gc
import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Final

from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy import pool as sa_pool
from sqlalchemy.engine import Engine

from dbwatch import labels
from dbwatch.hook import wire
from dbwatch.hook.reporter import Reporter, get_reporter

__all__ = ["EngineState", "instrument", "state_of"]

log = logging.getLogger("dbwatch.hook")

_perf = time.perf_counter
_wall = time.time
_DERIVED: Final = ("checkins", "resets")  # counted through the held histogram; see EngineState.counters()
_INTERNAL: Final = ("returns_dead", "checkout_failures")
_ERROR_CAP: Final = 50  # distinct DBAPI error classes per engine before the rest count as `__other__`
# null_pool_under_load: a window closes after this many checkouts; it holds when connects were >= 90% of them.
# A window older than _UNDER_LOAD_MAX_AGE without that many checkouts is not load and starts over.
_UNDER_LOAD_MIN_CHECKOUTS: Final = 20
_UNDER_LOAD_RATIO: Final = 0.9
_UNDER_LOAD_MAX_AGE: Final = 60.0
_FINDING_TEXT: Final = {
    "static_pool_async": "StaticPool/SingletonThreadPool on an async engine shares one connection across "
    "tasks; use the default AsyncAdaptedQueuePool (or NullPool)",
    "expire_on_commit": "expire_on_commit=True on a session of an async engine: reading an attribute after "
    "commit lazy-loads outside the greenlet (MissingGreenlet); use async_sessionmaker(expire_on_commit=False)",
    "pre_ping_off_recycle": "pool_pre_ping is off and pool_recycle is longer than the server's idle timeout: "
    "connections the server closed are handed out; set pool_pre_ping=True or a shorter pool_recycle",
    "null_pool_under_load": "every checkout opens a new connection under load (NullPool or pool churn); "
    "use a QueuePool sized for the load, or put pgbouncer in front",
}


def _hist(bounds: tuple[float, ...]) -> list[float]:
    """A histogram as one list: a count per bucket (+Inf last), then the sum (`wire.Histogram` when reported)."""
    return [0] * (len(bounds) + 1) + [0.0]


class EngineState:
    """What the hook counts for one engine; updated on the app's threads, read by the sender thread.

    The hot path takes no lock: each update is one `+=` on a list or dict item (str or int keys), which the GIL
    makes atomic in CPython, so no increment is lost between threads. The sender copies with `list()`/`dict()`.
    """

    def __init__(self, engine: Engine, name: str, is_async: bool, server_idle_timeout: float | None) -> None:
        self.name = name
        self.is_async = is_async
        self.server_idle_timeout = server_idle_timeout
        self._engine = weakref.ref(engine)
        self._pool: weakref.ref[sa_pool.Pool] | None = None
        self.findings: set[str] = set()
        self._logged: set[str] = set()
        # The wire's counters but `checkins` (the held histogram's count) and `resets` (checkins minus the returns
        # of dead connections), plus those returns and the checkouts that raised; see counters().
        self.c = dict.fromkeys((*(k for k in wire.COUNTERS if k not in _DERIVED), *_INTERNAL), 0)
        self.h = {k: _hist(b) for k, b in wire.HISTS.items()}
        self.started = [0]  # checkouts begun; waiting now = begun - returned - raised
        self._resets_floor = 0
        self.errors: dict[str, int] = {}
        self._error_names = labels.Capper(_ERROR_CAP)
        self.wall_offset = [_wall() - _perf()]  # time.time() - perf_counter(), refreshed on every report
        self._window = (0, 0, time.monotonic())  # (checkouts, connects, when) at the window's start

    def after_fork(self) -> None:
        """The child is a new worker: start counting from zero (in place: the pool wrappers hold these objects)."""
        for k in self.c:
            self.c[k] = 0
        for h in self.h.values():
            h[:] = [0] * (len(h) - 1) + [0.0]
        self.started[0] = 0
        self._resets_floor = 0
        self.errors.clear()
        self._error_names.reset()
        self._window = (0, 0, time.monotonic())

    def alive(self) -> bool:
        return self._engine() is not None

    # ----- hot path: called on the app's threads, must be cheap and never raise -----------------------------

    def wrap_connect(self, pool: sa_pool.Pool) -> Callable[[], Any]:
        """pool.connect() timed: checkouts, the wait histogram, timeouts; the held time's start.

        Waiting now is derived in report(): checkouts begun minus those that returned or raised.
        """
        checkout = _checkout_of(pool)
        pref = weakref.ref(pool)
        c, started = self.c, self.started
        hist, bounds = self.h["checkout_wait"], wire.HISTS["checkout_wait"]
        first, nsum = bounds[0], len(bounds) + 1
        bisect_left, perf, timeout_error = bisect.bisect_left, _perf, sa_exc.TimeoutError

        def connect() -> Any:
            started[0] += 1
            t0 = perf()
            try:
                fairy = checkout(pref())  # type: ignore[arg-type]
            except BaseException as exc:
                dt = perf() - t0
                hist[bisect_left(bounds, dt)] += 1
                hist[nsum] += dt
                c["checkout_failures"] += 1
                if isinstance(exc, timeout_error):
                    c["checkout_timeouts"] += 1
                raise
            t1 = perf()
            dt = t1 - t0
            if dt <= first:  # an uncontended checkout: no bisect
                hist[0] += 1
            else:
                hist[bisect_left(bounds, dt)] += 1
            hist[nsum] += dt
            c["checkouts"] += 1
            rec = fairy._connection_record
            if rec is not None:  # held time starts; read back (and cleared) at checkin
                rec._dbwatch_t0 = t1
            return fairy

        return connect

    def wrap_creator(self, creator: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """The pool's creator timed: connect duration and result."""
        c, hist, bounds = self.c, self.h["connect"], wire.HISTS["connect"]

        def invoke_creator(record: Any) -> Any:
            t0 = _perf()
            try:
                conn = creator(record)
            except BaseException:
                c["connects_error"] += 1
                raise
            dt = _perf() - t0
            c["connects_ok"] += 1
            hist[bisect.bisect_left(bounds, dt)] += 1
            hist[-1] += dt
            return conn

        return invoke_creator

    def wrap_return(self, pool: sa_pool.Pool) -> Callable[[Any], None]:
        """pool._return_conn(record), i.e. every checkin: time held (whose count is the checkins), connection age.

        A wrapper rather than `checkin`/`reset` listeners: each event dispatch costs about as much as this whole
        function. Every live connection coming back has just been reset (SQLAlchemy fires its `reset` event right
        before this call), so resets are checkins minus the returns of a dead (invalidated) connection. A record
        checked out before instrument() carries no start time: its checkin is not counted, as its checkout was not.
        """
        do_return = _return_of(pool)
        pref = weakref.ref(pool)
        c, perf, bisect_left, wall_offset = self.c, _perf, bisect.bisect_left, self.wall_offset
        held_h, held_b = self.h["held"], wire.HISTS["held"]
        age_h, age_b = self.h["age"], wire.HISTS["age"]
        held_first, held_sum, age_sum = held_b[0], len(held_b) + 1, len(age_b) + 1

        def return_conn(record: Any) -> None:
            try:
                now = perf()
                t0 = record._dbwatch_t0
                if t0:
                    record._dbwatch_t0 = 0.0
                    if record.dbapi_connection is None:  # before the checkin counts: resets never run ahead
                        c["returns_dead"] += 1
                    dt = now - t0
                    if dt <= held_first:
                        held_h[0] += 1
                    else:
                        held_h[bisect_left(held_b, dt)] += 1
                    held_h[held_sum] += dt
                    start = record.starttime  # time.time() of the connect; compared via the perf_counter offset
                    if start:
                        age = now + wall_offset[0] - start
                        if age < 0.0:  # noqa: PLR1730 - max() is a call; this is the hot path
                            age = 0.0
                        age_h[bisect_left(age_b, age)] += 1
                        age_h[age_sum] += age
            except Exception:  # noqa: BLE001, S110 - never raise into the app; bookkeeping only (or no t0 yet)
                pass
            do_return(pref(), record)  # type: ignore[arg-type]

        return return_conn

    def on_invalidate(self, dbapi_connection: Any, record: Any, exception: Any) -> None:
        self.c["invalidations_hard"] += 1

    def on_soft_invalidate(self, dbapi_connection: Any, record: Any, exception: Any) -> None:
        self.c["invalidations_soft"] += 1

    def on_error(self, ctx: Any) -> None:
        try:
            orig = ctx.original_exception
            cause = getattr(orig, "__cause__", None)
            name = self._error_names(labels.exception(type(cause if isinstance(cause, Exception) else orig).__name__))
            self.errors[name] = self.errors.get(name, 0) + 1
        except Exception:  # noqa: BLE001, S110 - never raise into the app; bookkeeping only
            pass

    # ----- set-up and findings -----------------------------------------------------------------------------

    def wrap_recreate(self, pool: sa_pool.Pool) -> Callable[[], sa_pool.Pool]:
        cls_recreate = type(pool).recreate
        pref = weakref.ref(pool)

        def recreate() -> sa_pool.Pool:
            new = cls_recreate(pref())  # type: ignore[arg-type]
            try:
                self.attach_pool(new)
            except Exception as exc:  # noqa: BLE001 - never raise into the app
                self.log_once(
                    "attach", "dbwatch hook: cannot instrument new pool of %s: %s", self.name, type(exc).__name__
                )
            return new

        return recreate

    def attach_pool(self, pool: sa_pool.Pool) -> None:
        """Wrap a (new) pool's connect, creator and recreate; pool events carry over by themselves."""
        if getattr(pool, "_dbwatch_state", None) is self:
            return
        pool.connect = self.wrap_connect(pool)  # type: ignore[method-assign]
        pool._invoke_creator = self.wrap_creator(pool._invoke_creator)  # type: ignore[assignment]
        pool.recreate = self.wrap_recreate(pool)  # type: ignore[method-assign]
        pool._return_conn = self.wrap_return(pool)  # type: ignore[method-assign, assignment]
        pool._dbwatch_state = self  # type: ignore[attr-defined]
        self._pool = weakref.ref(pool)
        if self.is_async and isinstance(pool, sa_pool.StaticPool | sa_pool.SingletonThreadPool):
            self.flag("static_pool_async")
        self.check_recycle()

    def on_first_connect(self, dbapi_connection: Any, record: Any) -> None:
        """Learn PostgreSQL's idle_session_timeout once per engine, for the pre_ping_off_recycle finding."""
        if self.server_idle_timeout is not None:
            return
        self.server_idle_timeout = 0.0
        cur = None
        try:
            cur = dbapi_connection.cursor()
            cur.execute("SELECT setting FROM pg_settings WHERE name = 'idle_session_timeout'")
            row = cur.fetchone()
            if row and row[0] is not None:
                self.server_idle_timeout = float(row[0]) / 1000.0  # the setting is in ms
        except Exception as exc:  # noqa: BLE001 - a failed look-up only disables the finding
            self.log_once("idle_timeout", "dbwatch hook: cannot read idle_session_timeout: %s", type(exc).__name__)
        finally:
            try:
                if cur is not None:
                    cur.close()
                dbapi_connection.rollback()
            except Exception:  # noqa: BLE001, S110 - the pool resets the connection on checkin anyway
                pass
        self.check_recycle()

    def check_recycle(self) -> None:
        pool = self._pool() if self._pool else None
        idle = self.server_idle_timeout
        if pool is None or not idle or getattr(pool, "_pre_ping", False):
            return
        recycle = float(getattr(pool, "_recycle", -1))
        if recycle < 0 or recycle >= idle:
            self.flag("pre_ping_off_recycle")

    def flag(self, finding: str) -> None:
        """A finding holds: its gauge turns 1 and a warning is logged once."""
        if finding not in self.findings:
            self.findings.add(finding)
            self.log_once(finding, "dbwatch hook: engine %s: %s", self.name, _FINDING_TEXT[finding])

    def log_once(self, key: str, msg: str, *args: object) -> None:
        if key not in self._logged:
            self._logged.add(key)
            log.warning(msg, *args)

    # ----- the sender thread's view ------------------------------------------------------------------------

    def counters(self, held: list[float] | None = None) -> dict[str, int]:
        """The wire's counters (and `checkout_failures`) from a copy taken after the held histogram's.

        A dead connection's return is counted before its checkin, so a report taken in between reads resets one
        low, never high; the floor keeps the counter from stepping back on the next report.
        """
        held = held if held is not None else list(self.h["held"])
        c = dict(self.c)
        c["checkins"] = int(sum(held[:-1]))
        resets = max(self._resets_floor, c["checkins"] - c.pop("returns_dead"))
        self._resets_floor = resets
        c["resets"] = resets
        return c

    def report(self) -> wire.Part:
        pool = self._pool() if self._pool else None
        self.wall_offset[0] = _wall() - _perf()
        started = self.started[0]
        hists = {k: list(h) for k, h in self.h.items()}  # before the counters: see counters()
        c = self.counters(hists["held"])
        waiting = started - c["checkouts"] - c.pop("checkout_failures")
        errors = dict(self.errors)
        self._check_load(c)
        entry = wire.EngineReport(
            engine=self.name,
            pool_class=type(pool).__name__ if pool is not None else "gone",
            settings=_settings(pool),
            gauges={
                "checked_out": max(0, c["checkouts"] - c["checkins"]),
                "idle": _call_int(pool, "checkedin"),
                "overflow": max(0, _call_int(pool, "overflow")) if isinstance(pool, sa_pool.QueuePool) else 0,
                "waiting": max(0, waiting),
            },
            counters=c,
            hists={k: wire.Histogram(tuple(int(n) for n in h[:-1]), round(h[-1], 6)) for k, h in hists.items()},
            errors=errors,
            findings=tuple(sorted(self.findings)),
        )
        return wire.Part(engines=(entry,))

    def _check_load(self, c: dict[str, int]) -> None:
        now = time.monotonic()
        total_connects = c["connects_ok"] + c["connects_error"]
        checkouts = c["checkouts"] - self._window[0]
        connects = total_connects - self._window[1]
        if checkouts >= _UNDER_LOAD_MIN_CHECKOUTS:
            if connects >= _UNDER_LOAD_RATIO * checkouts:
                self.flag("null_pool_under_load")
            self._window = (c["checkouts"], total_connects, now)
        elif now - self._window[2] > _UNDER_LOAD_MAX_AGE:
            self._window = (c["checkouts"], total_connects, now)


def _checkout_of(pool: sa_pool.Pool) -> Callable[[sa_pool.Pool], Any]:
    """What pool.connect() calls: the fairy's checkout itself where the class does no more (one frame less)."""
    cls_connect = type(pool).connect
    fairy = getattr(sa_pool.base, "_ConnectionFairy", None)
    if cls_connect is sa_pool.Pool.connect and fairy is not None and hasattr(fairy, "_checkout"):
        return fairy._checkout  # type: ignore[no-any-return]
    return cls_connect


def _return_of(pool: sa_pool.Pool) -> Callable[[sa_pool.Pool, Any], None]:
    """What pool._return_conn() calls: the class's _do_return_conn where the base's does only that."""
    cls = type(pool)
    if cls._return_conn is sa_pool.Pool._return_conn:
        return cls._do_return_conn
    return cls._return_conn


def _call_int(pool: object, method: str) -> int:
    fn = getattr(pool, method, None)
    if fn is None:
        return 0
    try:
        return int(fn())
    except Exception:  # noqa: BLE001 - a pool without this figure reports 0
        return 0


def _settings(pool: sa_pool.Pool | None) -> dict[str, float]:
    if pool is None:
        return {}
    out: dict[str, float] = {
        "recycle_seconds": float(getattr(pool, "_recycle", -1)),
        "pre_ping": 1.0 if getattr(pool, "_pre_ping", False) else 0.0,
    }
    if isinstance(pool, sa_pool.QueuePool):
        out["size"] = float(pool.size())
        out["max_overflow"] = float(getattr(pool, "_max_overflow", 0))
        out["timeout_seconds"] = float(pool.timeout())
    return out


class _Source:
    """Adapts an EngineState to the reporter's Source protocol."""

    def __init__(self, state: EngineState) -> None:
        self.state = state

    def report(self) -> wire.Part:
        return self.state.report()

    def alive(self) -> bool:
        return self.state.alive()

    def after_fork(self) -> None:
        self.state.after_fork()


_states: weakref.WeakKeyDictionary[Engine, EngineState] = weakref.WeakKeyDictionary()
_states_lock = threading.Lock()
_session_hooked = False


def state_of(engine: Any) -> EngineState | None:
    """The hook's state for an engine (AsyncEngine or Engine), if instrumented."""
    sync = getattr(engine, "sync_engine", engine)
    return _states.get(sync) if isinstance(sync, Engine) else None


def instrument(
    engine: Any,
    name: str = "default",
    *,
    app: str | None = None,
    sidecar: str | None = None,
    token: str | None = None,
    interval: float | None = None,
    server_idle_timeout: float | None = None,
) -> bool:
    """Instrument an AsyncEngine or Engine; idempotent, never raises. Returns whether the engine is instrumented.

    A second live engine under a name already in use (same app and sidecar) is not instrumented: a warning is
    logged and False returned, since both would report as one `engine` series. The same engine again is a no-op
    that returns True.

    Args:
        name: the `engine` label (letters, digits, `_ . : -`).
        app: the `app` label; default `$DBWATCH_HOOK_APP` or `app`.
        sidecar: `host:port` (UDP) or `unix:/path`; default `$DBWATCH_HOOK_ADDR` or 127.0.0.1:9840.
        token: shared token the sidecar may require; default `$DBWATCH_HOOK_TOKEN(_FILE)`.
        interval: seconds between reports; default `$DBWATCH_HOOK_INTERVAL` or 5.
        server_idle_timeout: seconds after which the server (or a proxy/LB) closes idle connections; default
            PostgreSQL's idle_session_timeout, read once on the first connection.
    """
    try:
        return _instrument(engine, name, app, sidecar, token, interval, server_idle_timeout)
    except Exception as exc:  # noqa: BLE001 - a broken hook must not stop the app from starting
        log.warning("dbwatch hook: instrument(%s) failed: %s", name, type(exc).__name__)
        return False


def _instrument(
    engine: Any,
    name: str,
    app: str | None,
    sidecar: str | None,
    token: str | None,
    interval: float | None,
    server_idle_timeout: float | None,
) -> bool:
    sync = getattr(engine, "sync_engine", engine)
    if not isinstance(sync, Engine):
        log.warning("dbwatch hook: instrument() takes an Engine or AsyncEngine, not %s", type(engine).__name__)
        return False
    if not wire.NAME_RE.fullmatch(name):
        log.warning("dbwatch hook: engine name must be 1-63 letters, digits, '_', '.', ':' or '-'; not instrumented")
        return False
    reporter: Reporter = get_reporter(sidecar, app, token, interval)
    with _states_lock:
        existing = _states.get(sync)
        if existing is not None:
            if existing.name != name:
                existing.log_once(f"rename:{name}", "dbwatch hook: engine already instrumented as %s", existing.name)
            return True
        if _name_taken(reporter, name):
            log.warning(
                "dbwatch hook: another live engine of app %s is already instrumented as %s; this one is not "
                "(give each engine its own name)",
                reporter.app,
                name,
            )
            return False
        is_async = bool(getattr(sync.dialect, "is_async", False)) or sync is not engine
        state = EngineState(sync, name, is_async, server_idle_timeout)
        _states[sync] = state
    event.listen(sync, "invalidate", state.on_invalidate)
    event.listen(sync, "soft_invalidate", state.on_soft_invalidate)
    event.listen(sync, "handle_error", state.on_error)
    if sync.dialect.name == "postgresql" and server_idle_timeout is None:
        event.listen(sync, "connect", state.on_first_connect, once=True)
    state.attach_pool(sync.pool)
    if is_async:
        _hook_sessions()
    reporter.add(_Source(state))
    return True


def _name_taken(reporter: Reporter, name: str) -> bool:
    """Whether a live engine already reports under this name to this sidecar and app (the sidecar's series key).

    An engine that is only garbage (dropped but not yet collected) does not count: a clash collects once first.
    """

    def taken() -> bool:
        return any(
            isinstance(src, _Source) and src.state.name == name and src.state.alive() for src in reporter.sources()
        )

    if not taken():
        return False
    gc.collect()
    return taken()


def _hook_sessions() -> None:
    """Watch session transactions once per process for expire_on_commit on async engines."""
    global _session_hooked  # noqa: PLW0603 - one class-level listener per process, installed on first need
    with _states_lock:
        if _session_hooked:
            return
        _session_hooked = True
    from sqlalchemy.orm import Session  # noqa: PLC0415 - only apps with an async engine pay for the ORM import

    event.listen(Session, "after_begin", _after_begin)


def _after_begin(session: Any, transaction: Any, connection: Any) -> None:
    try:
        if not session.expire_on_commit:
            return
        state = _states.get(connection.engine)
        if state is not None and state.is_async and "expire_on_commit" not in state.findings:
            state.flag("expire_on_commit")
    except Exception:  # noqa: BLE001, S110 - never raise into the app
        pass
